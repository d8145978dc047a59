"""SuperPoint (DeTone et al. 2018) and MagicPoint, its detector-only predecessor.

Architecture. A VGG-style encoder (four pairs of 3x3 conv-BN-ReLU layers, 2x2 max-pooling
after the first three, so features are at 1/8 resolution) feeds

- a detector head: 3x3 conv-BN-ReLU then a 1x1 conv to ``cell * cell + 1 = 65`` logits per
  8x8 cell, one per pixel of the cell plus a "no keypoint" dustbin. A softmax over the 65
  channels, the dustbin dropped and the 64 remaining channels moved back to their pixels
  (``pixel_shuffle``, channel ``k`` is pixel ``(dy, dx) = (k // 8, k % 8)`` of its cell)
  gives a full-resolution heatmap;
- a descriptor head (SuperPoint only): 3x3 conv-BN-ReLU then a 1x1 conv to a coarse
  ``(D, H / 8, W / 8)`` descriptor map, bilinearly sampled at keypoints and L2-normalised.

The paper's widths are ``channels = [64, 64, 128, 128]``, ``head_width = 256`` and
``descriptor_dim = 256`` (the defaults); the configs use CPU-sized ones. The networks work
on grey images: RGB input is converted with the ITU-R 601 weights.

Dense outputs (the keys every KeypointLab model returns, so that
:class:`keypointlab.features.learned.DenseExtractor` runs them unchanged):

- ``scores`` ``(B, 1, Hc, Wc)``: per cell, the highest heatmap probability of its 64 pixels;
- ``keypoints`` ``(B, 2, Hc, Wc)``: pixel xy of that best pixel (integer positions), so the
  extractor keeps at most one keypoint per cell, a cheap form of non-maximum suppression;
- ``descriptors`` ``(B, D, Hc, Wc)``, not normalised. MagicPoint has no descriptor head and
  returns its encoder features here, so that the extractor and the trainer's validation run
  (its matching scores then measure untrained features; its repeatability is meaningful);
- ``heatmap`` ``(B, 1, H, W)`` and ``logits`` ``(B, 65, Hc, Wc)`` for the losses and for
  homographic adaptation, which uses the classic SuperPoint extraction
  :func:`heatmap_nms_keypoints` (threshold, max-pool NMS, top-k) instead.

Training: MagicPoint learns the detector alone (:func:`keypointlab.losses.superpoint.
magicpoint_loss`) on synthetic shapes or on pseudo-labelled image pairs; SuperPoint learns
detector and descriptor jointly on pseudo-labelled pairs (see :mod:`keypointlab.adaptation`
for the whole recipe).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from keypointlab.losses import superpoint as sp_losses
from keypointlab.models.base import register_method, split_views
from keypointlab.models.blocks import conv_block, vgg_encoder
from keypointlab.models.cells import CellModel

GREY_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R 601, as OpenCV's RGB2GRAY


def to_grey(image: torch.Tensor) -> torch.Tensor:
    """``(B, 1|3, H, W)`` to ``(B, 1, H, W)`` (RGB weighted by :data:`GREY_WEIGHTS`)."""
    if image.shape[1] == 1:
        return image
    w = image.new_tensor(GREY_WEIGHTS).view(1, 3, 1, 1)
    return (image * w).sum(1, keepdim=True)


def cell_maxima(heatmap: torch.Tensor, cell: int = 8) -> dict[str, torch.Tensor]:
    """The best pixel of each ``cell x cell`` cell of a ``(B, 1, H, W)`` heatmap.

    Returns ``scores`` ``(B, 1, H / cell, W / cell)`` (the cell's highest value; ties keep
    the first pixel in raster order) and ``keypoints`` ``(B, 2, H / cell, W / cell)`` (pixel
    xy of that pixel).
    """
    h, w = heatmap.shape[-2:]
    if h % cell or w % cell:
        raise ValueError(f"heatmap of size {(h, w)} is not a multiple of the cell {cell}")
    return _best_of_cells(F.pixel_unshuffle(heatmap, cell), cell)


def _best_of_cells(cells: torch.Tensor, cell: int) -> dict[str, torch.Tensor]:
    """:func:`cell_maxima` of ``(B, cell^2, Hc, Wc)`` per-cell values (pixel_unshuffle order)."""
    hc, wc = cells.shape[-2:]
    scores, idx = cells.max(dim=1, keepdim=True)
    ys = torch.arange(hc, device=cells.device, dtype=cells.dtype).view(1, 1, hc, 1) * cell
    xs = torch.arange(wc, device=cells.device, dtype=cells.dtype).view(1, 1, 1, wc) * cell
    x = xs + (idx % cell).to(cells.dtype)
    y = ys + torch.div(idx, cell, rounding_mode="floor").to(cells.dtype)
    return {"scores": scores, "keypoints": torch.cat([x, y], dim=1)}


def detector_outputs(logits: torch.Tensor, cell: int = 8) -> dict[str, torch.Tensor]:
    """Heatmap and per-cell best keypoint from ``(B, cell^2 + 1, Hc, Wc)`` logits.

    Returns ``heatmap`` ``(B, 1, Hc * cell, Wc * cell)`` (softmax without the dustbin),
    ``scores`` ``(B, 1, Hc, Wc)`` (the best probability of each cell) and ``keypoints``
    ``(B, 2, Hc, Wc)`` (pixel xy of that best pixel), see :func:`cell_maxima`.
    """
    c = logits.shape[1]
    if c != cell * cell + 1:
        raise ValueError(f"detector logits need {cell * cell + 1} channels, got {c}")
    prob = logits.softmax(dim=1)[:, :-1]  # (B, cell^2, Hc, Wc)
    return {"heatmap": F.pixel_shuffle(prob, cell), **_best_of_cells(prob, cell)}


def heatmap_nms_keypoints(
    heatmap: torch.Tensor,
    threshold: float = 0.015,
    nms_radius: int = 4,
    max_keypoints: int = 0,
    border: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SuperPoint-style keypoints of a heatmap: threshold, max-pool NMS, top-k.

    A pixel is kept when it is the maximum of its ``(2 r + 1)^2`` window (``r =
    nms_radius``, torch max-pooling), above ``threshold`` and at least ``border`` pixels
    from the image edge. Ties inside a window keep the first pixel in raster order, so no
    two kept points are within ``r`` pixels (Chebyshev distance) of each other. As in
    SuperGlue's ``simple_nms``, two more rounds recover maxima that were only suppressed
    by points which were themselves suppressed.

    Args:
        heatmap: ``(H, W)``, ``(1, H, W)`` or ``(1, 1, H, W)`` probabilities.
        threshold: smallest score kept.
        nms_radius: suppression radius in pixels (0: no suppression).
        max_keypoints: keep the best this many (0: all).
        border: drop points closer than this to the image edge.

    Returns:
        ``(keypoints, scores)``: ``(N, 2)`` pixel xy (float) and ``(N,)`` scores, by
        decreasing score.
    """
    if heatmap.dim() == 4 and heatmap.shape[:2] == (1, 1):
        heatmap = heatmap[0, 0]
    elif heatmap.dim() == 3 and heatmap.shape[0] == 1:
        heatmap = heatmap[0]
    if heatmap.dim() != 2:
        raise ValueError(f"heatmap_nms_keypoints: expected one (H, W) map, got {heatmap.shape}")
    h, w = heatmap.shape
    scores = heatmap.detach()[None, None].float()
    if nms_radius > 0:
        keep = _nms_mask(scores, nms_radius)
    else:
        keep = torch.ones_like(scores, dtype=torch.bool)
    keep &= scores > threshold
    if border > 0:
        inner = torch.zeros_like(keep)
        inner[..., border : h - border, border : w - border] = True
        keep &= inner
    ys, xs = torch.nonzero(keep[0, 0], as_tuple=True)
    values = scores[0, 0, ys, xs]
    order = torch.argsort(values, descending=True, stable=True)
    if max_keypoints > 0:
        order = order[:max_keypoints]
    kp = torch.stack([xs[order], ys[order]], dim=-1).to(heatmap.dtype)
    return kp, values[order].to(heatmap.dtype)


def _nms_mask(scores: torch.Tensor, radius: int) -> torch.Tensor:
    """Boolean ``(1, 1, H, W)`` mask of the local maxima kept by max-pool NMS."""
    k = 2 * radius + 1

    def pool(x: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(x, kernel_size=k, stride=1, padding=radius)

    h, w = scores.shape[-2:]
    # raster rank, larger for earlier pixels, to break ties between equal maxima
    rank = torch.arange(h * w, 0, -1, device=scores.device, dtype=torch.float64).view(1, 1, h, w)

    def first_of_ties(mask: torch.Tensor) -> torch.Tensor:
        # every pair of local maxima within one window has equal scores: keep the first
        r = torch.where(mask, rank, torch.zeros_like(rank))
        return mask & (r == pool(r))

    keep = first_of_ties(scores == pool(scores))
    for _ in range(2):
        suppressed = pool(keep.float()) > 0
        rest = torch.where(suppressed, torch.full_like(scores, -1.0), scores)
        new = first_of_ties((rest == pool(rest)) & ~suppressed)
        keep = keep | new
    return keep


_NO_LABELS = (
    "method {name!r} trains on keypoint labels: set data.source to {sources} "
    "(adapted_pairs reads data.labels, written by `keypointlab adapt`)"
)
_LABEL_SOURCES = "synthetic or adapted_pairs"


@register_method("magicpoint")
class MagicPoint(CellModel):
    """SuperPoint's encoder and detector head (see the module docstring for the outputs).

    Trains on single labelled images (``image``, ``keypoint_map``, ``valid_mask``: the
    synthetic source) or on both views of labelled pairs (``image0/1``,
    ``keypoint_map0/1``, ``valid_mask0/1``: the adapted_pairs source).
    """

    default_conf: dict[str, Any] = {
        "channels": [64, 64, 128, 128],  # widths of the four encoder conv pairs
        "head_width": 256,  # width of the heads' 3x3 conv
        "batch_norm": True,
        "cell": 8,  # fixed by the three 2x2 max-pools
    }
    loss_defaults: dict[str, Any] = sp_losses.DETECTOR_CONF
    tiny_conf: dict[str, Any] = {"channels": [8, 8, 16, 16], "head_width": 16}

    def _init(self, conf: dict[str, Any]) -> None:
        widths = list(conf["channels"])
        name = type(self).__name__
        if len(widths) != 4:
            raise ValueError(f"{name}: 'channels' needs 4 widths, got {widths}")
        if conf["cell"] != 8:
            raise ValueError(f"{name}: cell must be 8 (three 2x2 max-pools), got {conf['cell']}")
        bn = conf["batch_norm"]
        self.encoder = vgg_encoder(widths, 1, batch_norm=bn)
        c, hw = widths[-1], conf["head_width"]
        cell = conf["cell"]
        self.detector = nn.Sequential(
            conv_block(c, hw, batch_norm=bn), nn.Conv2d(hw, cell * cell + 1, 1)
        )

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        """Encoder features ``(B, channels[-1], H / 8, W / 8)`` of a 1- or 3-channel image."""
        h, w = image.shape[-2:]
        cell = self.conf["cell"]
        if h % cell or w % cell:
            raise ValueError(
                f"{type(self).__name__}: image size {(h, w)} must be a multiple of {cell}"
            )
        return self.encoder(to_grey(image))

    def _forward(self, data: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x = self.encode(data["image"])
        logits = self.detector(x)
        out = detector_outputs(logits, self.conf["cell"])
        out["logits"] = logits
        out["descriptors"] = x  # no descriptor head: encoder features (see module docstring)
        return out

    def loss(
        self, batch: dict[str, torch.Tensor], gt: Any, conf: dict[str, Any], step: int
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        if "keypoint_map" in batch:
            images, maps = batch["image"], batch["keypoint_map"]
            valid = batch.get("valid_mask")
        elif "keypoint_map0" in batch:
            images = torch.cat([batch["image0"], batch["image1"]])
            maps = torch.cat([batch["keypoint_map0"], batch["keypoint_map1"]])
            valid = torch.cat([batch["valid_mask0"], batch["valid_mask1"]])
        else:
            raise KeyError(_NO_LABELS.format(name=self.method_name, sources=_LABEL_SOURCES))
        pred = self({"image": images})
        return sp_losses.magicpoint_loss(pred["logits"], maps, valid, conf)


@register_method("superpoint")
class SuperPoint(MagicPoint):
    """MagicPoint plus the coarse descriptor head (see the module docstring); trains its
    detector and descriptor jointly on labelled homographic pairs."""

    default_conf: dict[str, Any] = {**MagicPoint.default_conf, "descriptor_dim": 256}
    loss_defaults: dict[str, Any] = sp_losses.DEFAULT_CONF
    tiny_conf: dict[str, Any] = {**MagicPoint.tiny_conf, "descriptor_dim": 16}

    def _init(self, conf: dict[str, Any]) -> None:
        super()._init(conf)
        c, hw = conf["channels"][-1], conf["head_width"]
        self.descriptor = nn.Sequential(
            conv_block(c, hw, conf["batch_norm"]), nn.Conv2d(hw, conf["descriptor_dim"], 1)
        )

    def _forward(self, data: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x = self.encode(data["image"])
        logits = self.detector(x)
        out = detector_outputs(logits, self.conf["cell"])
        out["logits"] = logits
        out["descriptors"] = self.descriptor(x)
        return out

    def loss(
        self, batch: dict[str, torch.Tensor], gt: Any, conf: dict[str, Any], step: int
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        if "keypoint_map0" not in batch:
            raise KeyError(_NO_LABELS.format(name=self.method_name, sources="adapted_pairs"))
        p0, p1 = split_views(self, batch)
        return sp_losses.superpoint_loss(
            p0,
            p1,
            batch["keypoint_map0"],
            batch["keypoint_map1"],
            gt,
            batch.get("valid_mask0"),
            batch.get("valid_mask1"),
            conf,
        )
