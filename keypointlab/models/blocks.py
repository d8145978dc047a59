"""Building blocks shared by the architectures (one home for the VGG-style encoder)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn


def conv_block(
    cin: int, cout: int, k: int = 3, stride: int = 1, batch_norm: bool = True, slope: float = 0.0
) -> nn.Sequential:
    """``k x k`` conv (+ batch norm) + ReLU, or LeakyReLU when ``slope > 0``."""
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=not batch_norm)
    ]
    if batch_norm:
        layers.append(nn.BatchNorm2d(cout))
    layers.append(nn.LeakyReLU(slope, inplace=True) if slope > 0 else nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def vgg_encoder(
    widths: Sequence[int], in_channels: int, batch_norm: bool = True, slope: float = 0.0
) -> nn.Sequential:
    """Four pairs of :func:`conv_block` with a 2x2 max-pool after each of the first three
    (SuperPoint / UnsuperPoint encoder): ``(B, C, H, W)`` -> ``(B, widths[3], H/8, W/8)``."""
    layers: list[nn.Module] = []
    cin = in_channels
    for k, w in enumerate(widths):
        layers += [
            conv_block(cin, w, batch_norm=batch_norm, slope=slope),
            conv_block(w, w, batch_norm=batch_norm, slope=slope),
        ]
        if k < len(widths) - 1:
            layers.append(nn.MaxPool2d(2, 2))
        cin = w
    return nn.Sequential(*layers)


class ResidualBlock(nn.Module):
    """A ResNet block: *basic* (two 3x3 convolutions) or *bottleneck* (1x1, 3x3, 1x1 with
    ``width / 4`` inner channels), batch norm, the identity or a strided 1x1 convolution
    as the shortcut, ReLU after the sum. A stride-2 block maps output cell ``k`` onto the
    input cell ``2 k`` (3x3 convolution with padding 1, 1x1 shortcut with none)."""

    def __init__(self, cin: int, cout: int, stride: int = 1, bottleneck: bool = False) -> None:
        super().__init__()
        if bottleneck:
            mid = max(cout // 4, 1)
            self.body = nn.Sequential(
                nn.Conv2d(cin, mid, 1, bias=False),
                nn.BatchNorm2d(mid),
                nn.ReLU(inplace=True),
                nn.Conv2d(mid, mid, 3, stride=stride, padding=1, bias=False),
                nn.BatchNorm2d(mid),
                nn.ReLU(inplace=True),
                nn.Conv2d(mid, cout, 1, bias=False),
                nn.BatchNorm2d(cout),
            )
        else:
            self.body = nn.Sequential(
                nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True),
                nn.Conv2d(cout, cout, 3, padding=1, bias=False),
                nn.BatchNorm2d(cout),
            )
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout)
            )
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):  # noqa: D102
        return self.relu(self.body(x) + self.shortcut(x))


def resnet_encoder(
    stem: int,
    widths: Sequence[int],
    blocks: Sequence[int],
    strides: Sequence[int],
    stem_kernel: int = 7,
    bottleneck: bool = False,
) -> nn.Sequential:
    """ResNet up to its last stage: a ``stem_kernel`` stride-2 convolution to ``stem``
    channels (+ batch norm, ReLU), a 3x3 stride-2 max-pool, then one stage per entry of
    ``widths`` with ``blocks`` :class:`ResidualBlock` s, the first of stride ``strides``.
    The output stride is ``4 * prod(strides)``; output cell ``k`` is centred on input pixel
    ``stride * k`` (every downsampling maps ``k`` onto ``2 k``)."""
    if not (len(widths) == len(blocks) == len(strides)) or min(blocks, default=0) < 1:
        raise ValueError(
            f"resnet_encoder: widths, blocks and strides need one positive entry per stage, "
            f"got {list(widths)}, {list(blocks)}, {list(strides)}"
        )
    layers: list[nn.Module] = [
        nn.Conv2d(3, stem, stem_kernel, stride=2, padding=stem_kernel // 2, bias=False),
        nn.BatchNorm2d(stem),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(3, stride=2, padding=1),
    ]
    cin = stem
    for width, n, stride in zip(widths, blocks, strides, strict=True):
        for b in range(n):
            layers.append(ResidualBlock(cin, width, stride if b == 0 else 1, bottleneck))
            cin = width
    return nn.Sequential(*layers)
