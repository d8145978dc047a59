"""Nearest-neighbour descriptor matching (torch, batched or not).

Matches are returned as ``matches0``: for every descriptor of set 0 the index of its match
in set 1, or ``-1`` when unmatched. :func:`matches_to_pairs` turns them into index pairs.
"""

from __future__ import annotations

import numpy as np
import torch

from keypointlab import limits
from keypointlab.errors import InputError


def _as_tensor(x: np.ndarray | torch.Tensor) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x
    return torch.from_numpy(np.ascontiguousarray(x))


def descriptor_distances(desc0: torch.Tensor, desc1: torch.Tensor) -> torch.Tensor:
    """Euclidean distances ``(..., N0, N1)`` between ``(..., N0, D)`` and ``(..., N1, D)``."""
    if desc0.shape[-2] == 0 or desc1.shape[-2] == 0:
        return desc0.new_zeros((*desc0.shape[:-1], desc1.shape[-2]))
    # Element-wise distances, not the faster ||a||^2 + ||b||^2 - 2ab form: that one rounds
    # identical descriptors to different distances, which breaks "ties go to the lowest index"
    # and can make evaluation disagree with the protocol's reference implementation.
    return torch.cdist(desc0, desc1, compute_mode="donot_use_mm_for_euclid_dist")


def match_nn(
    desc0: np.ndarray | torch.Tensor,
    desc1: np.ndarray | torch.Tensor,
    mutual: bool = True,
    ratio: float | None = None,
    max_distance: float | None = None,
) -> torch.Tensor:
    """Match each descriptor of set 0 to its nearest neighbour in set 1.

    Args:
        desc0: ``(N0, D)`` or ``(B, N0, D)`` descriptors.
        desc1: ``(N1, D)`` or ``(B, N1, D)`` descriptors.
        mutual: keep only mutual nearest neighbours.
        ratio: Lowe's ratio test, keep matches whose best distance is below ``ratio``
            times the second best (needs ``N1 >= 2``; otherwise nothing passes).
        max_distance: keep matches with distance at most this.

    Returns:
        ``matches0`` of shape ``(N0,)`` or ``(B, N0)``, int64, ``-1`` for unmatched.
        Ties go to the lowest index.

    Raises:
        InputError: a descriptor holds NaN or infinity (it has no nearest neighbour), or
            ``ratio`` is not in ``(0, 1]``.
    """
    if ratio is not None and not 0 < ratio <= 1:
        raise InputError(f"ratio {ratio}: Lowe's ratio test takes a number in (0, 1]")
    d0, d1 = _as_tensor(desc0), _as_tensor(desc1)
    limits.check_finite(d0, "descriptors of image 0")
    limits.check_finite(d1, "descriptors of image 1")
    dtype = torch.promote_types(d0.dtype, d1.dtype)
    if not dtype.is_floating_point:
        dtype = torch.float32
    d0, d1 = d0.to(dtype), d1.to(dtype)
    n0, n1 = d0.shape[-2], d1.shape[-2]
    if n0 == 0 or n1 == 0:
        return torch.full(d0.shape[:-1], -1, dtype=torch.long, device=d0.device)
    dist = descriptor_distances(d0, d1)
    best, nn01 = dist.min(dim=-1)
    valid = torch.ones_like(nn01, dtype=torch.bool)
    if mutual:
        nn10 = dist.argmin(dim=-2)
        idx0 = torch.arange(n0, device=dist.device).expand_as(nn01)
        valid &= torch.gather(nn10, -1, nn01) == idx0
    if ratio is not None:
        if n1 < 2:
            valid &= False
        else:
            two = dist.topk(2, dim=-1, largest=False).values
            valid &= two[..., 0] < ratio * two[..., 1]
    if max_distance is not None:
        valid &= best <= max_distance
    return torch.where(valid, nn01, torch.full_like(nn01, -1))


def matches_to_pairs(matches0: torch.Tensor | np.ndarray) -> np.ndarray:
    """``(M, 2)`` int64 index pairs ``(i, j)`` from an unbatched ``matches0``."""
    m = matches0.cpu().numpy() if isinstance(matches0, torch.Tensor) else np.asarray(matches0)
    idx = np.flatnonzero(m >= 0)
    return np.stack([idx, m[idx]], axis=1).astype(np.int64)
