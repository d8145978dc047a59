"""UnsuperPoint (Christiansen et al. 2019): an end-to-end unsupervised detector and descriptor.

A VGG-style backbone (four pairs of conv-BN-LeakyReLU layers, max-pooling after the first
three) feeds three heads at 1/8 resolution: a score per 8x8 cell, a relative position of
the cell's keypoint in ``[0, 1]^2`` and a descriptor map. Training is self-supervised with
homographic pairs (see :mod:`keypointlab.losses.unsuperpoint`).

Keypoint location. The paper maps the relative position ``r`` of cell ``(i, j)`` to
``x = (j + r_x) * 8``, a continuous coordinate with its origin at the image's top-left
*corner*. KeypointLab puts the centre of the top-left pixel at ``(0, 0)`` (see
:mod:`keypointlab.geometry.homography`), i.e. half a pixel further, so here::

    xy = cell_center + (r - 0.5) * cell        (= (j + r_x) * 8 - 0.5 for x)

``r = 0.5`` is the cell centre ``(j * 8 + 3.5, i * 8 + 3.5)`` and ``r`` in ``[0, 1]`` spans
the cell's full extent ``[8j - 0.5, 8j + 7.5]``, so every keypoint stays within half a cell
(4 px) of its centre. Keypoints are then clamped to the image ``[0, W - 1] x [0, H - 1]``
(as KeyPointNet), which only moves points in the outer half-pixel strip.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from keypointlab.geometry.keypoints import cell_centers
from keypointlab.losses import unsuperpoint as usp_losses
from keypointlab.models.base import register_method, split_views
from keypointlab.models.blocks import conv_block, vgg_encoder
from keypointlab.models.cells import CellModel


@register_method("unsuperpoint")
class UnsuperPoint(CellModel):
    """UnsuperPoint network with 8x8 cells.

    Outputs (``H, W`` the input size, a multiple of 8; ``Hc = H / 8``):
        scores: ``(B, 1, Hc, Wc)`` in ``[0, 1]``.
        keypoints: ``(B, 2, Hc, Wc)`` pixel xy (see the module docstring), clamped to the image.
        descriptors: ``(B, D, Hc, Wc)``, not normalised (sampled and normalised at keypoints).
        relative: ``(B, 2, Hc, Wc)`` relative xy positions in ``[0, 1]`` inside each cell
            (used by the uniform-distribution loss).
    """

    default_conf: dict[str, Any] = {
        "channels": [32, 64, 128, 256],  # widths of the four backbone conv pairs
        "descriptor_dim": 256,
        "negative_slope": 0.01,  # LeakyReLU slope
        "cell": 8,  # fixed by the three 2x2 max-pools
    }
    loss_defaults: dict[str, Any] = usp_losses.DEFAULT_CONF
    tiny_conf: dict[str, Any] = {"channels": [8, 8, 16, 16], "descriptor_dim": 16}

    def _init(self, conf: dict[str, Any]) -> None:
        widths = list(conf["channels"])
        if len(widths) != 4:
            raise ValueError(f"UnsuperPoint: 'channels' needs 4 widths, got {widths}")
        if conf["cell"] != 8:
            raise ValueError(
                f"UnsuperPoint: cell must be 8 (three 2x2 max-pools), got {conf['cell']}"
            )
        slope = conf["negative_slope"]
        self.backbone = vgg_encoder(widths, 3, slope=slope)
        c = widths[-1]
        self.score_head = nn.Sequential(
            conv_block(c, c, slope=slope), nn.Conv2d(c, 1, 3, padding=1)
        )
        self.position_head = nn.Sequential(
            conv_block(c, c, slope=slope), nn.Conv2d(c, 2, 3, padding=1)
        )
        self.descriptor_head = nn.Sequential(
            conv_block(c, c, slope=slope), nn.Conv2d(c, conf["descriptor_dim"], 3, padding=1)
        )

    def _forward(self, data: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        image = data["image"]
        if image.shape[1] == 1:
            image = image.expand(-1, 3, -1, -1)
        h, w = image.shape[-2:]
        cell = self.conf["cell"]
        if h % cell or w % cell:
            raise ValueError(f"UnsuperPoint: image size {(h, w)} must be a multiple of {cell}")
        x = self.backbone(image * 2.0 - 1.0)
        scores = torch.sigmoid(self.score_head(x))
        relative = torch.sigmoid(self.position_head(x))
        centers = cell_centers(x.shape[2], x.shape[3], cell, x.device, x.dtype)
        kp = centers.unsqueeze(0) + (relative - 0.5) * cell
        kp = torch.stack([kp[:, 0].clamp(0, w - 1), kp[:, 1].clamp(0, h - 1)], dim=1)
        desc = self.descriptor_head(x)
        return {"scores": scores, "keypoints": kp, "descriptors": desc, "relative": relative}

    def loss(
        self, batch: dict[str, torch.Tensor], gt: Any, conf: dict[str, Any], step: int
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        p0, p1 = split_views(self, batch)
        size = tuple(batch["image0"].shape[-2:])
        return usp_losses.unsuperpoint_loss(p0, p1, gt, size, conf)
