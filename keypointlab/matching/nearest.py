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


FAST_MIN_PAIRS = 65_536  # n0 * n1 from which the matrix-product pass is used
_CANDIDATES = 4  # nearest candidates per row/column rechecked exactly
_BLOCK_ROWS = 512  # rows of the approximate distance matrix per block


def _error_bound(sq0: torch.Tensor, sq1: torch.Tensor, dim: int) -> torch.Tensor:
    """A bound on ``|a|^2 + |b|^2 - 2 a.b`` as computed minus the exact squared distance,
    per row of set 0 ``(N0, 1)`` (for every column). The product form is one dot product
    of ``dim + 2`` terms whose absolute values sum to at most ``2 (|a|^2 + |b|^2)``, so its
    rounding is below ``(dim + 2) eps (|a|^2 + |b|^2)`` (Higham's ``gamma_n``, ``eps = 2u``)
    in any summation order; the squared norms add ``dim u`` each. Four times that covers
    them and the exact pass's own rounding of the distances it compares."""
    eps = torch.finfo(sq0.dtype).eps
    return (8 * (dim + 2) * eps) * (sq0[:, None] + sq1.max()) + torch.finfo(sq0.dtype).tiny


def _exact_nearest(
    d0: torch.Tensor,
    d1: torch.Tensor,
    vals: torch.Tensor,
    cand: torch.Tensor,
    tol: torch.Tensor,
    two: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Exact nearest (and second-nearest distance when ``two``) of each row of ``d0`` in
    ``d1``, as :func:`descriptor_distances` then ``min`` would give them, from the ``k``
    smallest approximate squared distances of each row ``vals (N0, k)`` (ascending) at
    columns ``cand``, good to ``tol (N0, 1)``: those candidates are measured exactly; rows
    whose near-ties may reach past them are measured against all of ``d1``."""
    n1, k = d1.shape[0], vals.shape[1]
    rank = 1 if two and k > 1 else 0
    # any column outside the candidates is farther than every candidate up to `rank`
    enough = (vals[:, rank] + 2 * tol[:, 0] < vals[:, -1]) | (k == n1)
    exact = descriptor_distances(d0[:, None, :], d1[cand])[:, 0, :]  # (N0, k), cdist's own
    full_rows = torch.nonzero(~enough)[:, 0]
    if len(full_rows):
        full = descriptor_distances(d0[full_rows], d1)
    # the lowest index among exact ties, like min(dim=-1) over the whole row
    best = exact.min(dim=-1).values
    idx = torch.where(exact == best[:, None], cand, torch.full_like(cand, n1)).min(-1).values
    second = None
    if two:
        second = exact.topk(2, dim=-1, largest=False).values[:, 1] if k > 1 else best
    if len(full_rows):
        fb, fi = full.min(dim=-1)
        best[full_rows], idx[full_rows] = fb, fi
        if two:
            second[full_rows] = full.topk(2, dim=-1, largest=False).values[:, 1]
    return best, idx, second


def _smallest(
    a: torch.Tensor, b: torch.Tensor, k: int, mutual: bool, rows: int = _BLOCK_ROWS
) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor] | None]:
    """The ``k`` smallest entries of ``a @ b.T`` per row and (``mutual``) per column,
    ascending, as ``(values, indices)``, computed by blocks of ``rows`` rows so each block
    stays in cache; the columns' running ``k`` smallest are merged block by block."""
    n0, n1 = a.shape[0], b.shape[0]
    kr, kc = min(k, n1), min(k, n0)
    row_v = a.new_empty(n0, kr)
    row_i = torch.empty(n0, kr, dtype=torch.long, device=a.device)
    col = None
    bt = b.T.contiguous()
    for s in range(0, n0, rows):
        block = a[s : s + rows] @ bt
        row_v[s : s + rows], row_i[s : s + rows] = block.topk(kr, dim=1, largest=False)
        if mutual:
            v, i = block.topk(min(kc, block.shape[0]), dim=0, largest=False)
            if col is not None:
                v, i = torch.cat([col[0], v]), torch.cat([col[1], i + s])
                order = v.topk(min(kc, v.shape[0]), dim=0, largest=False).indices
                v, i = v.gather(0, order), i.gather(0, order)
            else:
                i = i + s
            col = (v, i)
    if col is not None:  # (k, N1) -> (N1, k), ascending
        v, i = col
        order = v.argsort(dim=0, stable=True)
        col = (v.gather(0, order).T.contiguous(), i.gather(0, order).T.contiguous())
    return (row_v, row_i), col


def _nearest_fast(
    d0: torch.Tensor, d1: torch.Tensor, mutual: bool, two: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """``(best, nn01, second, nn10)`` of unbatched ``d0 (N0, D)``, ``d1 (N1, D)`` equal to
    the exact pass over :func:`descriptor_distances`: one matrix product gives approximate
    squared distances, and every choice they cannot make for certain (near-ties within the
    rounding bound) is made on exactly computed distances."""
    sq0, sq1 = (d0 * d0).sum(-1), (d1 * d1).sum(-1)
    one0, one1 = sq0.new_ones(len(sq0), 1), sq1.new_ones(len(sq1), 1)
    # |a|^2 + |b|^2 - 2 a.b as one product: [a, |a|^2, 1] . [-2b, 1, |b|^2]
    a = torch.cat([d0, sq0[:, None], one0], 1)
    b = torch.cat([-2 * d1, one1, sq1[:, None]], 1)
    (rv, ri), col = _smallest(a, b, _CANDIDATES, mutual)
    best, nn01, second = _exact_nearest(d0, d1, rv, ri, _error_bound(sq0, sq1, d0.shape[1]), two)
    nn10 = None
    if mutual:
        tol1 = _error_bound(sq1, sq0, d0.shape[1])
        _, nn10, _ = _exact_nearest(d1, d0, col[0], col[1], tol1, False)
    return best, nn01, second, nn10


def match_nn(
    desc0: np.ndarray | torch.Tensor,
    desc1: np.ndarray | torch.Tensor,
    mutual: bool = True,
    ratio: float | None = None,
    max_distance: float | None = None,
    fast: bool | None = None,
) -> torch.Tensor:
    """Match each descriptor of set 0 to its nearest neighbour in set 1.

    Args:
        desc0: ``(N0, D)`` or ``(B, N0, D)`` descriptors.
        desc1: ``(N1, D)`` or ``(B, N1, D)`` descriptors.
        mutual: keep only mutual nearest neighbours.
        ratio: Lowe's ratio test, keep matches whose best distance is below ``ratio``
            times the second best (needs ``N1 >= 2``; otherwise nothing passes).
        max_distance: keep matches with distance at most this.
        fast: one matrix product for approximate distances, then an exact recheck of
            every near-tie, with the same result as the exact pass (``None``: from
            :data:`FAST_MIN_PAIRS` pairs on, unbatched only).

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
    if fast is None:
        fast = d0.ndim == 2 and n0 * n1 >= FAST_MIN_PAIRS
    if fast and d0.ndim == 2:
        best, nn01, second, nn10 = _nearest_fast(d0, d1, mutual, ratio is not None)
    else:
        dist = descriptor_distances(d0, d1)
        best, nn01 = dist.min(dim=-1)
        nn10 = dist.argmin(dim=-2) if mutual else None
        second = None
        if ratio is not None and n1 >= 2:
            second = dist.topk(2, dim=-1, largest=False).values[..., 1]
    valid = torch.ones_like(nn01, dtype=torch.bool)
    if mutual:
        idx0 = torch.arange(n0, device=nn01.device).expand_as(nn01)
        valid &= torch.gather(nn10, -1, nn01) == idx0
    if ratio is not None:
        if n1 < 2:
            valid &= False
        else:
            valid &= best < ratio * second
    if max_distance is not None:
        valid &= best <= max_distance
    return torch.where(valid, nn01, torch.full_like(nn01, -1))


def matches_to_pairs(matches0: torch.Tensor | np.ndarray) -> np.ndarray:
    """``(M, 2)`` int64 index pairs ``(i, j)`` from an unbatched ``matches0``."""
    m = matches0.cpu().numpy() if isinstance(matches0, torch.Tensor) else np.asarray(matches0)
    idx = np.flatnonzero(m >= 0)
    return np.stack([idx, m[idx]], axis=1).astype(np.int64)
