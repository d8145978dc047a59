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
