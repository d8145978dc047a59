"""KP2D (Tang et al., ICLR 2020): KeyPointNet and the IO-Net outlier-rejection network.

KeyPointNet predicts, for every 8x8 cell, a score, a keypoint location that may leave its
cell (``cross_ratio``) and a descriptor map that is upsampled to 1/4 resolution by
sub-pixel convolution (pixel shuffle) with a skip connection. IO-Net classifies point
pairs (source xy, target xy, descriptor distance) as inliers; its loss trains
KeyPointNet through the pairs' coordinates and descriptors.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from keypointlab.geometry.keypoints import cell_centers
from keypointlab.losses import kp2d as kp2d_losses
from keypointlab.models.base import register_method, split_views
from keypointlab.models.blocks import conv_block
from keypointlab.models.cells import CellModel


def conv_bn(cin: int, cout: int, k: int = 3, stride: int = 1) -> nn.Sequential:
    """Conv, batch norm and LeakyReLU(0.1): KP2D's block."""
    return conv_block(cin, cout, k, stride, slope=0.1)


class KeyPointNet(CellModel):
    """Dense keypoint network with 8x8 cells.

    Outputs (``H, W`` the input size, a multiple of 8; ``Hc = H / 8``):
        scores: ``(B, 1, Hc, Wc)`` in ``[0, 1]``.
        keypoints: ``(B, 2, Hc, Wc)`` pixel xy, clamped to the image.
        descriptors: ``(B, D, H / 4, W / 4)`` (or ``/8`` without upsampling), not normalised.
    """

    default_conf: dict[str, Any] = {
        "channels": [32, 64, 128, 256],  # widths of the four VGG blocks
        "descriptor_dim": 256,
        "cross_ratio": 2.0,  # keypoints may move this many (cell - 1) / 2 px from the centre
        "do_cross": True,  # False: keypoints stay inside their cell (ratio 1)
        "do_upsample": True,  # pixel-shuffle the descriptors to 1/4 resolution
        "dropout": 0.2,
        "cell": 8,
        # CPU-speed options (KP2D's architecture when left at these defaults):
        "stem_stride": 1,  # 2: the first conv strides by 2 instead of pooling after block 1
        "shared_head": False,  # one conv trunk for the score and location heads
        "upsample_width": 0,  # width of the 1/4-resolution descriptor conv (0: channels[3])
    }

    def _init(self, conf: dict[str, Any]) -> None:
        c1, c2, c3, c4 = conf["channels"]
        d = conf["descriptor_dim"]
        stride = conf["stem_stride"]
        if stride not in (1, 2):
            raise ValueError(f"KeyPointNet: stem_stride must be 1 or 2, got {stride}")
        stem = conv_bn(3, c1, stride=stride)
        self.block1 = nn.Sequential(stem, conv_bn(c1, c1))
        self.block2 = nn.Sequential(conv_bn(c1, c2), conv_bn(c2, c2))
        self.block3 = nn.Sequential(conv_bn(c2, c3), conv_bn(c3, c3))
        self.block4 = nn.Sequential(conv_bn(c3, c4), conv_bn(c4, c4))
        self.pool = nn.MaxPool2d(2, 2)
        self.pool1 = self.pool if stride == 1 else nn.Identity()
        self.drop = nn.Dropout2d(conf["dropout"]) if conf["dropout"] > 0 else nn.Identity()
        if conf["shared_head"]:
            self.head_trunk = conv_bn(c4, c4)
            self.score_head = nn.Conv2d(c4, 1, 1)
            self.location_head = nn.Conv2d(c4, 2, 1)
        else:
            self.head_trunk = nn.Identity()
            self.score_head = nn.Sequential(conv_bn(c4, c4), nn.Conv2d(c4, 1, 3, padding=1))
            self.location_head = nn.Sequential(conv_bn(c4, c4), nn.Conv2d(c4, 2, 3, padding=1))
        self.desc_a = conv_bn(c4, c4)
        if conf["do_upsample"]:
            u = conf["upsample_width"] or c4
            self.desc_b = nn.Conv2d(c4, 4 * c3, 3, padding=1)
            self.shuffle = nn.PixelShuffle(2)
            self.desc_c = conv_bn(2 * c3, u)
            self.desc_d = nn.Conv2d(u, d, 3, padding=1)
        else:
            self.desc_d = nn.Conv2d(c4, d, 3, padding=1)

    def _forward(self, data: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        image = data["image"]
        if image.shape[1] == 1:
            image = image.expand(-1, 3, -1, -1)
        b, _, h, w = image.shape
        cell = self.conf["cell"]
        if h % cell or w % cell:
            raise ValueError(f"KeyPointNet: image size {(h, w)} must be a multiple of {cell}")
        x = self.pool1(self.block1(image * 2.0 - 1.0))
        x = self.pool(self.block2(x))
        skip = self.block3(x)
        x = self.drop(self.block4(self.pool(skip)))
        trunk = self.head_trunk(x)
        scores = torch.sigmoid(self.score_head(trunk))
        shift = torch.tanh(self.location_head(trunk))
        ratio = self.conf["cross_ratio"] if self.conf["do_cross"] else 1.0
        step = (cell - 1) / 2.0
        centers = cell_centers(x.shape[2], x.shape[3], cell, x.device, x.dtype)
        kp = centers.unsqueeze(0) + shift * (ratio * step)
        kp = torch.stack([kp[:, 0].clamp(0, w - 1), kp[:, 1].clamp(0, h - 1)], dim=1)
        f = self.desc_a(x)
        if self.conf["do_upsample"]:
            f = self.shuffle(self.desc_b(f))
            f = self.desc_c(torch.cat([f, skip], dim=1))
        desc = self.desc_d(f)
        return {"scores": scores, "keypoints": kp, "descriptors": desc}


class IONet(nn.Module):
    """Point-pair inlier classifier: 1x1 convolutions with residual blocks.

    Input ``(B, 5, N)``: normalised source xy, target xy and descriptor distance.
    Output ``(B, N)`` inlier logits (trained towards +1 inlier, -1 outlier).
    """

    def __init__(self, in_channels: int = 5, width: int = 128, blocks: int = 4) -> None:
        super().__init__()
        self.stem = nn.Conv1d(in_channels, width, 1)
        self.blocks = nn.ModuleList(
            nn.Sequential(
                nn.Conv1d(width, width, 1),
                nn.BatchNorm1d(width),
                nn.ReLU(inplace=True),
                nn.Conv1d(width, width, 1),
                nn.BatchNorm1d(width),
            )
            for _ in range(blocks)
        )
        self.head = nn.Conv1d(width, 1, 1)

    def forward(self, pairs: torch.Tensor) -> torch.Tensor:
        x = self.stem(pairs)
        for block in self.blocks:
            x = torch.relu(x + block(x))
        return self.head(x)[:, 0]


@register_method("kp2d")
class KP2D(CellModel):
    """KeyPointNet plus IO-Net, the trainable unit of the KP2D method; extraction runs
    KeyPointNet alone."""

    loss_defaults: dict[str, Any] = kp2d_losses.DEFAULT_CONF
    tiny_conf: dict[str, Any] = {
        "keypoint_net": {"channels": [8, 8, 16, 16], "descriptor_dim": 16},
        "io_width": 16,
    }

    default_conf: dict[str, Any] = {
        "keypoint_net": KeyPointNet.default_conf,
        "with_io": True,
        "io_blocks": 4,
        "io_width": 128,
    }

    def _init(self, conf: dict[str, Any]) -> None:
        self.keypoint_net = KeyPointNet(conf["keypoint_net"])
        self.io_net = IONet(5, conf["io_width"], conf["io_blocks"]) if conf["with_io"] else None

    def _forward(self, data: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return self.keypoint_net(data)

    def input_multiple(self) -> int:
        return int(self.conf["keypoint_net"]["cell"])

    def loss(
        self, batch: dict[str, torch.Tensor], gt: Any, conf: dict[str, Any], step: int
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        p0, p1 = split_views(self.keypoint_net, batch)
        size = tuple(batch["image0"].shape[-2:])
        return kp2d_losses.kp2d_loss(p0, p1, gt, size, self.io_net, conf, step)
