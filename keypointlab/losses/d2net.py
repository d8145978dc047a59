"""D2-Net's detection-weighted margin ranking loss (Dusmanu et al. 2019, eq. 5-6).

For every cell ``c`` of view 0's feature map whose centre has a known correspondence inside
view 1's map (from the pair's ground truth: a homography or depth + pose), with
``d0 = D0(c)``, ``d1 = D1(c')`` (bilinear at the warped position ``c'``), all descriptors
L2-normalised and distances squared Euclidean (``2 - 2 d . d'``):

- ``p(c) = |d0 - d1|^2``, the positive distance;
- ``n(c) = min(min_k |d0 - D1(k)|^2, min_k |d1 - D0(k)|^2)``, the hardest negative, over
  the cells ``k`` of either map farther than ``safe_radius`` cells (max-norm, from the
  rounded ``c'`` in view 1 and from ``c`` in view 0);
- ``m(c) = max(0, margin + p(c) - n(c))``;
- ``loss = sum_c s0(c) s1(c') m(c) / sum_c s0(c) s1(c')`` with ``s`` the soft detection
  scores (view 1's at the rounded ``c'``), averaged over the pairs of the batch that have at
  least ``min_correspondences`` correspondences.

The paper's values: margin 1, safe radius 4 cells, pairs with fewer than 128
correspondences skipped.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from keypointlab.geometry.groundtruth import GroundTruth, as_ground_truth, finite_points
from keypointlab.geometry.keypoints import cell_grid, cells_to_pixels, pixels_to_cells, sample_map

DEFAULT_CONF: dict[str, Any] = {
    "margin": 1.0,
    "safe_radius": 4,  # feature-map cells (max-norm)
    "min_correspondences": 128,  # pairs with fewer are skipped
    "cell": 4,  # feature-map cell in image pixels
}
EXCLUDED = 10.0  # added to the distance of cells inside the safe radius (distances <= 4)


def correspondences(
    shape0: tuple[int, int], shape1: tuple[int, int], gt: GroundTruth | torch.Tensor,
    batch: int, cell: int, device: Any, dtype: Any = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every view-0 cell's correspondence in view 1's feature map.

    Returns ``grid0`` ``(N, 2)`` view-0 cells (map xy, raster order), ``f1`` ``(B, N, 2)``
    their warped positions in view 1's map (cell units, clamped to it) and ``valid``
    ``(B, N)``: known and inside view 1's map ``[0, w1 - 1] x [0, h1 - 1]``.
    """
    grid0 = cell_grid(*shape0, device=device, dtype=dtype)
    px0 = cells_to_pixels(grid0, cell).expand(batch, -1, -1)
    px1, known = as_ground_truth(gt).warp_0to1(px0)
    f1 = pixels_to_cells(finite_points(px1), cell)
    h1, w1 = shape1
    x, y, eps = f1[..., 0], f1[..., 1], 1e-6  # round-off of a warp onto the map's edge
    inside = (x >= -eps) & (x <= w1 - 1 + eps) & (y >= -eps) & (y <= h1 - 1 + eps)
    f1 = torch.stack([x.clamp(0, w1 - 1), y.clamp(0, h1 - 1)], dim=-1)
    return grid0, f1, known & inside


def hardest_negative(
    anchors: torch.Tensor, candidates: torch.Tensor, anchor_cells: torch.Tensor,
    shape: tuple[int, int], safe_radius: float,
) -> torch.Tensor:
    """``(M,)`` smallest squared distance from each anchor ``(M, D)`` to a cell of a map
    ``(h * w, D)`` (``candidates``, raster order, ``shape = (h, w)``) more than
    ``safe_radius`` cells (max-norm) from the anchor's cell ``anchor_cells`` ``(M, 2)`` xy."""
    h, w = shape
    with torch.no_grad():  # find the hardest; its distance is recomputed with gradient
        dist = 2.0 - 2.0 * anchors @ candidates.T
        xs = torch.arange(w, device=anchors.device, dtype=anchor_cells.dtype)
        ys = torch.arange(h, device=anchors.device, dtype=anchor_cells.dtype)
        near_x = (anchor_cells[:, :1] - xs).abs() <= safe_radius  # (M, w)
        near_y = (anchor_cells[:, 1:] - ys).abs() <= safe_radius  # (M, h)
        near = (near_y[:, :, None] & near_x[:, None, :]).reshape(len(anchors), h * w)
        hardest = (dist + near.to(dist.dtype) * EXCLUDED).argmin(dim=1)
    return 2.0 - 2.0 * (anchors * candidates[hardest]).sum(dim=1)


def d2net_loss(
    desc0: torch.Tensor,
    desc1: torch.Tensor,
    scores0: torch.Tensor,
    scores1: torch.Tensor,
    gt: GroundTruth | torch.Tensor,
    conf: dict[str, Any],
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The loss of a batch of pairs (see the module docstring).

    Args:
        desc0, desc1: ``(B, D, h, w)`` L2-normalised dense descriptors of view 0 and 1.
        scores0, scores1: ``(B, h, w)`` soft detection scores.
        gt: the pairs' ground truth (or ``(B, 3, 3)`` homographies ``H_0to1``).
        conf: :data:`DEFAULT_CONF` merged with the config's ``loss`` section.
    """
    b, _, h0, w0 = desc0.shape
    h1, w1 = desc1.shape[-2:]
    grid0, f1, valid = correspondences(
        (h0, w0), (h1, w1), gt, b, int(conf["cell"]), desc0.device, desc0.dtype
    )
    d1_at = sample_map(desc1, f1)  # (B, N, D)
    radius = float(conf["safe_radius"])
    losses, pos_all, neg_all, acc_all, counts = [], [], [], [], []
    for i in range(b):
        ids = torch.nonzero(valid[i], as_tuple=True)[0]
        counts.append(float(len(ids)))
        if len(ids) < int(conf["min_correspondences"]) or len(ids) == 0:
            continue
        all0 = desc0[i].flatten(1).T  # (N0, D)
        all1 = desc1[i].flatten(1).T
        d0 = all0[ids]
        d1 = F.normalize(d1_at[i, ids], dim=1)
        cells1 = torch.round(f1[i, ids])
        positive = 2.0 - 2.0 * (d0 * d1).sum(dim=1)
        negative = torch.minimum(
            hardest_negative(d0, all1, cells1, (h1, w1), radius),
            hardest_negative(d1, all0, grid0[ids], (h0, w0), radius),
        )
        cx, cy = cells1[:, 0].long(), cells1[:, 1].long()
        weight = scores0[i].flatten()[ids] * scores1[i][cy, cx]
        margin = F.relu(float(conf["margin"]) + positive - negative)
        losses.append((weight * margin).sum() / weight.sum().clamp_min(1e-12))
        pos_all.append(positive.detach().mean())
        neg_all.append(negative.detach().mean())
        acc_all.append((positive < negative).float().detach().mean())
    if losses:
        total = torch.stack(losses).mean()
        metrics = {
            "positive": torch.stack(pos_all).mean(),
            "negative": torch.stack(neg_all).mean(),
            "descriptor_accuracy": torch.stack(acc_all).mean(),
        }
    else:  # no pair with enough correspondences: a zero that keeps the graph
        total = (desc0.sum() + desc1.sum() + scores0.sum() + scores1.sum()) * 0.0
        metrics = {}
    metrics["pairs_used"] = desc0.new_tensor(float(len(losses)))
    metrics["correspondences"] = desc0.new_tensor(sum(counts) / max(len(counts), 1))
    return {"total": total, "d2": total.detach()}, metrics
