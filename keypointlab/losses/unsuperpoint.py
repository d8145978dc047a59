"""UnsuperPoint losses (Christiansen et al. 2019) as pure functions.

Branch A of the paper is our view 0 and branch B is view 1 (the warp of view 0 by
``H_0to1``): view-0 keypoints are warped into view 1 with ``H_0to1`` and those landing
outside view 1 are masked out of every correspondence term.

Terms (weights are the paper's, :data:`DEFAULT_CONF`):

- point pairs: every valid view-0 point is paired with its nearest view-1 point when they
  are at most ``correspondence_threshold`` (4) px apart;
- ``position``: mean pair distance ``d`` (``alpha_position`` = 1);
- ``score``: mean of ``(s_A - s_B)^2`` over pairs (``alpha_score`` = 2);
- ``usp`` (unsupervised point / matching term): mean of ``(s_A + s_B) / 2 * (d - mean d)``,
  with ``mean d`` taken over the pairs of the same image;
- ``uni_xy``: for each image and axis, the sorted relative positions against the uniform
  quantiles ``(i - 1) / (M - 1)``, squared and averaged; x + y, averaged over images of both
  views (``alpha_uni_xy`` = 100);
- ``descriptor``: SuperPoint's hinge loss over every (view-0 point, view-1 point) pair,
  ``lambda_d * c * max(0, m_p - f_a.f_b) + (1 - c) * max(0, f_a.f_b - m_n)`` with
  ``c = 1`` when the warped view-0 point is within ``descriptor_threshold`` (8) px of the
  view-1 point (``lambda_d`` = 250, ``m_p`` = 1, ``m_n`` = 0.2, ``alpha_desc`` = 0.001);
- ``descriptor_loss: infonce`` (not the paper's; off by default): instead of the hinge,
  KP2D's cross-entropy of each valid view-0 descriptor over the view-1 descriptor map
  sampled at every warped view-0 point (its own warped point is the class; points within
  4 px are left out), weighted by ``alpha_desc_infonce``;
- ``decorrelation``: squared off-diagonal Pearson correlations between descriptor
  dimensions over an image's points, for both views (``alpha_decorr`` = 0.03).

``total = alpha_usp * (alpha_position * position + alpha_score * score + usp)
+ alpha_uni_xy * uni_xy + alpha_desc * descriptor + alpha_decorr * decorrelation``
(the paper's grouping: ``alpha_usp`` weighs the three point-pair terms together; with the
infonce option ``alpha_desc_infonce`` takes the place of ``alpha_desc``).

Interpretations of the paper (which writes plain sums): each single sum is divided by its
number of terms (a mean), and each double sum (descriptor pairs, correlation matrix) is
summed over the partner and averaged over the anchor (a view-0 point; a descriptor
dimension). This keeps the paper's relative weighting at a given image size while making
the loss independent of the image size. Descriptors are the descriptor map bilinearly
sampled at the (detached) keypoints and L2-normalised, as at inference; the paper's
decorrelation sums raw correlations ``R_ij``, which lets positive and negative
correlations cancel, so the squares ``R_ij^2`` are used instead.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from keypointlab.geometry.groundtruth import GroundTruth, as_ground_truth, finite_points
from keypointlab.geometry.keypoints import border_mask, nearest_points, sample_descriptors
from keypointlab.losses import loss_conf
from keypointlab.losses.kp2d import infonce_descriptor_loss

DEFAULT_CONF: dict[str, Any] = {
    "alpha_usp": 1.0,
    "alpha_position": 1.0,
    "alpha_score": 2.0,
    "alpha_uni_xy": 100.0,
    "alpha_desc": 0.001,
    "alpha_decorr": 0.03,
    "lambda_d": 250.0,
    "margin_positive": 1.0,
    "margin_negative": 0.2,
    "correspondence_threshold": 4.0,  # px, point pairs of the point losses
    "descriptor_threshold": 8.0,  # px, positives of the descriptor loss
    "descriptor_loss": "hinge",  # the paper's; or "infonce" (see the module docstring)
    "alpha_desc_infonce": 1.0,  # weight of the infonce term when it is used
    "temperature": 0.05,  # infonce only
    "relax_field": 4.0,  # px, infonce only: neighbours left out of the softmax
}


def flatten_map(x: torch.Tensor) -> torch.Tensor:
    """``(B, C, Hc, Wc)`` map to ``(B, N, C)``."""
    return x.flatten(2).transpose(1, 2)


def associate(
    kp0_warped: torch.Tensor, kp1: torch.Tensor, inside: torch.Tensor, threshold: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pair each warped view-0 point with its nearest view-1 point.

    Args:
        kp0_warped: ``(B, N, 2)`` view-0 keypoints warped into view 1.
        kp1: ``(B, M, 2)`` view-1 keypoints.
        inside: ``(B, N)`` which warped points lie inside view 1.
        threshold: largest pair distance in pixels.

    Returns:
        ``(dist, idx, valid)``, each ``(B, N)``: distance to and index of the nearest view-1
        point, and which view-0 points form a pair.
    """
    dist, idx = nearest_points(kp0_warped, kp1)
    return dist, idx, inside & (dist <= threshold)


def _zero(x: torch.Tensor) -> torch.Tensor:
    return x.sum() * 0


def position_loss(dist: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean distance over the point pairs (0 without pairs)."""
    return dist[valid].mean() if valid.any() else _zero(dist)


def score_loss(s0: torch.Tensor, s1_paired: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of the paired scores."""
    return ((s0 - s1_paired)[valid] ** 2).mean() if valid.any() else _zero(s0)


def matching_loss(
    s0: torch.Tensor, s1_paired: torch.Tensor, dist: torch.Tensor, valid: torch.Tensor
) -> torch.Tensor:
    """UnsuperPoint's unsupervised point term, mean of ``(s0 + s1) / 2 * (d - mean d)``.

    ``mean d`` is the mean pair distance of each image: pairs closer than average are
    pushed to a high score, farther ones to a low score.
    """
    if not valid.any():
        return _zero(dist)
    w = valid.to(dist.dtype)
    d_mean = (dist * w).sum(1, keepdim=True) / w.sum(1, keepdim=True).clamp(min=1)
    term = (s0 + s1_paired) / 2 * (dist - d_mean)
    return term[valid].mean()


def uniform_loss(values: torch.Tensor) -> torch.Tensor:
    """Distance of ``(B, N)`` values in ``[0, 1]`` from a uniform distribution.

    Per row, the sorted values are compared with the uniform quantiles
    ``(i - 1) / (N - 1)``; returns the mean squared difference averaged over rows.
    """
    n = values.shape[-1]
    if n < 2:
        return _zero(values)
    target = torch.linspace(0.0, 1.0, n, dtype=values.dtype, device=values.device)
    return ((values.sort(dim=-1).values - target) ** 2).mean()


def descriptor_loss(
    desc0: torch.Tensor,
    desc1: torch.Tensor,
    kp0_warped: torch.Tensor,
    kp1: torch.Tensor,
    valid0: torch.Tensor,
    lambda_d: float = 250.0,
    margin_positive: float = 1.0,
    margin_negative: float = 0.2,
    threshold: float = 8.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Hinge loss over every (view-0, view-1) point pair.

    Args:
        desc0: ``(B, N, D)`` normalised view-0 descriptors.
        desc1: ``(B, M, D)`` normalised view-1 descriptors.
        kp0_warped: ``(B, N, 2)`` view-0 keypoints warped into view 1.
        kp1: ``(B, M, 2)`` view-1 keypoints.
        valid0: ``(B, N)`` which view-0 points take part (inside view 1).

    Returns:
        ``(loss, recall)``: the loss sums over the view-1 points and averages over the valid
        view-0 points; recall is the fraction of valid view-0 points with a positive whose
        most similar view-1 point is a positive.
    """
    dot = desc0 @ desc1.transpose(1, 2)  # (B, N, M)
    positive = torch.cdist(kp0_warped.detach(), kp1.detach()) <= threshold
    per_pair = torch.where(
        positive,
        lambda_d * F.relu(margin_positive - dot),
        F.relu(dot - margin_negative),
    )
    per_anchor = per_pair.sum(-1)
    loss = per_anchor[valid0].mean() if valid0.any() else _zero(dot)
    has_pos = valid0 & positive.any(-1)
    best = dot.argmax(-1, keepdim=True)
    hit = positive.gather(-1, best)[..., 0] & has_pos
    recall = hit.sum() / has_pos.sum().clamp(min=1)
    return loss, recall.detach().to(dot.dtype)


def decorrelation_loss(desc: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Correlation between descriptor dimensions, ``(B, N, D)`` -> scalar.

    For each image, ``R`` is the ``D x D`` Pearson correlation of the dimensions over the
    ``N`` points; the loss sums ``R_ij^2`` over ``j != i``, averages over ``i`` and images.
    """
    d = desc.shape[-1]
    if d < 2 or desc.shape[1] < 2:
        return _zero(desc)
    centred = desc - desc.mean(dim=1, keepdim=True)
    z = centred / (centred.norm(dim=1, keepdim=True) + eps)
    r = z.transpose(1, 2) @ z  # (B, D, D)
    off = r.pow(2).sum((1, 2)) - r.diagonal(dim1=1, dim2=2).pow(2).sum(-1)
    return (off / d).mean()


def unsuperpoint_loss(
    pred0: dict[str, torch.Tensor],
    pred1: dict[str, torch.Tensor],
    gt: GroundTruth | torch.Tensor,
    image_size: tuple[int, int],
    conf: dict[str, Any] | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """All UnsuperPoint terms for a batch of pairs.

    Args:
        pred0, pred1: UnsuperPoint outputs (``scores``, ``keypoints``, ``descriptors``,
            ``relative``) for view 0 (branch A) and view 1 (branch B).
        gt: the pair's ground truth (or ``(B, 3, 3)`` homographies ``H_0to1``).
        image_size: ``(H, W)`` of the views.
        conf: overrides of :data:`DEFAULT_CONF`.

    Returns:
        ``(losses, metrics)``; ``losses["total"]`` is the weighted sum of the other
        (unweighted) entries.
    """
    c = loss_conf(conf, DEFAULT_CONF, "unsuperpoint_loss")
    kp0, kp1 = flatten_map(pred0["keypoints"]), flatten_map(pred1["keypoints"])
    s0, s1 = pred0["scores"].flatten(1), pred1["scores"].flatten(1)
    kp0_w, known = as_ground_truth(gt).warp_0to1(kp0)
    kp0_w = finite_points(kp0_w)
    inside = border_mask(kp0_w, image_size, 0) & known
    dist, idx, valid = associate(kp0_w, kp1, inside, c["correspondence_threshold"])
    s1_paired = s1.gather(1, idx)

    losses: dict[str, torch.Tensor] = {}
    losses["position"] = position_loss(dist, valid)
    losses["score"] = score_loss(s0, s1_paired, valid)
    losses["usp"] = matching_loss(s0, s1_paired, dist, valid)
    rel = torch.cat([pred0["relative"], pred1["relative"]], dim=0).flatten(2)  # (2B, 2, N)
    losses["uni_xy"] = uniform_loss(rel[:, 0]) + uniform_loss(rel[:, 1])

    desc0 = sample_descriptors(pred0["descriptors"], kp0.detach(), image_size)
    desc1 = sample_descriptors(pred1["descriptors"], kp1.detach(), image_size)
    if c["descriptor_loss"] == "hinge":
        losses["descriptor"], recall = descriptor_loss(
            desc0,
            desc1,
            kp0_w,
            kp1,
            inside,
            c["lambda_d"],
            c["margin_positive"],
            c["margin_negative"],
            c["descriptor_threshold"],
        )
        desc_weight = c["alpha_desc"]
    elif c["descriptor_loss"] == "infonce":
        positive = sample_descriptors(pred1["descriptors"], kp0_w.detach(), image_size)
        losses["descriptor"], recall = infonce_descriptor_loss(
            desc0, positive, kp0_w.detach(), inside, c["temperature"], c["relax_field"]
        )
        desc_weight = c["alpha_desc_infonce"]
    else:
        raise KeyError(f"unknown descriptor_loss {c['descriptor_loss']!r}; use hinge or infonce")
    losses["decorrelation"] = decorrelation_loss(torch.cat([desc0, desc1], dim=0))

    point_terms = (
        c["alpha_position"] * losses["position"]
        + c["alpha_score"] * losses["score"]
        + losses["usp"]
    )
    losses["total"] = (
        c["alpha_usp"] * point_terms
        + c["alpha_uni_xy"] * losses["uni_xy"]
        + desc_weight * losses["descriptor"]
        + c["alpha_decorr"] * losses["decorrelation"]
    )
    metrics = {
        "recall": recall,
        "valid": valid.float().mean().detach(),
        "distance": dist[valid].mean().detach() if valid.any() else dist.sum().detach() * 0,
    }
    return losses, metrics
