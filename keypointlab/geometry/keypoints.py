"""Keypoint helpers shared by every learned model: cell grids, coordinate normalisation,
descriptor sampling and nearest-point association (torch, batched).

Coordinates are xy pixels with the pixel-centre convention of
:mod:`keypointlab.geometry.homography`; normalised coordinates map pixel ``0`` to ``-1`` and
pixel ``W - 1`` to ``+1`` (``grid_sample(..., align_corners=True)``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def cell_centers(
    hc: int,
    wc: int,
    cell: int,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Pixel xy of the centre of each ``cell x cell`` cell, shape ``(2, hc, wc)``.

    The centre of cell ``(i, j)`` is ``(j * cell + (cell - 1) / 2, i * cell + (cell - 1) / 2)``.
    """
    ys = torch.arange(hc, device=device, dtype=dtype) * cell + (cell - 1) / 2
    xs = torch.arange(wc, device=device, dtype=dtype) * cell + (cell - 1) / 2
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([gx, gy], dim=0)


def cells_to_pixels(f: torch.Tensor, cell: int) -> torch.Tensor:
    """Map (cell) xy ``(..., 2)`` to image pixel xy: cell ``j`` is centred on pixel
    ``j * cell + (cell - 1) / 2`` (as :func:`cell_centers`), fractional cells in between."""
    return f * cell + (cell - 1) / 2


def pixels_to_cells(xy: torch.Tensor, cell: int) -> torch.Tensor:
    """Inverse of :func:`cells_to_pixels`."""
    return (xy - (cell - 1) / 2) / cell


def cell_grid(
    h: int, w: int, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Map xy of every cell of an ``h x w`` map, ``(h * w, 2)`` in raster order."""
    ys, xs = torch.meshgrid(
        torch.arange(h, device=device, dtype=dtype),
        torch.arange(w, device=device, dtype=dtype),
        indexing="ij",
    )
    return torch.stack([xs.flatten(), ys.flatten()], dim=1)


def sample_map(fmap: torch.Tensor, f: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    """``fmap`` ``(B, C, h, w)`` at map xy ``f`` ``(B, N, 2)`` (cell units, ``0..w - 1``)
    -> ``(B, N, C)``; border values outside the map."""
    h, w = fmap.shape[-2:]
    scale = f.new_tensor([2.0 / max(w - 1, 1), 2.0 / max(h - 1, 1)])
    grid = (f * scale - 1.0).unsqueeze(1).to(fmap.dtype)
    out = F.grid_sample(fmap, grid, mode=mode, padding_mode="border", align_corners=True)
    return out[:, :, 0].transpose(1, 2)


def normalize_coords(xy: torch.Tensor, size: tuple[int, int] | torch.Tensor) -> torch.Tensor:
    """Pixel xy ``(..., 2)`` to ``[-1, 1]`` for an image of ``size = (h, w)``.

    ``size`` may be a tensor ``(h, w)`` so that traced graphs (ONNX) keep it dynamic.
    """
    if isinstance(size, torch.Tensor):
        wh = torch.stack([size[1], size[0]]).to(xy.dtype) - 1
        return xy * (2.0 / wh.clamp(min=1)) - 1.0
    h, w = size
    scale = xy.new_tensor([2.0 / max(w - 1, 1), 2.0 / max(h - 1, 1)])
    return xy * scale - 1.0


def denormalize_coords(uv: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Inverse of :func:`normalize_coords`."""
    h, w = size
    scale = uv.new_tensor([(w - 1) / 2.0, (h - 1) / 2.0])
    return (uv + 1.0) * scale


def sample_descriptors(
    desc_map: torch.Tensor,
    xy: torch.Tensor,
    image_size: tuple[int, int] | torch.Tensor,
    normalize: bool = True,
) -> torch.Tensor:
    """Bilinearly sample a dense descriptor map at pixel keypoints.

    Args:
        desc_map: ``(B, D, h, w)`` map covering the whole image (any resolution).
        xy: ``(B, N, 2)`` pixel coordinates in the image of ``image_size``.
        image_size: ``(H, W)`` of the image the keypoints live in.
        normalize: L2-normalise the sampled descriptors.

    Returns:
        ``(B, N, D)`` descriptors.
    """
    grid = normalize_coords(xy, image_size).unsqueeze(1).to(desc_map.dtype)  # (B, 1, N, 2)
    desc = F.grid_sample(desc_map, grid, mode="bilinear", align_corners=True)  # (B, D, 1, N)
    desc = desc[:, :, 0].transpose(1, 2)
    return F.normalize(desc, dim=-1) if normalize else desc


def nearest_points(xy0: torch.Tensor, xy1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For each point of ``xy0`` ``(B, N, 2)`` the distance to and index of the nearest point
    of ``xy1`` ``(B, M, 2)``; returns ``(B, N)`` distances and ``(B, N)`` indices."""
    d = torch.cdist(xy0, xy1)
    return d.min(dim=-1)


def border_mask(xy: torch.Tensor, size: tuple[int, int], border: float) -> torch.Tensor:
    """``(..., )`` mask of points at least ``border`` pixels inside an image of ``size``."""
    h, w = size
    x, y = xy[..., 0], xy[..., 1]
    return (x >= border) & (x <= w - 1 - border) & (y >= border) & (y <= h - 1 - border)
