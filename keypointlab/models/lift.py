"""LIFT (Yi et al., ECCV 2016): a detector, an orientation estimator and a descriptor, each a
small network on image patches, trained one after the other in reverse order.

Patches. The grey image is normalised (zero mean, unit variance over the image) and every
patch is cut from it by the shared sampler (:mod:`keypointlab.geometry.patches`). A keypoint
of *support* ``sigma`` pixels (``Features.scales``) has a descriptor patch of
``patch_size`` samples (64) covering ``sigma`` pixels, turned by its orientation; its
orientation patch is the same square upright at ``ori_size`` samples; its detector patch is
upright, twice as wide (``2 sigma``) at ``det_size`` samples.

Descriptor (after DeepDesc, as in the paper): each patch standardised, then three
convolutions (7x7/32, 6x6/64, 5x5/128 in the paper; ``desc_channels`` etc.), each followed by
tanh, L2 pooling (``sqrt`` of the summed squares over ``desc_pools`` windows: 2, 3, 4) and,
after the first two, subtractive normalisation (the channel mean blurred by a 5x5 Gaussian
is subtracted); 64 -> 58 -> 29 -> 24 -> 8 -> 4 -> 1, so the last layer's 128 channels are the
descriptor (a linear layer is added when the sizes do not end at one pixel), L2-normalised.

Orientation estimator (after Yi et al., CVPR 2016): the standardised upright patch through
convolutions (ReLU, 2x2 max pooling), a fully connected layer with a GHH activation
(piecewise linear: ``sum_n delta_n max_m`` of ``ghh_sum x ghh_max`` linear pieces,
``delta = +1, -1, ...``) and a linear layer to a 2-vector ``(cos, sin)``; the angle is
``atan2(sin, cos)`` (convention of :mod:`keypointlab.geometry.patches`).

Detector: one convolution (``det_kernel``: 25 x 25 in tf-lift, 11 x 11 on the CPU default's
smaller detector patch; ``det_sum x det_max`` = 4 x 4 = 16 filters, no padding) and a GHH
activation over those filters give a score map ``S``; on a
detector patch the location is the soft-argmax ``sum exp(beta S) y / sum exp(beta S)``
(:func:`soft_argmax`, ``beta`` = ``com_strength`` 10 as in tf-lift), mapped to image pixels
through the patch's affine.

Inference, as in the paper: the detector runs as a convolution over an image pyramid (the
image resized by each factor ``f`` of ``pyramid``, bilinearly as the patch sampler does);
one level pixel is the detector patch's sample step ``2 sigma / det_size``, so level ``f``
holds keypoints of support ``sigma = det_size / (2 f)``. The level score maps are resized to
the image grid, stacked into a scale-space volume, and NMS over space (``nms`` pixels) and
scale (the two neighbouring levels) keeps the local maxima, best first (``max_detections``).
Each keypoint's upright patch gives its orientation, the turned patch its descriptor.
Switches: ``learned_orientation: false`` takes every keypoint upright (angle 0);
``detector: sift`` takes OpenCV SIFT's keypoints (location, ``support_ratio x size`` as
support, response as score) instead of the learned detector, to feed the learned orientation
and descriptor the same way.

Training data, self-supervised (:func:`sample_quadruplets`): LIFT took SIFT keypoints that
structure from motion kept; here SIFT keypoints of view 0 of a homographic (or depth + pose)
pair that are *repeatable*: their warp lands within ``match_px`` of a SIFT keypoint of view
1 whose size and SIFT orientation agree with the warp's local zoom and turn (as an SfM match
of SIFT keypoints would; this only selects the points). ``P1``/``P2`` sit at the keypoint
in each view with each view's own SIFT size and orientation (the descriptor stage uses those
SIFT angles; no ground-truth angle enters any loss, and the orientation and detector stages
use no angle but the estimator's), ``P3`` at another SIFT keypoint of view 0, ``P4`` at a
place at least ``negative_px`` from every SIFT keypoint. Only keypoints whose support lies
in the pyramid's range are used. The warp is any
:class:`keypointlab.geometry.groundtruth.GroundTruth`: homographic pairs or depth + pose.
Losses: :mod:`keypointlab.losses.lift`; stages: ``configs/lift.yaml``.
"""

from __future__ import annotations

import math
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from keypointlab.geometry.groundtruth import as_ground_truth
from keypointlab.geometry.patches import extract_patches, patch_affines
from keypointlab.losses import lift as ll
from keypointlab.models.base import BaseModel, register_method

DETECTORS = ("learned", "sift")


def grey_normalised(image: torch.Tensor) -> torch.Tensor:
    """``(B, 1, H, W)`` grey of ``(B, 1|3, H, W)`` images, zero mean and unit variance per
    image (what every patch is cut from)."""
    if image.shape[1] == 3:
        w = image.new_tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
        image = (image * w).sum(1, keepdim=True)
    mean = image.mean((-2, -1), keepdim=True)
    std = image.std((-2, -1), keepdim=True, unbiased=False)
    return (image - mean) / (std + 1e-5)


def standardise(patches: torch.Tensor) -> torch.Tensor:
    """Each patch ``(N, 1, P, P)`` to zero mean, unit variance."""
    mean = patches.mean((-2, -1), keepdim=True)
    std = patches.std((-2, -1), keepdim=True, unbiased=False)
    return (patches - mean) / (std + 1e-5)


def ghh(x: torch.Tensor, n_sum: int, n_max: int) -> torch.Tensor:
    """Generalised hinging hyperplanes over channels: ``x`` ``(N, C * n_sum * n_max, ...)``
    -> ``(N, C, ...)``, ``sum_n delta_n max_m x[c, n, m]`` with ``delta = +1, -1, +1, ...``."""
    n, c = x.shape[:2]
    groups = c // (n_sum * n_max)
    x = x.reshape(n, groups, n_sum, n_max, *x.shape[2:]).amax(3)
    delta = torch.tensor([1.0 if i % 2 == 0 else -1.0 for i in range(n_sum)], dtype=x.dtype)
    delta = delta.to(x.device).view(1, 1, n_sum, *([1] * (x.dim() - 3)))
    return (x * delta).sum(2)


def soft_argmax(score: torch.Tensor, beta: float) -> torch.Tensor:
    """``(N, 2)`` xy (map pixels, column then row) of ``sum exp(beta S) y / sum exp(beta S)``
    over each score map ``(N, h, w)``."""
    n, h, w = score.shape
    p = torch.softmax(beta * score.reshape(n, -1), dim=1).reshape(n, h, w)
    xs = torch.arange(w, dtype=score.dtype, device=score.device)
    ys = torch.arange(h, dtype=score.dtype, device=score.device)
    return torch.stack([(p.sum(1) * xs).sum(1), (p.sum(2) * ys).sum(1)], -1)


def sift_keypoints(image: np.ndarray, n: int) -> np.ndarray:
    """OpenCV SIFT keypoints of a ``uint8`` grey image ``(H, W)``: ``(N, 5)`` rows
    ``x, y, size (pixels), angle (radians, patches.py convention), response``."""
    kps = cv2.SIFT_create(nfeatures=n).detect(image, None)
    if not kps:
        return np.zeros((0, 5))
    return np.array(
        [[*k.pt, k.size, math.radians(k.angle if k.angle >= 0 else 0.0), k.response] for k in kps]
    )


def grey_uint8(grey: torch.Tensor) -> np.ndarray:
    """A ``(1, H, W)`` or ``(3, H, W)`` image in ``[0, 1]`` as a ``uint8`` grey array."""
    if grey.shape[0] == 3:
        grey = (grey * grey.new_tensor([0.299, 0.587, 0.114]).view(3, 1, 1)).sum(0, keepdim=True)
    return (grey[0].detach().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()


class _SubtractiveNorm(nn.Module):
    """``x - G * mean_c(x)``: the channel mean blurred by a 5x5 Gaussian (sigma 1),
    replicate-padded, subtracted from every channel."""

    def __init__(self) -> None:
        super().__init__()
        r = torch.arange(5, dtype=torch.float32) - 2
        g = torch.exp(-(r**2) / 2)
        k = g[:, None] * g[None, :]
        self.register_buffer("kernel", (k / k.sum())[None, None], persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = F.pad(x.mean(1, keepdim=True), (2, 2, 2, 2), mode="replicate")
        return x - F.conv2d(m, self.kernel.to(x.dtype))


class _L2Pool(nn.Module):
    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.size
        return torch.sqrt(F.avg_pool2d(x * x, s, stride=s) * (s * s) + 1e-6)


class _GHHLinear(nn.Module):
    def __init__(self, cin: int, cout: int, n_sum: int, n_max: int) -> None:
        super().__init__()
        self.linear = nn.Linear(cin, cout * n_sum * n_max)
        self.n_sum, self.n_max = n_sum, n_max

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ghh(self.linear(x), self.n_sum, self.n_max)


def _descriptor(conf: dict[str, Any]) -> nn.Sequential:
    side, cin, layers = int(conf["patch_size"]), 1, []
    specs = list(zip(conf["desc_channels"], conf["desc_kernels"], conf["desc_pools"], strict=True))
    for i, (c, k, p) in enumerate(specs):
        layers += [nn.Conv2d(cin, int(c), int(k)), nn.Tanh(), _L2Pool(int(p))]
        if i < len(specs) - 1:
            layers.append(_SubtractiveNorm())
        side, cin = (side - int(k) + 1) // int(p), int(c)
        if side < 1:
            raise ValueError(f"LIFT: patch_size {conf['patch_size']} is too small for desc_*")
    layers.append(nn.Flatten())
    if side != 1 or cin != int(conf["descriptor_dim"]):
        layers.append(nn.Linear(cin * side * side, int(conf["descriptor_dim"])))
    return nn.Sequential(*layers)


def _orientation(conf: dict[str, Any]) -> nn.Sequential:
    side, cin, layers = int(conf["ori_size"]), 1, []
    for c, k in zip(conf["ori_channels"], conf["ori_kernels"], strict=True):
        layers += [nn.Conv2d(cin, int(c), int(k), padding=int(k) // 2), nn.MaxPool2d(2), nn.ReLU()]
        side, cin = side // 2, int(c)
    if side < 1:
        raise ValueError(f"LIFT: ori_size {conf['ori_size']} is too small for ori_channels")
    hidden, ns, nm = int(conf["ori_hidden"]), int(conf["ghh_sum"]), int(conf["ghh_max"])
    return nn.Sequential(
        *layers,
        nn.Flatten(),
        _GHHLinear(cin * side * side, hidden, ns, nm),
        nn.Linear(hidden, 2),
    )


def _frozen(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``module(x)`` with gradients reaching ``x`` but not the module's parameters."""
    params = {n: p.detach() for n, p in module.named_parameters()}
    return functional_call(module, params, (x,))


@register_method("lift")
class LIFT(BaseModel):
    """LIFT's detector, orientation estimator and descriptor (see the module docstring).

    Sub-modules (the parameter prefixes the training stages name): ``descriptor``,
    ``orientation``, ``detector``.

    ``forward({"image": (B, C, H, W)})`` returns ``scores`` ``(B, L, H, W)`` (the detector's
    scale-space volume on the image grid, ``-inf`` where a level has no valid response),
    ``supports`` ``(L,)`` (each level's keypoint support in pixels) and ``grey``
    ``(B, 1, H, W)`` (the normalised image patches are cut from).
    """

    default_conf: dict[str, Any] = {
        "patch_size": 64,  # descriptor patch samples over the support (paper: 64)
        "desc_channels": [16, 32, 128],  # paper: 32, 64, 128 (lift_paper.yaml)
        "desc_kernels": [7, 6, 5],
        "desc_pools": [2, 3, 4],
        "descriptor_dim": 128,
        "ori_size": 32,  # orientation patch samples over the support (tf-lift: 64)
        "ori_channels": [8, 16, 32],  # paper (Yi et al. 2016): 10, 20, 50
        "ori_kernels": [5, 5, 3],
        "ori_hidden": 64,  # paper: 100
        "ghh_sum": 2,  # orientation GHH pieces (paper: 4 x 4)
        "ghh_max": 2,
        "det_size": 24,  # detector patch samples over 2 x the support (tf-lift: 48)
        "det_kernel": 11,  # paper: 25 (about half the detector patch in both)
        "det_sum": 4,
        "det_max": 4,
        "com_strength": 10.0,  # beta of the soft-argmax
        # image scale factors of the inference pyramid; the training supports are their
        # range: det_size / (2 f) pixels (here 8.5 to 34 pixels)
        "pyramid": [1.4142, 1.0, 0.7071, 0.5, 0.3536],
        "nms": 5,  # spatial NMS window (pixels of the image)
        # candidates detect() returns, best first (the extractor keeps the top k); each
        # costs one pass of the orientation estimator
        "max_detections": 1024,
        "support_ratio": 3.0,  # support of a SIFT keypoint: 6 x its scale (size / 2)
        # inference switches
        "detector": "learned",  # learned | sift (SIFT's keypoints into the learned nets)
        "learned_orientation": True,  # False: every keypoint upright
    }
    loss_defaults: dict[str, Any] = ll.DEFAULT_CONF
    tiny_conf: dict[str, Any] = {
        "patch_size": 16,
        "desc_channels": [4, 8],
        "desc_kernels": [5, 3],
        "desc_pools": [2, 2],
        "descriptor_dim": 8,
        "ori_size": 8,
        "ori_channels": [4, 4],
        "ori_kernels": [3, 3],
        "ori_hidden": 4,
        "det_size": 12,
        "det_kernel": 5,
        "det_sum": 2,
        "det_max": 2,
        "pyramid": [1.0, 0.7071, 0.5],  # supports 6 to 12 pixels
    }
    onnx_export = False  # cv2 SIFT in training, a data-dependent number of detections

    def _init(self, conf: dict[str, Any]) -> None:
        if conf["detector"] not in DETECTORS:
            raise ValueError(f"LIFT: detector must be one of {DETECTORS}, got {conf['detector']!r}")
        k, d = int(conf["det_kernel"]), int(conf["det_size"])
        if k < 1 or k % 2 == 0 or k >= d:
            raise ValueError(f"LIFT: det_kernel must be odd and below det_size, got {k}, {d}")
        f = [float(v) for v in conf["pyramid"]]
        if not f or min(f) <= 0 or any(a <= b for a, b in zip(f, f[1:], strict=False)):
            raise ValueError(
                f"LIFT: pyramid needs positive, decreasing factors (NMS compares neighbouring "
                f"levels), got {conf['pyramid']}"
            )
        self.descriptor = _descriptor(conf)
        self.orientation = _orientation(conf)
        ns, nm = int(conf["det_sum"]), int(conf["det_max"])
        self.detector = nn.Conv2d(1, ns * nm, k)

    # -- the three networks ---------------------------------------------------------
    def score_map(self, x: torch.Tensor) -> torch.Tensor:
        """Detector scores ``(N, h - k + 1, w - k + 1)`` of images or patches ``(N, 1, h, w)``."""
        c = self.conf
        return ghh(self.detector(x), int(c["det_sum"]), int(c["det_max"]))[:, 0]

    def describe_patches(self, patches: torch.Tensor, frozen: bool = False) -> torch.Tensor:
        """L2-normalised descriptors ``(N, D)`` of patches ``(N, 1, P, P)``; ``frozen``:
        gradients reach the patches but not the network."""
        if len(patches) == 0:
            return patches.new_zeros((0, int(self.conf["descriptor_dim"])))
        x = standardise(patches)
        out = _frozen(self.descriptor, x) if frozen else self.descriptor(x)
        return F.normalize(out, dim=1)

    def estimate_orientation(self, patches: torch.Tensor, frozen: bool = False) -> torch.Tensor:
        """Angles ``(N,)`` (radians) of upright patches ``(N, 1, ori_size, ori_size)``:
        ``atan2`` of the estimator's 2-vector; ``frozen`` as in :meth:`describe_patches`."""
        if len(patches) == 0:
            return patches.new_zeros((0,))
        x = standardise(patches)
        v = _frozen(self.orientation, x) if frozen else self.orientation(x)
        return torch.atan2(v[:, 1], v[:, 0])

    def supports(self) -> list[float]:
        """Keypoint support (pixels) of each pyramid level, ``det_size / (2 f)``."""
        return [float(self.conf["det_size"]) / (2 * float(f)) for f in self.conf["pyramid"]]

    # -- patches ----------------------------------------------------------------------
    def patches(
        self,
        grey: torch.Tensor,
        xy: torch.Tensor,
        support: torch.Tensor,
        angle: torch.Tensor | None,
        batch: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Descriptor patches ``(N, 1, patch_size, patch_size)`` of ``grey`` ``(B, 1, H, W)``
        at ``xy`` ``(N, 2)``, ``support`` pixels wide, turned by ``angle`` (``None``: upright;
        ``batch``: the image of each keypoint, see :func:`extract_patches`)."""
        return extract_patches(grey, xy, support, angle, int(self.conf["patch_size"]), batch)

    def upright_patches(
        self,
        grey: torch.Tensor,
        xy: torch.Tensor,
        support: torch.Tensor,
        batch: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Orientation-estimator patches ``(N, 1, ori_size, ori_size)``, upright."""
        return extract_patches(grey, xy, support, None, int(self.conf["ori_size"]), batch)

    def locate(
        self, grey: torch.Tensor, xy: torch.Tensor, support: torch.Tensor, batch: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The detector on the upright detector patches around ``xy`` ``(N, 2)``: their
        score maps ``(N, h, w)`` and the soft-argmax locations ``(N, 2)`` in image pixels
        (differentiable in the score maps)."""
        d, k = int(self.conf["det_size"]), int(self.conf["det_kernel"])
        patches = extract_patches(grey, xy, 2 * support, None, d, batch)
        score = self.score_map(patches)
        uv = soft_argmax(score, float(self.conf["com_strength"])) + (k - 1) / 2  # patch samples
        a = patch_affines(xy, 2 * support, None, d)  # (N, 2, 3): patch (u, v, 1) -> image xy
        located = (a[:, :, :2] @ uv[:, :, None])[..., 0] + a[:, :, 2]
        return score, located

    # -- dense maps ---------------------------------------------------------------------
    def _forward(self, data: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        grey = grey_normalised(data["image"])
        b, _, h, w = grey.shape
        k = int(self.conf["det_kernel"])
        levels, supports = [], []
        for f, s in zip(self.conf["pyramid"], self.supports(), strict=True):
            size = (max(round(h * float(f)), 1), max(round(w * float(f)), 1))
            if min(size) < k:
                continue  # too small a level for the detector
            level = (
                grey
                if size == (h, w)
                else F.interpolate(grey, size=size, mode="bilinear", align_corners=False)
            )
            score = F.pad(self.score_map(level)[:, None], [k // 2] * 4)
            valid = F.pad(torch.ones_like(score[:, :, k - 1 :, k - 1 :]), [k // 2] * 4)
            if size != (h, w):
                score = F.interpolate(score, size=(h, w), mode="bilinear", align_corners=False)
                valid = F.interpolate(valid, size=(h, w), mode="bilinear", align_corners=False)
            levels.append(torch.where(valid > 0.999, score, torch.full_like(score, -math.inf)))
            supports.append(s * math.sqrt(h * w / (size[0] * size[1])) * float(f))
        if not levels:
            raise ValueError(f"LIFT: image of size {h}x{w} is too small for every pyramid level")
        return {
            "scores": torch.cat(levels, 1),
            "supports": grey.new_tensor(supports),
            "grey": grey,
        }

    # -- training --------------------------------------------------------------------------
    def loss(
        self, batch: dict[str, torch.Tensor], gt: Any, conf: dict[str, Any], step: int
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        if gt is None:
            raise ValueError("LIFT is trained from pairs with ground truth (H_0to1 or depth)")
        q = sample_quadruplets(
            batch["image0"],
            batch["image1"],
            as_ground_truth(gt),
            float(self.conf["support_ratio"]),
            self._support_range(),
            conf,
            step,
        )
        grey0, grey1 = grey_normalised(batch["image0"]), grey_normalised(batch["image1"])
        zero = sum(p.sum() * 0.0 for p in self.parameters())
        terms: dict[str, torch.Tensor] = {}
        metrics: dict[str, torch.Tensor] = {"keypoints_used": zero.new_tensor(float(len(q["b"])))}
        enough = len(q["b"]) >= 2
        if float(conf["descriptor_weight"]) > 0:
            terms["descriptor"] = zero
            if enough:
                terms["descriptor"], m = self._descriptor_term(grey0, grey1, q, conf)
                metrics.update(m)
        if float(conf["orientation_weight"]) > 0:
            terms["orientation"] = self._orientation_term(grey0, grey1, q) if enough else zero
        if float(conf["detector_weight"]) > 0:
            terms["detector"] = zero
            if enough:
                terms["detector"], m = self._detector_term(grey0, grey1, q, conf)
                metrics.update(m)
        total = zero + sum(float(conf[f"{k}_weight"]) * v for k, v in terms.items())
        return {"total": total, **{k: v.detach() for k, v in terms.items()}}, metrics

    def _support_range(self) -> tuple[float, float]:
        s = self.supports()
        return min(s), max(s)

    def _descriptor_term(
        self, grey0: torch.Tensor, grey1: torch.Tensor, q: dict[str, torch.Tensor], conf: dict
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Stage 1: patches at SIFT's own location, support and orientation in each view."""
        d1 = self.describe_patches(self.patches(grey0, q["xy1"], q["s1"], q["a1"], q["b"]))
        d2 = self.describe_patches(self.patches(grey1, q["xy2"], q["s2"], q["a2"], q["b"]))
        same = q["b"][:, None] == q["b"][None]
        near = torch.cdist(q["xy1"], q["xy1"]) <= float(conf["negative_px"])
        return ll.descriptor_loss(
            d1, d2, ~(same & near), float(conf["margin"]), float(conf["hard_fraction"])
        )

    def _oriented_descriptors(
        self, grey: torch.Tensor, xy: torch.Tensor, s: torch.Tensor, b: torch.Tensor, ori: bool
    ) -> torch.Tensor:
        """Frozen-descriptor descriptors of the patches at ``xy`` turned by the estimator
        (trained when ``ori``, frozen otherwise)."""
        angle = self.estimate_orientation(self.upright_patches(grey, xy, s, b), frozen=not ori)
        return self.describe_patches(self.patches(grey, xy, s, angle, b), frozen=True)

    def _orientation_term(
        self, grey0: torch.Tensor, grey1: torch.Tensor, q: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        """Stage 2: the descriptor distance of the two oriented patches of each pair."""
        d1 = self._oriented_descriptors(grey0, q["xy1"], q["s1"], q["b"], ori=True)
        d2 = self._oriented_descriptors(grey1, q["xy2"], q["s2"], q["b"], ori=True)
        return ll.orientation_loss(d1, d2)

    def _detector_term(
        self, grey0: torch.Tensor, grey1: torch.Tensor, q: dict[str, torch.Tensor], conf: dict
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Stage 3: soft-argmax locations in P1, P2; scores of P1..P4."""
        strength = float(conf["softmax_strength"])
        b = q["b"]
        map1, loc1 = self.locate(grey0, q["xy1"], q["s1"], b)
        map2, loc2 = self.locate(grey1, q["xy2"], q["s2"], b)
        map3, _ = self.locate(grey0, q["xy3"], q["s3"], b)
        map4, _ = self.locate(grey0, q["xy4"], q["s4"], b)
        scores = tuple(ll.log_mean_exp(m, strength) for m in (map1, map2, map3, map4))
        d1 = self._oriented_descriptors(grey0, loc1, q["s1"], b, ori=False)
        d2 = self._oriented_descriptors(grey1, loc2, q["s2"], b, ori=False)
        return ll.detector_loss(scores, d1, d2, float(conf["gamma"]))  # type: ignore[arg-type]

    # -- inference ------------------------------------------------------------------------
    def detect(self, image: torch.Tensor) -> tuple[dict[str, torch.Tensor], Any]:
        if self.conf["detector"] == "sift":
            grey = grey_normalised(image)
            kp = torch.from_numpy(
                sift_keypoints(grey_uint8(image[0]), int(self.conf["max_detections"]))
            ).to(grey)
            xy, support, score = kp[:, :2], float(self.conf["support_ratio"]) * kp[:, 2], kp[:, 4]
        else:
            out = self._forward({"image": image})
            grey = out["grey"]
            xy, support, score = self._peaks(out["scores"][0], out["supports"])
        angle = torch.zeros_like(score)
        if self.conf["learned_orientation"] and len(xy):
            angle = self.estimate_orientation(self.upright_patches(grey, xy, support))
        det = {"keypoints": xy, "scores": score, "scales": support, "orientations": angle}
        return det, grey

    def _peaks(
        self, volume: torch.Tensor, supports: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """NMS over space and scale of a volume ``(L, H, W)``: xy ``(N, 2)``, support and
        score ``(N,)`` of the best ``max_detections`` local maxima, best first."""
        n = int(self.conf["nms"])
        _, h, w = volume.shape
        pooled = F.max_pool3d(volume[None, None], (3, n, n), stride=1, padding=(1, n // 2, n // 2))
        peak = (volume == pooled[0, 0]) & torch.isfinite(volume)
        masked = torch.where(peak, volume, torch.full_like(volume, -math.inf)).flatten()
        k = min(int(self.conf["max_detections"]), int(peak.sum()))
        values, index = masked.topk(k)
        level, pixel = index // (h * w), index % (h * w)
        xy = torch.stack([pixel % w, pixel // w], -1).to(volume.dtype)
        return xy, supports[level], values

    def describe(
        self, image: torch.Tensor, context: Any, keypoints: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        patches = self.patches(
            context, keypoints["keypoints"], keypoints["scales"], keypoints["orientations"]
        )
        return self.describe_patches(patches)


# -- training quadruplets ------------------------------------------------------------------
def sample_quadruplets(
    image0: torch.Tensor,
    image1: torch.Tensor,
    gt: Any,
    ratio: float,
    support_range: tuple[float, float],
    conf: dict[str, Any],
    step: int,
) -> dict[str, torch.Tensor]:
    """LIFT's patch quadruplets from a batch of pairs, flattened over the batch.

    View-0 SIFT keypoints whose support (``ratio`` times SIFT's size) lies in
    ``support_range`` and whose warp (``gt``: any
    :class:`keypointlab.geometry.groundtruth.GroundTruth`) lands within ``match_px`` of a
    view-1 SIFT keypoint whose size agrees with the warp's local zoom (within
    ``scale_tolerance``) and whose orientation agrees with the warp's turn (within
    ``angle_tolerance``) are repeatable; up to ``pairs_per_image`` of them per pair, drawn
    at random (a generator seeded by ``step`` and the pair's index).

    Returns:
        ``b (K,)`` the pair of each quadruplet; ``xy1, s1, a1`` the view-0 keypoint's xy
        ``(K, 2)``, support and SIFT angle ``(K,)``; ``xy2, s2, a2`` its view-1 keypoint's;
        ``xy3, s3`` another view-0 SIFT keypoint (at least ``negative_px`` away);
        ``xy4, s4`` a view-0 place at least ``negative_px`` from every SIFT keypoint (with
        ``s1``'s support).
    """
    lo, hi = support_range
    bsz, _, h, w = image0.shape
    views = [
        [sift_keypoints(grey_uint8(im[i]), int(conf["sift_features"])) for i in range(bsz)]
        for im in (image0, image1)
    ]
    n_max = max([len(k) for k in views[0]] + [1])
    pts = torch.zeros(bsz, n_max, 2, dtype=torch.float64)
    for i, kp in enumerate(views[0]):
        pts[i, : len(kp)] = torch.from_numpy(kp[:, :2])
    warped, zoom, turn, known = (t.cpu() for t in gt.to("cpu").local_frames(pts))
    out: dict[str, list] = {k: [] for k in ("b", "q1", "q2", "xy3", "s3", "xy4")}
    for i in range(bsz):
        rng = np.random.default_rng([int(step), i])
        kp0, kp1 = views[0][i], views[1][i]
        n0 = len(kp0)
        if n0 == 0 or len(kp1) == 0:
            continue
        pick = _repeatable(
            kp0,
            kp1,
            (warped[i, :n0].numpy(), zoom[i, :n0].numpy(), turn[i, :n0].numpy()),
            known[i, :n0].numpy().astype(bool),
            ratio,
            (lo, hi),
            conf,
        )
        if len(pick) == 0:
            continue
        pick = pick[rng.permutation(len(pick))[: int(conf["pairs_per_image"])]]
        usable = np.nonzero((ratio * kp0[:, 2] >= lo) & (ratio * kp0[:, 2] <= hi))[0]
        for j0, j1 in pick:
            out["b"].append(i)
            out["q1"].append(kp0[j0])
            out["q2"].append(kp1[j1])
            far = usable[np.hypot(*(kp0[usable, :2] - kp0[j0, :2]).T) > conf["negative_px"]]
            j3 = int(rng.choice(far)) if len(far) else int(j0)
            out["xy3"].append(kp0[j3, :2])
            out["s3"].append(ratio * kp0[j3, 2])
            out["xy4"].append(_empty_place(kp0[:, :2], (h, w), float(conf["negative_px"]), rng))
    dtype, device = image0.dtype, image0.device

    def t(v: list, shape: tuple[int, ...]) -> torch.Tensor:
        return torch.as_tensor(np.array(v, dtype=np.float64).reshape(shape), device=device).to(
            dtype
        )

    k = len(out["b"])
    q1, q2 = t(out["q1"], (k, 5)), t(out["q2"], (k, 5))
    return {
        "b": torch.as_tensor(out["b"], dtype=torch.long, device=device).reshape(k),
        "xy1": q1[:, :2],
        "s1": ratio * q1[:, 2],
        "a1": q1[:, 3],
        "xy2": q2[:, :2],
        "s2": ratio * q2[:, 2],
        "a2": q2[:, 3],
        "xy3": t(out["xy3"], (k, 2)),
        "s3": t(out["s3"], (k,)),
        "xy4": t(out["xy4"], (k, 2)),
        "s4": ratio * q1[:, 2],
    }


def _repeatable(
    kp0: np.ndarray,
    kp1: np.ndarray,
    frames: tuple[np.ndarray, np.ndarray, np.ndarray],
    known: np.ndarray,
    ratio: float,
    support_range: tuple[float, float],
    conf: dict[str, Any],
) -> np.ndarray:
    """``(M, 2)`` index pairs ``(j0, j1)``: view-0 keypoint ``j0`` lands on view-1 keypoint
    ``j1`` (position, size and orientation agree; both supports in range), the nearest
    such ``j1`` for each ``j0``. ``frames``: the warped xy ``(N0, 2)``, local zoom and turn
    ``(N0,)`` of the view-0 keypoints (:meth:`GroundTruth.local_frames`)."""
    warped, zoom, turn = frames
    lo, hi = support_range
    s0, s1 = ratio * kp0[:, 2], ratio * kp1[:, 2]
    ok0 = known & (s0 >= lo) & (s0 <= hi) & np.isfinite(warped).all(1)
    ok1 = (s1 >= lo) & (s1 <= hi)
    dist = np.linalg.norm(warped[:, None] - kp1[None, :, :2], axis=-1)
    log_scale = np.abs(np.log(kp1[None, :, 2] / np.maximum(kp0[:, None, 2] * zoom[:, None], 1e-9)))
    dangle = np.angle(np.exp(1j * (kp1[None, :, 3] - kp0[:, None, 3] - turn[:, None])))
    good = (
        ok0[:, None]
        & ok1[None]
        & (dist <= float(conf["match_px"]))
        & (log_scale <= math.log(float(conf["scale_tolerance"])))
        & (np.abs(dangle) <= float(conf["angle_tolerance"]))
    )
    dist = np.where(good, dist, np.inf)
    j1 = dist.argmin(1)
    j0 = np.nonzero(np.isfinite(dist[np.arange(len(kp0)), j1]))[0]
    return np.stack([j0, j1[j0]], 1).astype(np.int64).reshape(-1, 2)


def _empty_place(
    keypoints: np.ndarray, size: tuple[int, int], min_dist: float, rng: np.random.Generator
) -> np.ndarray:
    """A random xy of an image of ``size`` at least ``min_dist`` from every keypoint
    ``(N, 2)`` (the farthest of 64 candidates when none is)."""
    h, w = size
    cand = rng.uniform([0, 0], [w - 1, h - 1], size=(64, 2))
    if len(keypoints) == 0:
        return cand[0]
    nearest = np.linalg.norm(cand[:, None] - keypoints[None], axis=-1).min(1)
    ok = np.nonzero(nearest >= min_dist)[0]
    return cand[ok[0]] if len(ok) else cand[nearest.argmax()]
