"""LF-Net's losses (Ono et al., NeurIPS 2018), as pure functions of maps and descriptors.

Two branches look at the two views of a pair; branch ``j`` gives the targets and gets no
gradient from them (stop-gradient). With ``w`` the ground-truth warp from view ``i`` to
view ``j`` and ``known`` its valid pixels:

- *score*: ``sum_known (S_i - g(S_j o w))^2 / |known|``, where ``g`` cleans the warped
  score map: hard non-maximum suppression, the top-K peaks, each spread by a Gaussian of
  peak 1 (the reference: 5x5 NMS, K = 512, a 15x15 Gaussian of sigma 0.5), clipped at 1;
- *orientation*: ``|o_i - R(-da) o_j(w)|^2`` over known pixels, ``o`` the unit (cos, sin)
  map and ``da`` the angle the warp turns the neighbourhood by;
- *scale*: ``(log s_i - clip(log s_j(w) - log ds))^2``, ``ds`` the warp's local zoom;
- *pair*: ``|D(P_i) - D(P_j)|^2`` between the descriptors of each keypoint's patch in view
  ``i`` and of the patch at its warped position in view ``j`` (scale and orientation read
  from view ``j``'s maps), with the descriptor network frozen, so that the detector learns
  to pick places, scales and orientations the descriptor can match;
- *triplet*: ``max(0, margin + |a - p|^2 - |a - n|^2)`` for the descriptor network, with
  the negative drawn at random from the ``pickup`` nearest descriptors of the other view
  whose keypoints lie farther than ``geom_thresh`` pixels from the positive's; ``pickup``
  shrinks from 64 by 0.9 every 1000 steps down to 5.

The detector is trained by ``score + 0.01 pair + 0.1 orientation + 0.1 scale``, the
descriptor by the triplet loss alone (the paper's two optimisers; here one optimiser
over disjoint gradients). The orientation and scale losses are dense and symmetrised, as is
the score loss.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

DEFAULT_CONF: dict[str, Any] = {
    "score_weight": 1.0,
    "pair_weight": 0.01,
    "orientation_weight": 0.1,
    "scale_weight": 0.1,
    "triplet_weight": 1.0,
    "target_top_k": 512,  # peaks kept in the cleaned target score map (reference: 512 at 256^2)
    "target_nms": 5,
    "target_window": 15,  # Gaussian spread of each peak
    "target_sigma": 0.5,
    "train_top_k": 128,  # keypoints per image whose patches train the pair and triplet terms
    "margin": 1.0,
    "geom_thresh": 16.0,  # pixels; the reference's 32 at 256^2 crops
    "pickup_start": 64,
    "pickup_decay": 0.9,  # per 1000 steps
    "pickup_min": 5,
}


def nms_mask(score: torch.Tensor, window: int) -> torch.Tensor:
    """Pixels of ``score`` ``(B, H, W)`` that are the maximum of their ``window`` x
    ``window`` neighbourhood and positive."""
    peak = F.max_pool2d(score[:, None], window, stride=1, padding=window // 2)[:, 0]
    return (score == peak) & (score > 0)


def top_k_peaks(score: torch.Tensor, k: int, window: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` strongest NMS peaks of each map: integer xy ``(B, k, 2)`` and a validity
    mask ``(B, k)`` (fewer peaks than ``k``)."""
    b, h, w = score.shape
    masked = torch.where(nms_mask(score, window), score, torch.full_like(score, -1.0))
    k = min(k, h * w)
    values, index = masked.flatten(1).topk(k, dim=1)
    xy = torch.stack([index % w, torch.div(index, w, rounding_mode="floor")], -1)
    return xy, values > 0


def clean_target(
    warped: torch.Tensor, known: torch.Tensor, k: int, nms: int, window: int, sigma: float
) -> torch.Tensor:
    """``g``: the top-``k`` NMS peaks of ``warped`` (B, H, W) (inside ``known``), each
    a Gaussian of peak 1, clipped at 1."""
    b, h, w = warped.shape
    xy, valid = top_k_peaks(torch.where(known, warped, torch.zeros_like(warped)), k, nms)
    peaks = torch.zeros_like(warped).flatten(1)
    flat = xy[..., 1] * w + xy[..., 0]
    peaks.scatter_(1, flat, valid.to(warped.dtype))
    r = torch.arange(window, dtype=warped.dtype, device=warped.device) - window // 2
    g = torch.exp(-(r**2) / (2 * sigma**2))
    kernel = (g[:, None] * g[None, :])[None, None]
    spread = F.conv2d(peaks.reshape(b, 1, h, w), kernel, padding=window // 2)[:, 0]
    return spread.clamp(max=1.0)


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` over ``mask`` (a zero that keeps the graph when it is empty)."""
    m = mask.to(values.dtype)
    return (values * m).sum() / m.sum().clamp_min(1.0)


def score_loss(score: torch.Tensor, target: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
    return masked_mean((score - target.detach()) ** 2, known)


def rotate(vectors: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    """Turn 2-vectors ``(..., 2)`` by ``angle`` ``(...)`` radians (image xy, y down)."""
    c, s = torch.cos(angle), torch.sin(angle)
    x, y = vectors[..., 0], vectors[..., 1]
    return torch.stack([c * x - s * y, s * x + c * y], -1)


def orientation_loss(
    ori: torch.Tensor, ori_other: torch.Tensor, angle: torch.Tensor, known: torch.Tensor
) -> torch.Tensor:
    """``ori`` ``(B, N, 2)`` against ``ori_other`` (the other view's at the warped points)
    turned back by the warp's ``angle`` ``(B, N)``."""
    target = rotate(ori_other.detach(), -angle)
    return masked_mean(((ori - target) ** 2).sum(-1), known)


def scale_loss(
    scale: torch.Tensor,
    scale_other: torch.Tensor,
    zoom: torch.Tensor,
    known: torch.Tensor,
    bounds: tuple[float, float],
) -> torch.Tensor:
    """Log-scale difference to the other view's scale divided by the warp's local ``zoom``
    (clipped to the model's scale range)."""
    lo, hi = math.log(bounds[0]), math.log(bounds[1])
    target = (scale_other.detach().clamp_min(1e-6).log() - zoom.clamp_min(1e-6).log()).clamp(lo, hi)
    return masked_mean((scale.clamp_min(1e-6).log() - target) ** 2, known)


def pickup(step: int, conf: dict[str, Any]) -> int:
    """How many nearest candidates a random hard negative is drawn from at ``step``."""
    n = int(conf["pickup_start"] * float(conf["pickup_decay"]) ** (step / 1000.0))
    return max(n, int(conf["pickup_min"]))


def triplet_loss(
    anchor: torch.Tensor,
    positive: torch.Tensor,
    positions: torch.Tensor,
    valid: torch.Tensor,
    conf: dict[str, Any],
    step: int,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Triplet loss over the keypoints of one pair.

    Args:
        anchor: ``(K, D)`` descriptors in view i; ``positive``: ``(K, D)`` at the warped
            positions in view j.
        positions: ``(K, 2)`` the positives' xy in view j (for the geometric exclusion).
        valid: ``(K,)`` keypoints with a known, inside correspondence.
        step: training step (the negative pool and the random draw depend on it).
    """
    ids = valid.nonzero()[:, 0]
    if len(ids) < 2:
        zero = (anchor.sum() + positive.sum()) * 0.0
        return zero, {}
    a, p, xy = anchor[ids], positive[ids], positions[ids]
    d = torch.cdist(a, p) ** 2  # squared L2 between every anchor and every positive
    d_pos = d.diagonal()
    far = torch.cdist(xy, xy) > float(conf["geom_thresh"])
    candidates = torch.where(far, d.detach(), torch.full_like(d, float("inf")))
    k = min(pickup(step, conf), len(ids) - 1)
    nearest = candidates.topk(k, dim=1, largest=False).indices  # (K, k)
    usable = torch.isfinite(candidates.gather(1, nearest))
    gen = torch.Generator().manual_seed(int(step))
    pick = torch.randint(0, k, (len(ids),), generator=gen).to(nearest.device)
    neg_index = nearest.gather(1, pick[:, None])[:, 0]
    ok = usable.gather(1, pick[:, None])[:, 0]
    d_neg = d.gather(1, neg_index[:, None])[:, 0]
    loss = masked_mean(F.relu(float(conf["margin"]) + d_pos - d_neg), ok)
    nearest_far = candidates.min(1).values
    metrics = {
        "positive": d_pos.detach().mean(),
        "negative": d_neg.detach()[ok].mean() if ok.any() else d_pos.new_zeros(()),
        # the positive is nearer than every descriptor of a far keypoint
        "descriptor_accuracy": (d_pos.detach() < nearest_far).float().mean(),
    }
    return loss, metrics


def pair_loss(desc: torch.Tensor, desc_other: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Squared distance between the (frozen-network) descriptors of corresponding patches."""
    return masked_mean(((desc - desc_other) ** 2).sum(-1), valid)
