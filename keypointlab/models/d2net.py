"""D2-Net (Dusmanu et al., CVPR 2019): one dense feature map is the descriptor and the detector.

Backbone. VGG-16 cut after ``conv4_3``: blocks of ``convs = (2, 2, 3, 3)`` 3x3 convolutions
(+ ReLU), a 2x2 max-pool after blocks 1 and 2, and, as in the paper, the third pooling made a
stride-1 average pooling with the fourth block's convolutions dilated by 2, so the feature
map ``F`` (``(B, C, H/4, W/4)``, non-negative after the last ReLU) keeps 1/4 resolution. The
paper fine-tunes an ImageNet VGG-16; no pretrained weights exist here, so this one is trained
from scratch, with batch norm by default (``batch_norm``) to make that practical.

Positions. Feature-map cell ``(i, j)`` is centred on image pixel ``(4 j + 1.5, 4 i + 1.5)``
(xy, the centre of the top-left pixel at ``(0, 0)``): two 2x2 poolings of stride 2 each map
index ``k`` to the centre ``2 k + 0.5`` of the cells they pool. The stride-1 pooling is a
3x3 window centred on its cell (the paper's 2x2 window would shift the map by half a cell,
2 pixels).

Detection. *Hard* (inference, :func:`hard_detection`): a cell is a keypoint when its
strongest channel ``c* = argmax_c F_c`` is a 3x3 spatial maximum of ``F_c*``, with the
edge-response test of SIFT on the Hessian of ``F_c*`` (``tr^2 / det < (t + 1)^2 / t``,
``det > 0``) and a sub-pixel position from a local quadratic fit (Newton step
``-H^-1 g``, kept when it stays inside the cell). Its score is ``F_c*`` there. *Soft*
(training, :func:`soft_detection`): ``alpha = exp(F / max F) / sum_3x3 exp(F / max F)``,
``beta = F / max_c F``, ``gamma = max_c alpha * beta``, normalised to sum to one per image.

Multi-scale (``pyramid``, the paper's ``[0.5, 1, 2]``): the image is resized by each scale
from the coarsest up; each level's feature map is the network's plus the previous level's
accumulated map resampled onto it; detections are taken at every level except where a
coarser level already detected (the finer cells whose nearest coarser cell holds a
detection, as in the reference implementation), scored by the accumulated activation
divided by the number of levels it sums (so top-k compares levels on one footing) and
described from their level's accumulated map. ``pyramid: [1.0]`` is single-scale.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from keypointlab.geometry import warp_points
from keypointlab.geometry.homography import resize_matrix
from keypointlab.geometry.keypoints import cell_grid, cells_to_pixels, sample_map
from keypointlab.losses import d2net as d2_losses
from keypointlab.models.base import BaseModel, register_method, split_views

STRIDE = 4  # feature-map cell in image pixels: cell j is centred on pixel 4 j + 1.5


def soft_detection(features: torch.Tensor, window: int = 3, eps: float = 1e-12) -> torch.Tensor:
    """D2-Net's soft detection score ``(B, h, w)`` of features ``(B, C, h, w)``, summing to
    one over each image (see the module docstring)."""
    b = features.shape[0]
    f = F.relu(features)
    top = f.reshape(b, -1).max(dim=1).values.clamp_min(eps).view(b, 1, 1, 1)
    e = torch.exp(f / top)
    pad = window // 2
    # the paper pads with exp(0) = 1: a border cell competes with "empty" neighbours
    sum_e = window * window * F.avg_pool2d(F.pad(e, [pad] * 4, value=1.0), window, stride=1)
    alpha = e / sum_e
    beta = f / f.max(dim=1, keepdim=True).values.clamp_min(eps)
    gamma = (alpha * beta).max(dim=1).values
    return gamma / gamma.reshape(b, -1).sum(dim=1).clamp_min(eps).view(b, 1, 1)


def hard_detection(
    features: torch.Tensor, edge_threshold: float = 5.0, banned: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """Hard detections of one feature map ``(C, h, w)``.

    A cell ``(i, j)`` (not on the map's 1-cell border, where the Hessian is undefined) is
    kept when ``c* = argmax_c F_c(i, j)`` has ``F_c*(i, j) > 0`` and is the maximum of its
    3x3 neighbourhood in ``F_c*``, when ``F_c*`` is not edge-like there
    (``tr^2 / det < (t + 1)^2 / t`` with ``det > 0``, ``t = edge_threshold``), when the
    quadratic fit's step ``-H^-1 g`` stays within half a cell on both axes, and when
    ``banned`` ``(h, w)`` (bool, optional) is false there.

    Returns ``xy`` ``(N, 2)`` sub-pixel feature-map positions, ``cells`` ``(N, 2)`` their
    integer cells (xy), ``channels`` ``(N,)`` and ``scores`` ``(N,)`` (``F_c*(i, j)``), in
    raster order.
    """
    c, h, w = features.shape
    top, channel = features.max(dim=0)
    pooled = F.max_pool2d(features[None], 3, stride=1, padding=1)[0]
    local_max = pooled.gather(0, channel[None])[0] <= top
    keep = local_max & (top > 0)
    keep[0], keep[-1], keep[:, 0], keep[:, -1] = False, False, False, False
    if banned is not None:
        keep &= ~banned
    iy, ix = torch.nonzero(keep, as_tuple=True)
    ch = channel[iy, ix]

    def at(dy: int, dx: int) -> torch.Tensor:  # each candidate's own channel, one cell away
        return features[ch, iy + dy, ix + dx]

    v = at(0, 0)
    dii = at(1, 0) - 2 * v + at(-1, 0)
    djj = at(0, 1) - 2 * v + at(0, -1)
    dij = 0.25 * (at(1, 1) - at(1, -1) - at(-1, 1) + at(-1, -1))
    det = dii * djj - dij * dij
    tr = dii + djj
    t = float(edge_threshold)
    not_edge = (det > 0) & (tr * tr * t < (t + 1) ** 2 * det)
    di = 0.5 * (at(1, 0) - at(-1, 0))
    dj = 0.5 * (at(0, 1) - at(0, -1))
    safe = torch.where(det.abs() > 0, det, torch.ones_like(det))
    step_i = -(djj * di - dij * dj) / safe
    step_j = -(-dij * di + dii * dj) / safe
    inside = (step_i.abs() < 0.5) & (step_j.abs() < 0.5)
    ok = not_edge & inside
    cells = torch.stack([ix, iy], dim=1)[ok]
    xy = cells.to(features.dtype) + torch.stack([step_j, step_i], dim=1)[ok]
    return {"xy": xy, "cells": cells, "channels": ch[ok], "scores": v[ok]}


def _resize(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(image.shape[-2:]) == size:
        return image
    shrink = size[0] < image.shape[-2]
    return F.interpolate(image, size=size, mode="bilinear", align_corners=False, antialias=shrink)


def _pixels_to_fmap(src: tuple[int, int], dst: tuple[int, int]) -> np.ndarray:
    """3x3 map from the pixels of an image of size ``src`` to the feature-map xy of the
    same image resized to ``dst`` (both ``(h, w)``)."""
    c = (STRIDE - 1) / 2
    to_px = np.array([[STRIDE, 0, c], [0, STRIDE, c], [0, 0, 1.0]])
    return np.linalg.inv(to_px) @ resize_matrix(src, dst)


def _fmap_map(src: tuple[int, int], dst: tuple[int, int]) -> np.ndarray:
    """3x3 map from the feature-map xy of an image of size ``src`` to that of the same
    image resized to ``dst`` (both ``(h, w)``)."""
    c = (STRIDE - 1) / 2
    to_px = np.array([[STRIDE, 0, c], [0, STRIDE, c], [0, 0, 1.0]])
    return _pixels_to_fmap(src, dst) @ to_px


@register_method("d2net")
class D2Net(BaseModel):
    """D2-Net's dense features, soft detection for training and hard detection (single- or
    multi-scale) for inference.

    Outputs of ``forward`` (``H, W`` the input size):
        features: ``(B, C, H/4, W/4)`` non-negative dense features (the raw map).
        descriptors: the same, L2-normalised over channels.
        scores: ``(B, H/4, W/4)`` soft detection scores, summing to one per image.
    """

    default_conf: dict[str, Any] = {
        "channels": [16, 32, 64, 128],  # widths of the four VGG blocks (paper: 64..512)
        "convs": [2, 2, 3, 3],  # 3x3 convolutions per block (VGG-16 up to conv4_3)
        "batch_norm": True,  # from scratch; the paper's ImageNet VGG has none
        "dilation": 2,  # of block 4, after the stride-1 pooling
        "soft_window": 3,  # soft local-max window (training)
        "edge_threshold": 5.0,  # hard detection's edge-response test
        "pyramid": [1.0],  # image scales at inference; the paper's multi-scale: [0.5, 1, 2]
        "cell": 4,
    }
    loss_defaults: dict[str, Any] = d2_losses.DEFAULT_CONF
    tiny_conf: dict[str, Any] = {"channels": [4, 8, 8, 16], "convs": [1, 1, 1, 2]}
    onnx_export = False  # a data-dependent number of detections (nonzero) per level

    def _init(self, conf: dict[str, Any]) -> None:
        widths, convs = list(conf["channels"]), list(conf["convs"])
        if len(widths) != 4 or len(convs) != 4 or min(convs) < 1 or min(widths) < 1:
            raise ValueError(
                f"D2Net: 'channels' and 'convs' need 4 positive entries each, got "
                f"{widths} and {convs}"
            )
        if conf["cell"] != STRIDE:
            raise ValueError(f"D2Net: cell must be {STRIDE} (two 2x2 poolings), got {conf['cell']}")
        pyramid = [float(s) for s in conf["pyramid"]]
        if not pyramid or min(pyramid) <= 0:
            raise ValueError(f"D2Net: 'pyramid' must be positive scales, got {conf['pyramid']}")
        layers: list[nn.Module] = []
        cin = 3
        for block, (width, n) in enumerate(zip(widths, convs, strict=True)):
            dilation = int(conf["dilation"]) if block == 3 else 1
            for _ in range(n):
                layers.append(
                    nn.Conv2d(
                        cin,
                        width,
                        3,
                        padding=dilation,
                        dilation=dilation,
                        bias=not conf["batch_norm"],
                    )
                )
                if conf["batch_norm"]:
                    layers.append(nn.BatchNorm2d(width))
                layers.append(nn.ReLU(inplace=True))
                cin = width
            if block < 2:
                layers.append(nn.MaxPool2d(2, 2))
            elif block == 2:
                layers.append(nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False))
        self.backbone = nn.Sequential(*layers)

    def features(self, image: torch.Tensor) -> torch.Tensor:
        """The dense feature map ``(B, C, H/4, W/4)`` of images ``(B, 1|3, H, W)`` in [0, 1]."""
        if image.shape[1] == 1:
            image = image.expand(-1, 3, -1, -1)
        return self.backbone(image * 2.0 - 1.0)

    def _forward(self, data: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        f = self.features(data["image"])
        return {
            "features": f,
            "descriptors": F.normalize(f, dim=1),
            "scores": soft_detection(f, self.conf["soft_window"]),
        }

    def loss(
        self, batch: dict[str, torch.Tensor], gt: Any, conf: dict[str, Any], step: int
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        if gt is None:
            raise ValueError("D2Net is trained from pairs with ground truth (H_0to1 or depth)")
        p0, p1 = split_views(self, batch)
        return d2_losses.d2net_loss(
            p0["descriptors"], p1["descriptors"], p0["scores"], p1["scores"], gt, conf
        )

    # -- inference ------------------------------------------------------------------
    def detect(self, image: torch.Tensor) -> tuple[dict[str, torch.Tensor], Any]:
        """Hard detections over the pyramid; ``context`` holds each level's accumulated map
        and the map from image pixels to the level's feature map."""
        h, w = image.shape[-2:]
        levels: list[tuple[torch.Tensor, torch.Tensor]] = []
        parts = []
        prev = None  # (accumulated map, detections mask, level image size)
        for level, s in enumerate(sorted(float(v) for v in self.conf["pyramid"])):
            size = (max(round(h * s), 1), max(round(w * s), 1))
            f = self.features(_resize(image, size))[0]
            fh, fw = f.shape[-2:]
            banned = None
            if prev is not None:  # add the coarser level's map, resampled onto this one
                acc, mask, psize = prev
                to_prev = f.new_tensor(_fmap_map(size, psize))
                grid = warp_points(cell_grid(fh, fw, f.device, f.dtype), to_prev)[None]
                f = f + sample_map(acc[None], grid)[0].T.reshape(-1, fh, fw)
                banned = sample_map(mask[None, None].float(), grid, mode="nearest")[0, :, 0] > 0.5
                banned = banned.reshape(fh, fw)
            det = hard_detection(f, self.conf["edge_threshold"], banned)
            mask = torch.zeros(fh, fw, dtype=torch.bool, device=f.device)
            mask[det["cells"][:, 1], det["cells"][:, 0]] = True
            if banned is not None:
                mask |= banned
            prev = (f, mask, size)
            to_image = f.new_tensor(np.linalg.inv(resize_matrix((h, w), size)))
            to_level_fmap = f.new_tensor(_pixels_to_fmap((h, w), size))
            levels.append((f, to_level_fmap))
            n = len(det["scores"])
            parts.append(
                {
                    "keypoints": warp_points(cells_to_pixels(det["xy"], STRIDE), to_image),
                    "scores": det["scores"] / (level + 1),  # the map sums level + 1 levels
                    "scales": f.new_full((n,), STRIDE / s),
                    "levels": torch.full((n,), level, dtype=torch.long, device=f.device),
                }
            )
        out = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
        out["keypoints"] = torch.stack(
            [out["keypoints"][:, 0].clamp(0, w - 1), out["keypoints"][:, 1].clamp(0, h - 1)], 1
        )
        return out, levels

    def describe(
        self, image: torch.Tensor, context: Any, keypoints: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        xy, levels = keypoints["keypoints"], keypoints["levels"]
        desc = xy.new_zeros((len(xy), context[0][0].shape[0]))
        for level, (f, to_fmap) in enumerate(context):
            sel = levels == level
            if sel.any():
                desc[sel] = sample_map(f[None], warp_points(xy[sel], to_fmap)[None])[0]
        return F.normalize(desc, dim=1)
