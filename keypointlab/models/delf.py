"""DELF (Noh et al., ICCV 2017): attentive deep local features for image retrieval.

Backbone. A ResNet cut at stride 16 (:func:`keypointlab.models.blocks.resnet_encoder`; the
paper's is ResNet-50 up to ``conv4_x``, ``delf_paper.yaml``; the default is CPU-sized:
basic blocks of widths 32, 64, 128). Its feature map ``F`` (``(B, C, H/16, W/16)``,
non-negative after the last ReLU) holds the dense descriptors; cell ``(i, j)`` is centred
on image pixel ``(16 j, 16 i)`` (every downsampling of the encoder maps cell ``k`` onto
``2 k``), the centre of its receptive field, which is where DELF puts the keypoint.

Attention. Two 1x1 convolutions (ReLU between, softplus after) give a score
``a >= 0`` per location from ``F``.

Training (two stages, :mod:`keypointlab.losses.delf`; ``configs/delf.yaml``): stage 1
trains the backbone with a GeM-pooled cosine classifier, stage 2 the attention with a
classifier of the attention-weighted mean of the normalised features, the backbone frozen
(and run in inference mode: its batch norm keeps stage 1's statistics). The classes come
from the batch's ``label`` (``data.source: instances``, one class per training photograph,
:mod:`keypointlab.data.instances`); a batch without labels treats each of its pairs as a
class of its own.

PCA. During stage 2 (backbone frozen, so the features no longer change) every location's
L2-normalised feature is added to float64 sums (``pca_sum``, ``pca_outer``,
``pca_count``: buffers, so they are saved with the weights). At inference a descriptor is
the L2-normalised feature, centred, projected on the ``pca_dim`` leading eigenvectors of
the covariance, divided by the square root of their eigenvalues (``pca_whiten``) and
L2-normalised again, as in the paper (40-d). Before any statistics exist (and when
``pca_dim`` is 0 or not below ``C``) the descriptor is the L2-normalised feature.

Detection. The image is resized by each ``pyramid`` scale (the paper: 0.25 to 2 in
``sqrt(2)`` steps); every cell of every level is a candidate, scored by its attention,
placed at its receptive-field centre mapped back to the image, with nominal size
``16 / s`` (the cell at that level, in image pixels); the extractor keeps the best
``max_keypoints`` by score, as DELF keeps the top-attention features.

Global descriptor (:meth:`DELF.global_descriptor`, the ``delf-global`` baseline): the
GeM-pooled feature map of stage 1's head, averaged over the pyramid and L2-normalised.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from keypointlab.geometry import warp_points
from keypointlab.geometry.homography import resize_matrix
from keypointlab.geometry.keypoints import cell_grid
from keypointlab.losses import delf as delf_losses
from keypointlab.models.base import BaseModel, register_method
from keypointlab.models.blocks import resnet_encoder

STRIDE = 16  # feature-map cell in image pixels: cell j is centred on pixel 16 j


def _resize(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(image.shape[-2:]) == size:
        return image
    shrink = size[0] < image.shape[-2]
    return F.interpolate(image, size=size, mode="bilinear", align_corners=False, antialias=shrink)


def pca_projection(
    total: torch.Tensor, outer: torch.Tensor, count: float, dim: int, whiten: bool, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mean (C,), projection (dim, C))`` of the PCA of vectors whose sum is ``total``
    ``(C,)`` and sum of outer products ``outer`` ``(C, C)`` over ``count`` vectors: the
    ``dim`` leading eigenvectors of the covariance, as rows, divided by the square roots of
    their eigenvalues (plus ``eps``) when ``whiten``."""
    mean = total / count
    cov = outer / count - torch.outer(mean, mean)
    values, vectors = torch.linalg.eigh(0.5 * (cov + cov.T))  # ascending
    values, vectors = values.flip(0)[:dim], vectors.flip(1)[:, :dim]
    proj = vectors.T
    if whiten:
        proj = proj / torch.sqrt(values.clamp_min(0) + eps)[:, None]
    return mean, proj


@register_method("delf")
class DELF(BaseModel):
    """DELF's backbone, attention, PCA and the two classifiers it is trained with.

    Outputs of ``forward`` (``H, W`` the input size, ``h, w = ceil(H / 16), ceil(W / 16)``):
        features: ``(B, C, h, w)`` the backbone's non-negative dense features.
        attention: ``(B, 1, h, w)`` the attention scores (``>= 0``).
    """

    default_conf: dict[str, Any] = {
        "stem": 24,  # channels of the stride-2 stem convolution (ResNet-50: 64)
        "stem_kernel": 5,  # its kernel (ResNet: 7)
        "widths": [32, 64, 128],  # output channels of the stages (ResNet-50: 256, 512, 1024)
        "blocks": [1, 2, 2],  # residual blocks per stage (ResNet-50 to conv4_x: 3, 4, 6)
        "strides": [1, 2, 2],  # of each stage's first block: 4 * 1 * 2 * 2 = 16
        "bottleneck": False,  # bottleneck blocks (ResNet-50) instead of basic ones
        "attention_hidden": 64,  # channels between the two 1x1 convolutions (paper: 512)
        "classes": 1024,  # classifier outputs: at least the number of training photographs
        "gem_p": 3.0,  # GeM exponent of stage 1's pooling and of the global descriptor
        "pca_dim": 40,  # descriptor dimension after PCA (0: no PCA)
        "pca_whiten": True,
        "pca_eps": 1e-6,  # added to the eigenvalues when whitening
        "pyramid": [0.5, 0.7071, 1.0, 1.4142],  # image scales at inference
        "cell": STRIDE,
    }
    loss_defaults: dict[str, Any] = delf_losses.DEFAULT_CONF
    tiny_conf: dict[str, Any] = {
        "stem": 4,
        "widths": [8, 8, 16],
        "blocks": [1, 1, 1],
        "attention_hidden": 8,
        "classes": 8,
        "pca_dim": 4,
        "pyramid": [0.7071, 1.0],
    }
    onnx_export = False  # the PCA is computed from its statistics at run time

    def _init(self, conf: dict[str, Any]) -> None:
        if conf["cell"] != STRIDE or int(np.prod(conf["strides"])) * 4 != STRIDE:
            raise ValueError(
                f"DELF: the backbone's stride must be {STRIDE} (4 * prod(strides)), got cell "
                f"{conf['cell']} and strides {list(conf['strides'])}"
            )
        pyramid = [float(s) for s in conf["pyramid"]]
        if not pyramid or min(pyramid) <= 0:
            raise ValueError(f"DELF: 'pyramid' must be positive scales, got {conf['pyramid']}")
        if int(conf["classes"]) < 1 or int(conf["pca_dim"]) < 0:
            raise ValueError(
                f"DELF: 'classes' must be >= 1 and 'pca_dim' >= 0, got {conf['classes']} "
                f"and {conf['pca_dim']}"
            )
        self.backbone = resnet_encoder(
            conf["stem"],
            conf["widths"],
            conf["blocks"],
            conf["strides"],
            conf["stem_kernel"],
            conf["bottleneck"],
        )
        c = int(conf["widths"][-1])
        self.attention = nn.Sequential(
            nn.Conv2d(c, conf["attention_hidden"], 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(conf["attention_hidden"], 1, 1),
            nn.Softplus(),
        )
        self.classifier = nn.Parameter(torch.randn(conf["classes"], c) * 0.01)  # stage 1
        self.attention_classifier = nn.Linear(c, conf["classes"])  # stage 2
        self.register_buffer("pca_sum", torch.zeros(c, dtype=torch.float64))
        self.register_buffer("pca_outer", torch.zeros(c, c, dtype=torch.float64))
        self.register_buffer("pca_count", torch.zeros((), dtype=torch.float64))
        self._pca_cache: tuple[float, torch.Tensor, torch.Tensor] | None = None

    # -- dense outputs ------------------------------------------------------------
    def features(self, image: torch.Tensor) -> torch.Tensor:
        """The dense feature map ``(B, C, h, w)`` of images ``(B, 1|3, H, W)`` in [0, 1]."""
        if image.shape[1] == 1:
            image = image.expand(-1, 3, -1, -1)
        return self.backbone(image * 2.0 - 1.0)

    def backbone_frozen(self) -> bool:
        """Whether no backbone parameter is trained (stage 2)."""
        return not any(p.requires_grad for p in self.backbone.parameters())

    def _forward(self, data: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        image = data["image"]
        if self.training and self.backbone_frozen():
            self.backbone.eval()  # frozen: keep stage 1's batch-norm statistics
            with torch.no_grad():
                f = self.features(image)
            self._accumulate_pca(f)
        else:
            f = self.features(image)
        return {"features": f, "attention": self.attention(f)}

    # -- PCA ----------------------------------------------------------------------
    @torch.no_grad()
    def _accumulate_pca(self, features: torch.Tensor) -> None:
        x = F.normalize(features, dim=1).permute(0, 2, 3, 1).reshape(-1, features.shape[1])
        x = x.double()
        self.pca_sum += x.sum(0)
        self.pca_outer += x.T @ x
        self.pca_count += len(x)

    def pca_ready(self) -> bool:
        """Whether descriptors are PCA-reduced (statistics exist and ``pca_dim < C``)."""
        dim, c = int(self.conf["pca_dim"]), self.pca_sum.shape[0]
        return 0 < dim < c and float(self.pca_count) > c

    def _pca(self) -> tuple[torch.Tensor, torch.Tensor]:
        count = float(self.pca_count)
        if self._pca_cache is None or self._pca_cache[0] != count:
            mean, proj = pca_projection(
                self.pca_sum,
                self.pca_outer,
                count,
                int(self.conf["pca_dim"]),
                bool(self.conf["pca_whiten"]),
                float(self.conf["pca_eps"]),
            )
            self._pca_cache = (count, mean.float(), proj.float())
        return self._pca_cache[1], self._pca_cache[2]

    def local_descriptors(self, features: torch.Tensor) -> torch.Tensor:
        """``(N, D)`` descriptors of features ``(N, C)``: L2-normalised, then PCA-reduced,
        whitened and L2-normalised again when :meth:`pca_ready`."""
        x = F.normalize(features, dim=1)
        if self.pca_ready():
            mean, proj = self._pca()
            x = F.normalize((x - mean.to(x)) @ proj.to(x).T, dim=1)
        return x

    # -- training -----------------------------------------------------------------
    def loss(
        self, batch: dict[str, torch.Tensor], gt: Any, conf: dict[str, Any], step: int
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        b = batch["image0"].shape[0]
        labels = batch.get("label")
        if labels is None:  # each pair a class of its own
            labels = torch.arange(b, device=batch["image0"].device)
        labels = labels.reshape(-1).long()
        classes = int(self.conf["classes"])
        if len(labels) != b or int(labels.min()) < 0 or int(labels.max()) >= classes:
            raise ValueError(
                f"DELF: batch labels must be {b} class indices in [0, model.classes = "
                f"{classes}), got {labels.tolist()[:8]}...; raise model.classes to at least "
                f"the number of training photographs"
            )
        labels = torch.cat([labels, labels])
        out = self({"image": torch.cat([batch["image0"], batch["image1"]])})
        f, a = out["features"], out["attention"]
        total = f.new_zeros(())
        losses: dict[str, torch.Tensor] = {}
        metrics: dict[str, torch.Tensor] = {}
        if conf["descriptor_weight"] > 0:
            pooled = delf_losses.gem(f, self.conf["gem_p"])
            logits = delf_losses.cosine_logits(pooled, self.classifier, conf["scale"])
            loss, acc = delf_losses.classification(logits, labels)
            losses["descriptor"], metrics["descriptor_accuracy"] = loss, acc
            total = total + conf["descriptor_weight"] * loss
        if conf["attention_weight"] > 0:
            y = delf_losses.attention_pool(f.detach(), a)
            loss, acc = delf_losses.classification(self.attention_classifier(y), labels)
            losses["attention"], metrics["attention_accuracy"] = loss, acc
            metrics["attention_mean"] = a.detach().mean()
            total = total + conf["attention_weight"] * loss
        losses["total"] = total
        return losses, metrics

    # -- inference ----------------------------------------------------------------
    def _levels(self, image: torch.Tensor):
        """``(scale, level image size, features (C, h, w), attention (h, w))`` of every
        pyramid level at least one cell large."""
        h, w = image.shape[-2:]
        for s in sorted(float(v) for v in self.conf["pyramid"]):
            size = (max(round(h * s), 1), max(round(w * s), 1))
            if min(size) < STRIDE // 2:
                continue
            out = self({"image": _resize(image, size)})
            yield s, size, out["features"][0], out["attention"][0, 0]

    def detect(self, image: torch.Tensor) -> tuple[dict[str, torch.Tensor], Any]:
        """Every cell of every pyramid level, scored by attention; ``context`` holds their
        descriptors in the same order (``index`` into it)."""
        h, w = image.shape[-2:]
        parts, descriptors = [], []
        for s, size, f, a in self._levels(image):
            fh, fw = f.shape[-2:]
            to_image = f.new_tensor(np.linalg.inv(resize_matrix((h, w), size)))
            xy = warp_points(cell_grid(fh, fw, f.device, f.dtype) * STRIDE, to_image)
            n = fh * fw
            parts.append(
                {"keypoints": xy, "scores": a.reshape(-1), "scales": f.new_full((n,), STRIDE / s)}
            )
            descriptors.append(f.reshape(f.shape[0], -1).T)
        if not parts:
            raise ValueError(f"DELF: image of size {h}x{w} is too small for every pyramid level")
        out = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
        out["keypoints"] = torch.stack(
            [out["keypoints"][:, 0].clamp(0, w - 1), out["keypoints"][:, 1].clamp(0, h - 1)], 1
        )
        out["index"] = torch.arange(len(out["scores"]), device=image.device)
        return out, torch.cat(descriptors)

    def describe(
        self, image: torch.Tensor, context: Any, keypoints: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        return self.local_descriptors(context[keypoints["index"]])

    def global_descriptor(self, image: torch.Tensor) -> torch.Tensor:
        """``(C,)`` L2-normalised global descriptor of one image ``(1, 3, H, W)`` in
        [0, 1]: the GeM pooling of each pyramid level's features, averaged, normalised."""
        pooled = [
            F.normalize(delf_losses.gem(f[None], self.conf["gem_p"]), dim=1)[0]
            for _, _, f, _ in self._levels(image)
        ]
        if not pooled:
            raise ValueError(f"DELF: image of size {tuple(image.shape[-2:])} is too small")
        return F.normalize(torch.stack(pooled).mean(0), dim=0)
