"""Oriented, scaled patches around keypoints: the one bilinear patch sampler (a spatial
transformer) of the patch-based methods (LF-Net, LIFT, Altwaijry et al.).

A patch of ``size x size`` samples covers a square of side ``support`` image pixels
centred on the keypoint and turned by its orientation ``theta``. Patch sample ``(u, v)``
(``0 .. size - 1``, pixel centres) sits at

    xy = keypoint + (support / size) * R(theta) @ (u - (size - 1) / 2, v - (size - 1) / 2)

with ``R(theta) = [[cos, -sin], [sin, cos]]`` in image xy (y down), so a positive
``theta`` turns the patch clockwise on screen, as OpenCV's ``KeyPoint.angle`` does (in
degrees there, radians here). Sampling is bilinear with zeros outside the image and
differentiable in the image, the keypoints, the supports and the orientations.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from keypointlab.geometry.keypoints import normalize_coords


def patch_affines(
    keypoints: torch.Tensor,
    support: torch.Tensor,
    orientations: torch.Tensor | None,
    size: int,
) -> torch.Tensor:
    """``(N, 2, 3)`` maps from patch sample ``(u, v, 1)`` to image xy (see the module)."""
    n = keypoints.shape[0]
    step = support.to(keypoints.dtype).reshape(n) / size
    if orientations is None:
        c, s = torch.ones_like(step), torch.zeros_like(step)
    else:
        theta = orientations.to(keypoints.dtype).reshape(n)
        c, s = torch.cos(theta), torch.sin(theta)
    half = (size - 1) / 2
    a = torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2) * step[:, None, None]
    t = keypoints - half * (a[:, :, 0] + a[:, :, 1])
    return torch.cat([a, t[:, :, None]], dim=2)


def patch_grid(affines: torch.Tensor, size: int) -> torch.Tensor:
    """Image xy of every sample of each patch, ``(N, size, size, 2)`` (row ``v``, column
    ``u``)."""
    r = torch.arange(size, dtype=affines.dtype, device=affines.device)
    v, u = torch.meshgrid(r, r, indexing="ij")
    uv1 = torch.stack([u, v, torch.ones_like(u)], -1).reshape(1, -1, 3)
    xy = uv1 @ affines.transpose(1, 2)
    return xy.reshape(-1, size, size, 2)


def extract_patches_batched(
    images: torch.Tensor,
    keypoints: torch.Tensor,
    support: torch.Tensor,
    orientations: torch.Tensor | None = None,
    size: int = 32,
) -> torch.Tensor:
    """:func:`extract_patches` for ``k`` keypoints per image, in one pass: ``images``
    ``(B, C, H, W)``, ``keypoints`` ``(B, k, 2)``, ``support`` and ``orientations``
    ``(B, k)`` -> ``(B, k, C, size, size)``."""
    b, c, h, w = images.shape
    if keypoints.dim() != 3 or keypoints.shape[0] != b or keypoints.shape[2] != 2:
        raise ValueError(
            f"extract_patches_batched: keypoints must be ({b}, k, 2), got {tuple(keypoints.shape)}"
        )
    k = keypoints.shape[1]
    if k == 0:
        return images.new_zeros((b, 0, c, size, size))
    flat = patch_affines(
        keypoints.reshape(-1, 2),
        support.reshape(-1),
        None if orientations is None else orientations.reshape(-1),
        size,
    )
    grid = normalize_coords(patch_grid(flat, size), (h, w)).to(images.dtype)
    out = F.grid_sample(
        images,
        grid.reshape(b, k * size, size, 2),
        mode="bilinear",
        padding_mode="zeros",
        align_corners=True,
    )  # (B, C, k * size, size)
    return out.reshape(b, c, k, size, size).transpose(1, 2)


def extract_patches(
    images: torch.Tensor,
    keypoints: torch.Tensor,
    support: torch.Tensor,
    orientations: torch.Tensor | None = None,
    size: int = 32,
    batch: torch.Tensor | None = None,
) -> torch.Tensor:
    """Patches ``(N, C, size, size)`` of ``images`` ``(B, C, H, W)`` (or ``(C, H, W)``).

    Args:
        keypoints: ``(N, 2)`` image xy of the patch centres.
        support: ``(N,)`` side of each patch's square in image pixels.
        orientations: ``(N,)`` radians (see the module); ``None``: upright.
        size: samples per side.
        batch: ``(N,)`` image index of each keypoint (default: all from image 0).

    Raises:
        ValueError: shapes that do not fit, or a non-positive ``size``.
    """
    if images.dim() == 3:
        images = images[None]
    if images.dim() != 4:
        raise ValueError(f"extract_patches: images must be (B, C, H, W), got {tuple(images.shape)}")
    if keypoints.dim() != 2 or keypoints.shape[1] != 2:
        raise ValueError(f"extract_patches: keypoints must be (N, 2), got {tuple(keypoints.shape)}")
    n = keypoints.shape[0]
    if support.numel() != n or (orientations is not None and orientations.numel() != n):
        raise ValueError(f"extract_patches: support and orientations need {n} values each")
    if size < 1:
        raise ValueError(f"extract_patches: size must be positive, got {size}")
    b, c = images.shape[:2]
    if n == 0:
        return images.new_zeros((0, c, size, size))
    if batch is not None and (batch.numel() != n or int(batch.min()) < 0 or int(batch.max()) >= b):
        raise ValueError(f"extract_patches: batch must be {n} image indices below {b}")
    if batch is None:  # all from image 0: one pass
        return extract_patches_batched(
            images[:1],
            keypoints[None],
            support.reshape(1, n),
            None if orientations is None else orientations.reshape(1, n),
            size,
        )[0]
    support, orientations = (
        support.reshape(n),
        None if orientations is None else orientations.reshape(n),
    )
    parts = []
    for i in range(b):  # each image's keypoints in one pass
        sel = (batch == i).nonzero()[:, 0]
        if len(sel):
            turn = None if orientations is None else orientations[sel][None]
            patches = extract_patches_batched(
                images[i : i + 1], keypoints[sel][None], support[sel][None], turn, size
            )
            parts.append((sel, patches[0]))
    return torch.cat([p for _, p in parts]).index_select(
        0, torch.argsort(torch.cat([s for s, _ in parts]))
    )
