"""LIFT's losses (Yi et al., ECCV 2016), as pure functions of descriptors and score maps.

LIFT is trained on quadruplets of patches: ``P1`` and ``P2`` show the same scene point in
two views, ``P3`` another point, ``P4`` a place with no keypoint. With ``h`` the descriptor
network and ``d(a, b) = |h(a) - h(b)|_2``:

- *descriptor* (stage 1): ``d(P1, P2)`` for positive pairs plus the hinge
  ``max(0, C - d(P1, P3))`` for negative pairs, with hard negative mining as in the paper
  (after Simo-Serra et al.'s DeepDesc): of all the negative pairs formed in a batch only
  the hardest ``hard_fraction`` (the smallest distances; DeepDesc's mining ratio 4 keeps a
  quarter) are back-propagated;
- *orientation* (stage 2): ``d(G(P1, theta1), G(P2, theta2))`` between the descriptors of
  the two patches turned by the estimated orientations, the descriptor frozen: the
  estimator learns the angles that make the descriptor match, no ground-truth angle is
  used;
- *detector* (stage 3): ``gamma * L_class(P1..P4) + L_pair(P1, P2)``, with
  ``L_class = max(0, 1 - softmax(S) y)^2`` (``y = +1`` for ``P1, P2, P3``, ``-1`` for
  ``P4``; ``softmax`` the log-mean-exponential of the score map ``S``, strength 10 as in
  tf-lift; positives and negatives weigh half each, as tf-lift balances them) and
  ``L_pair`` the descriptor distance between the patches cropped at the soft-argmax
  locations, turned by the (frozen) orientation estimator and described by the (frozen)
  descriptor.

The margin ``C`` is 1 here because the descriptors are L2-normalised (distances in
``[0, 2]``; tf-lift's ``alpha_margin`` 4 is for unnormalised ones). ``gamma`` is 0.1: the
classification term gives every patch a score near 1 for keypoints and -1 elsewhere while
the pair term, of the order of the descriptor distance, moves the locations.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

DEFAULT_CONF: dict[str, Any] = {
    # each term is computed only when its weight is positive (the stages select one)
    "descriptor_weight": 1.0,
    "orientation_weight": 1.0,
    "detector_weight": 1.0,
    "margin": 1.0,  # C of the negative hinge (L2-normalised descriptors)
    "hard_fraction": 0.25,  # hardest share of the negative pairs kept (mining ratio 4)
    "gamma": 0.1,  # weight of L_class in the detector loss
    "softmax_strength": 10.0,  # of the log-mean-exp score (tf-lift's 10)
    # training quadruplets (keypointlab.models.lift.sample_quadruplets)
    "sift_features": 300,  # SIFT keypoints detected per view
    "pairs_per_image": 16,  # repeatable keypoints (P1, P2) used per image pair
    "match_px": 2.0,  # a view-0 SIFT keypoint is repeatable when its warp lands this
    "scale_tolerance": 1.5,  # close to a view-1 SIFT keypoint of consistent size
    "angle_tolerance": 0.5236,  # and SIFT orientation (radians, 30 degrees)
    "negative_px": 8.0,  # negatives and P4 are at least this far from the positives
}


def pair_distance(desc: torch.Tensor, desc_other: torch.Tensor) -> torch.Tensor:
    """``(N,)`` Euclidean distances between rows of ``desc`` and ``desc_other`` ``(N, D)``
    (a small epsilon keeps the gradient finite at 0)."""
    return torch.sqrt(((desc - desc_other) ** 2).sum(-1) + 1e-12)


def descriptor_loss(
    desc1: torch.Tensor,
    desc2: torch.Tensor,
    negatives: torch.Tensor,
    margin: float,
    hard_fraction: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Positive distance plus the hinge on the hardest negatives.

    Args:
        desc1: ``(K, D)`` descriptors of the ``P1`` patches; ``desc2``: ``(K, D)`` of their
            ``P2`` (row ``i`` of both is one scene point).
        negatives: ``(K, K)`` bool, which pairs ``(P1_i, P2_j)`` may serve as negatives
            (``i != j`` and far enough apart; the diagonal is ignored).
        margin: ``C``.
        hard_fraction: share of the allowed negative pairs kept, the ones of smallest
            distance (at least one).

    Returns:
        ``(mean d(P1_i, P2_i) + mean over the kept negatives of max(0, C - d), metrics)``.
    """
    k = desc1.shape[0]
    dist = torch.sqrt(((desc1[:, None] - desc2[None]) ** 2).sum(-1) + 1e-12)  # (K, K)
    positive = dist.diagonal()
    off = negatives & ~torch.eye(k, dtype=torch.bool, device=dist.device)
    pool = dist[off]
    loss = positive.mean()
    metrics = {"positive": positive.detach().mean()}
    if pool.numel():
        keep = max(1, math.ceil(hard_fraction * pool.numel()))
        hardest = pool.topk(keep, largest=False).values
        loss = loss + F.relu(margin - hardest).mean()
        nearest = torch.where(off, dist, torch.full_like(dist, float("inf"))).min(1).values
        metrics["negative"] = hardest.detach().mean()
        metrics["descriptor_accuracy"] = (positive.detach() < nearest.detach()).float().mean()
    return loss, metrics


def orientation_loss(desc1: torch.Tensor, desc2: torch.Tensor) -> torch.Tensor:
    """Mean distance between the (frozen-network) descriptors ``(K, D)`` of the two oriented
    patches of each positive pair."""
    return pair_distance(desc1, desc2).mean()


def log_mean_exp(score: torch.Tensor, strength: float) -> torch.Tensor:
    """LIFT's soft maximum of each score map ``(N, h, w)``:
    ``log(mean(exp(strength * S))) / strength``, ``(N,)``."""
    flat = strength * score.flatten(1)
    return (torch.logsumexp(flat, dim=1) - math.log(flat.shape[1])) / strength


def class_loss(positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
    """``L_class``: ``max(0, 1 - s y)^2`` of the soft-max scores of keypoint patches
    ``positive`` (``y = 1``, any shape) and of patches without keypoint ``negative``
    (``y = -1``), each kind weighing half."""
    pos = F.relu(1.0 - positive).pow(2).mean()
    neg = F.relu(1.0 + negative).pow(2).mean()
    return 0.5 * pos + 0.5 * neg


def detector_loss(
    scores: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
    desc1: torch.Tensor,
    desc2: torch.Tensor,
    gamma: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``gamma * L_class(P1..P4) + L_pair(P1, P2)``.

    Args:
        scores: soft-max scores ``(K,)`` of the ``P1``, ``P2``, ``P3`` and ``P4`` patches
            (:func:`log_mean_exp` of their score maps).
        desc1, desc2: ``(K, D)`` descriptors of ``P1`` and ``P2`` cropped at the
            soft-argmax locations (orientation and descriptor frozen).
    """
    s1, s2, s3, s4 = scores
    classification = class_loss(torch.cat([s1, s2, s3]), s4)
    pair = pair_distance(desc1, desc2).mean()
    metrics = {
        "classification": classification.detach(),
        "pair": pair.detach(),
        "score_positive": torch.cat([s1, s2, s3]).detach().mean(),
        "score_negative": s4.detach().mean(),
    }
    return gamma * classification + pair, metrics
