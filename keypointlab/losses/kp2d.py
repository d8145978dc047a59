"""KP2D losses (Tang et al. 2020) as pure functions.

As in KP2D, the *source* is the warped view and the *target* the original view, so every
source keypoint warps into the target image: with our pairs (view 1 = view 0 warped by
``H_0to1``) the source is view 1 and ``H_src_to_tgt = inv(H_0to1)``.

Terms (defaults follow KP2D's code):
- location: mean distance from each warped source keypoint to the nearest target keypoint,
  over pairs closer than ``max_distance`` (4 px), away from the border cells;
- descriptor: triplet loss with the hardest negative outside ``relax_field`` px, margin 0.2
  (or ``"infonce"``: cross-entropy over the other view's points, an option that trains more
  robustly from scratch at small scale). From scratch, hardest negatives can collapse the
  descriptors (every distance equal, the loss stuck at the margin); with
  ``descriptor_warmup_steps = N`` the first ``N`` steps use the cross-entropy instead, so
  the triplet loss starts from descriptors that already separate points;
- score: UnsuperPoint-style ``(s_src + s_tgt) * (d - mean d)`` plus the squared difference
  between the source score and the target score map resampled at the warped point;
- IO-Net: MSE between the inlier prediction of the top-k point pairs and +1/-1 labels
  (inlier when the pair is closer than ``max_distance`` px); gradients reach KeyPointNet
  through the pairs' coordinates and descriptor distances.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from keypointlab.geometry.groundtruth import GroundTruth, as_ground_truth, finite_points
from keypointlab.geometry.keypoints import (
    border_mask,
    nearest_points,
    normalize_coords,
    sample_descriptors,
)
from keypointlab.losses import loss_conf

DEFAULT_CONF: dict[str, Any] = {
    "location_weight": 1.0,
    "descriptor_weight": 4.0,  # KP2D: weight 2.0, doubled inside its loss
    "score_weight": 1.0,
    "io_weight": 1.0,
    "descriptor_loss": "triplet",  # or "infonce"
    "descriptor_warmup_steps": 0,  # steps of "infonce" before descriptor_loss takes over
    "margin": 0.2,
    "temperature": 0.05,  # infonce only
    "relax_field": 4.0,
    "max_distance": 4.0,
    "border_cells": 1,
    "io_top_k": 300,
}


def flatten_points(kp: torch.Tensor) -> torch.Tensor:
    """``(B, 2, Hc, Wc)`` keypoint map to ``(B, N, 2)``."""
    return kp.flatten(2).transpose(1, 2)


def location_loss(dist: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean distance over valid associations (0 if none, still part of the graph)."""
    return dist[valid].mean() if valid.any() else dist[valid].sum()


def within_relax_field(positions: torch.Tensor, relax_field: float) -> torch.Tensor:
    """``(B, N, N)`` mask of point pairs no more than ``relax_field`` px apart in x and y."""
    delta = (positions.unsqueeze(2) - positions.unsqueeze(1)).abs()
    return (delta[..., 0] <= relax_field) & (delta[..., 1] <= relax_field)


def triplet_descriptor_loss(
    anchor: torch.Tensor,
    positive: torch.Tensor,
    positions: torch.Tensor,
    valid: torch.Tensor,
    margin: float = 0.2,
    relax_field: float = 4.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Hardest-negative triplet loss (per-pixel, as in KP2D / Tian et al.).

    Args:
        anchor: ``(B, N, D)`` normalised source descriptors.
        positive: ``(B, N, D)`` normalised target descriptors at the warped source points.
        positions: ``(B, N, 2)`` warped source points (target pixels); negatives are the
            positives of other points more than ``relax_field`` px away in x or y.
        valid: ``(B, N)`` which anchors take part.

    Returns:
        ``(loss, recall)``: recall is the fraction of valid anchors whose nearest
        candidate is their own positive.
    """
    d = torch.cdist(anchor, positive)  # (B, N, N)
    near = within_relax_field(positions, relax_field)
    negatives_ok = ~near & valid.unsqueeze(1)
    d_neg = torch.where(negatives_ok, d, torch.full_like(d, 4.0)).min(dim=-1).values
    d_pos = d.diagonal(dim1=1, dim2=2)
    per_anchor = F.relu(d_pos - d_neg + margin)
    n = valid.sum().clamp(min=1)
    loss = (per_anchor * valid).sum() / n
    masked = torch.where(valid.unsqueeze(1), d, torch.full_like(d, 4.0))
    own = masked.argmin(dim=-1) == torch.arange(d.shape[-1], device=d.device)
    recall = (own & valid).sum() / n
    return loss, recall.detach()


def infonce_descriptor_loss(
    anchor: torch.Tensor,
    positive: torch.Tensor,
    positions: torch.Tensor,
    valid: torch.Tensor,
    temperature: float = 0.05,
    relax_field: float = 4.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy of each anchor over all valid positives (own positive = the class);
    other points within ``relax_field`` px are left out of the softmax."""
    sim = anchor @ positive.transpose(1, 2) / temperature  # (B, N, N)
    near = within_relax_field(positions, relax_field)
    eye = torch.eye(sim.shape[-1], dtype=torch.bool, device=sim.device).unsqueeze(0)
    keep = (~near | eye) & valid.unsqueeze(1)
    sim = sim.masked_fill(~keep, float("-inf"))
    logp = sim.log_softmax(dim=-1).diagonal(dim1=1, dim2=2)
    n = valid.sum().clamp(min=1)
    loss = -(torch.where(valid, logp, torch.zeros_like(logp))).sum() / n
    own = sim.argmax(dim=-1) == torch.arange(sim.shape[-1], device=sim.device)
    return loss, ((own & valid).sum() / n).detach()


def score_loss(
    s_src: torch.Tensor,
    s_tgt_assoc: torch.Tensor,
    s_tgt_resampled: torch.Tensor,
    dist: torch.Tensor,
    valid: torch.Tensor,
    border: torch.Tensor,
) -> torch.Tensor:
    """UnsuperPoint score term over valid pairs plus 2x the score-consistency MSE."""
    if valid.any():
        d = dist[valid]
        usp = ((s_src[valid] + s_tgt_assoc[valid]) * (d - d.mean())).mean()
    else:  # zero, but still connected to the scores (DDP expects every gradient)
        usp = s_src.sum() * 0
    mse = F.mse_loss(s_tgt_resampled[border], s_src[border]) if border.any() else usp * 0
    return usp + 2.0 * mse


def io_loss(
    io_net: torch.nn.Module,
    kp_src: torch.Tensor,
    s_src: torch.Tensor,
    desc_src: torch.Tensor,
    kp_tgt: torch.Tensor,
    s_tgt: torch.Tensor,
    desc_tgt: torch.Tensor,
    warp_src_to_tgt: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    size: tuple[int, int],
    top_k: int,
    max_distance: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """IO-Net loss on the top-k source points and their descriptor matches among the top-k
    target points; ``warp_src_to_tgt`` is the ground truth's warp (points, known).
    Returns ``(loss, fraction of inliers)``."""
    k = min(top_k, kp_src.shape[1], kp_tgt.shape[1])
    i_src = s_src.topk(k, dim=1).indices
    i_tgt = s_tgt.topk(k, dim=1).indices
    p_src = kp_src.gather(1, i_src.unsqueeze(-1).expand(-1, -1, 2))
    p_tgt = kp_tgt.gather(1, i_tgt.unsqueeze(-1).expand(-1, -1, 2))
    d_src = desc_src.gather(1, i_src.unsqueeze(-1).expand(-1, -1, desc_src.shape[-1]))
    d_tgt = desc_tgt.gather(1, i_tgt.unsqueeze(-1).expand(-1, -1, desc_tgt.shape[-1]))
    dmat = torch.cdist(d_src, d_tgt)
    dmin, j = dmat.min(dim=-1)
    p_match = p_tgt.gather(1, j.unsqueeze(-1).expand(-1, -1, 2))
    pairs = torch.cat(
        [normalize_coords(p_src, size), normalize_coords(p_match, size), dmin.unsqueeze(-1)], dim=-1
    )
    pred = io_net(pairs.transpose(1, 2))
    warped, known = warp_src_to_tgt(p_src)
    err = (finite_points(warped) - p_match).norm(dim=-1)
    inlier = (err.detach() < max_distance) & known
    gt = inlier.float() * 2 - 1
    loss = F.mse_loss(pred, gt) if inlier.sum() > 10 else pred.sum() * 0
    return loss, inlier.float().mean()


def kp2d_loss(
    pred0: dict[str, torch.Tensor],
    pred1: dict[str, torch.Tensor],
    gt: GroundTruth | torch.Tensor,
    image_size: tuple[int, int],
    io_net: torch.nn.Module | None = None,
    conf: dict[str, Any] | None = None,
    step: int = 0,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """All KP2D terms for a batch of pairs.

    Args:
        pred0, pred1: KeyPointNet outputs for view 0 (target) and view 1 (source).
        gt: the pair's ground truth (or ``(B, 3, 3)`` homographies ``H_0to1``).
        image_size: ``(H, W)`` of the views.
        io_net: the IO-Net, or None to skip its term.
        conf: overrides of :data:`DEFAULT_CONF`.
        step: optimisation steps taken so far (for ``descriptor_warmup_steps``).

    Returns:
        ``(losses, metrics)``; ``losses["total"]`` is the weighted sum.
    """
    c = loss_conf(conf, DEFAULT_CONF, "kp2d_loss")
    src, tgt = pred1, pred0
    gt = as_ground_truth(gt)
    kp_src, kp_tgt = flatten_points(src["keypoints"]), flatten_points(tgt["keypoints"])
    s_src, s_tgt = src["scores"].flatten(1), tgt["scores"].flatten(1)
    kp_src_w, known = gt.warp_1to0(kp_src)
    kp_src_w = finite_points(kp_src_w)
    dist, idx = nearest_points(kp_src_w, kp_tgt)
    hc, wc = src["scores"].shape[-2:]
    cells = torch.zeros(hc, wc, dtype=torch.bool, device=dist.device)
    b = c["border_cells"]
    cells[b : hc - b, b : wc - b] = True
    border = cells.flatten().unsqueeze(0).expand_as(dist) & border_mask(kp_src_w, image_size, 0)
    border = border & known
    valid = (dist < c["max_distance"]) & border

    losses: dict[str, torch.Tensor] = {}
    losses["location"] = location_loss(dist, valid)

    desc_src = sample_descriptors(src["descriptors"], kp_src.detach(), image_size)
    desc_pos = sample_descriptors(tgt["descriptors"], kp_src_w.detach(), image_size)
    if c["descriptor_loss"] not in ("triplet", "infonce"):
        raise KeyError(f"unknown descriptor_loss {c['descriptor_loss']!r}; use triplet or infonce")
    if c["descriptor_loss"] == "infonce" or step < c["descriptor_warmup_steps"]:
        losses["descriptor"], recall = infonce_descriptor_loss(
            desc_src, desc_pos, kp_src_w.detach(), border, c["temperature"], c["relax_field"]
        )
    else:
        losses["descriptor"], recall = triplet_descriptor_loss(
            desc_src, desc_pos, kp_src_w.detach(), border, c["margin"], c["relax_field"]
        )

    s_tgt_assoc = s_tgt.gather(1, idx)
    grid = normalize_coords(kp_src_w.detach(), image_size).unsqueeze(1)
    s_tgt_res = F.grid_sample(tgt["scores"], grid, align_corners=True)[:, 0, 0]
    losses["score"] = score_loss(s_src, s_tgt_assoc, s_tgt_res, dist, valid, border)

    total = (
        c["location_weight"] * losses["location"]
        + c["descriptor_weight"] * losses["descriptor"]
        + c["score_weight"] * losses["score"]
    )
    metrics = {
        "recall": recall,
        "valid": valid.float().mean().detach(),
        "distance": dist[valid].mean().detach() if valid.any() else dist.sum() * 0,
    }
    if io_net is not None:
        desc_tgt = sample_descriptors(tgt["descriptors"], kp_tgt, image_size)
        losses["io"], metrics["io_inliers"] = io_loss(
            io_net,
            kp_src,
            s_src,
            desc_src,
            kp_tgt,
            s_tgt,
            desc_tgt,
            gt.warp_1to0,
            image_size,
            c["io_top_k"],
            c["max_distance"],
        )
        total = total + c["io_weight"] * losses["io"]
    losses["total"] = total
    return losses, metrics
