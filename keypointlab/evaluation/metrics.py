"""Per-pair metrics of the evaluation protocol (``shared/PROTOCOL.md``), as pure functions.

Every function takes the features of image 1 and image 2 (:class:`Features`, whose
``image_size`` gives each image's own bounds), the ground truth ``H`` mapping image 1 to
image 2, and the top-k. No function returns NaN: empty inputs give a defined value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from keypointlab.features.base import Features
from keypointlab.geometry import corner_error, inside_image, warp_points
from keypointlab.matching import descriptor_distances, estimate_homography, match_nn

MMA_THRESHOLDS = tuple(range(1, 11))


def _pairwise(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Euclidean distances ``(len(a), len(b))`` in float64."""
    return np.linalg.norm(a[:, None, :] - b[None, :, :], axis=-1)


def visible(f1: Features, f2: Features, H: np.ndarray) -> tuple[Features, Features]:
    """Points of image 1 whose warp by ``H`` lies inside image 2, and vice versa."""
    H_inv = np.linalg.inv(H)
    m1 = inside_image(warp_points(f1.keypoints, H), f2.image_size)
    m2 = inside_image(warp_points(f2.keypoints, H_inv), f1.image_size)
    return f1.select(m1), f2.select(m2)


def _mutual_nn(f1: Features, f2: Features) -> tuple[np.ndarray, np.ndarray]:
    """Index arrays ``(i, j)`` of mutual nearest neighbours (float64 L2 distances)."""
    m = match_nn(f1.descriptors.astype(np.float64), f2.descriptors.astype(np.float64)).numpy()
    i = np.flatnonzero(m >= 0)
    return i, m[i]


@dataclass
class Repeatability:
    """Repeatability of one pair and the localization error of its repeated points."""

    repeatability: float
    localization_error: float | None  # None when no point is repeated
    num_keypoints: tuple[int, int]


def repeatability(
    f1: Features, f2: Features, H: np.ndarray, top_k: int | None, threshold: float = 3.0
) -> Repeatability:
    """Repeatability and localization error (protocol definition).

    Visible points of each image are kept, then the top-k by score. With ``D`` the distances
    between warped image-1 points and image-2 points, ``c1 = #{i: min_j D_ij <= t}``,
    ``c2 = #{j: min_i D_ij <= t}`` and ``rep = (c1 + c2) / (N1 + N2)`` (0 when both are
    empty). The localization error is the mean of the minimum distances ``<= t`` of both
    directions, or ``None`` if there are none.
    """
    v1, v2 = visible(f1, f2, H)
    v1, v2 = v1.top_k(top_k), v2.top_k(top_k)
    n1, n2 = len(v1), len(v2)
    if n1 == 0 or n2 == 0:
        return Repeatability(0.0, None, (n1, n2))
    D = _pairwise(warp_points(v1.keypoints, H), v2.keypoints)
    min1, min2 = D.min(axis=1), D.min(axis=0)
    close = np.concatenate([min1[min1 <= threshold], min2[min2 <= threshold]])
    rep = len(close) / (n1 + n2)
    loc = float(close.mean()) if len(close) else None
    return Repeatability(float(rep), loc, (n1, n2))


def homography_corner_error(
    f1: Features,
    f2: Features,
    H: np.ndarray,
    top_k: int | None,
    ransac_threshold: float = 3.0,
    max_iters: int = 5000,
) -> tuple[float, int]:
    """Mean corner error of the homography estimated from mutual-NN matches.

    Matches the visible top-k descriptors mutually, fits with OpenCV RANSAC and warps image
    1's four corners with the estimate and the truth.

    Returns:
        ``(corner error in pixels, number of matches)``; ``inf`` when fewer than 4 matches
        or the fit failed.
    """
    v1, v2 = visible(f1, f2, H)
    v1, v2 = v1.top_k(top_k), v2.top_k(top_k)
    i, j = _mutual_nn(v1, v2)
    est = estimate_homography(
        v1.keypoints[i], v2.keypoints[j], "ransac", ransac_threshold, max_iters
    )
    return corner_error(est.H if est.success else None, H, f1.image_size), len(i)


def matching_score(
    f1: Features, f2: Features, H: np.ndarray, top_k: int | None, threshold: float = 3.0
) -> float:
    """Matching score (protocol and KP2D definition), in ``[0, 1]``.

    Top-k per image with no visibility filter; every point is matched to its nearest
    neighbour in the other image. From image 1: warp each matched image-2 point by
    ``H^-1``; it counts as visible when it lands inside image 1 and as correct when it is
    also ``< threshold`` px from its image-1 point; ``s1 = #correct / max(#visible, 1)``.
    ``s2`` likewise through ``H``; the score is ``(s1 + s2) / 2``.
    """
    t1, t2 = f1.top_k(top_k), f2.top_k(top_k)
    if len(t1) == 0 or len(t2) == 0:
        return 0.0
    H_inv = np.linalg.inv(H)
    d = descriptor_distances(
        torch.from_numpy(t1.descriptors.astype(np.float64)),
        torch.from_numpy(t2.descriptors.astype(np.float64)),
    )
    nn12, nn21 = d.argmin(dim=1).numpy(), d.argmin(dim=0).numpy()  # one matrix, both ways

    def one_way(a: Features, b: Features, nn: np.ndarray, H_b_to_a: np.ndarray) -> float:
        back = warp_points(b.keypoints[nn], H_b_to_a)
        vis = inside_image(back, a.image_size)
        correct = vis & (np.linalg.norm(back - a.keypoints, axis=1) < threshold)
        return correct.sum() / max(vis.sum(), 1)

    return float((one_way(t1, t2, nn12, H_inv) + one_way(t2, t1, nn21, H)) / 2)


def mean_matching_accuracy(
    f1: Features,
    f2: Features,
    H: np.ndarray,
    top_k: int | None,
    thresholds: tuple[float, ...] = MMA_THRESHOLDS,
) -> np.ndarray:
    """Fraction of mutual-NN matches (top-k each) with ``|H x1 - x2| <= t``, per threshold.

    Returns:
        ``(len(thresholds),)`` float64; zeros when there is no match.
    """
    t1, t2 = f1.top_k(top_k), f2.top_k(top_k)
    i, j = _mutual_nn(t1, t2)
    if len(i) == 0:
        return np.zeros(len(thresholds))
    err = np.linalg.norm(warp_points(t1.keypoints[i], H) - t2.keypoints[j], axis=1)
    return np.array([(err <= t).mean() for t in thresholds], dtype=np.float64)


def error_auc(errors: np.ndarray, thresholds: tuple[float, ...]) -> list[float]:
    """Area under the recall-vs-error curve up to each threshold, normalised to ``[0, 1]``.

    The curve is the fraction of pairs whose error is at most ``e``, for ``e`` in
    ``[0, t]``, integrated with the trapezoid rule (glue-factory's definition). Failed
    pairs carry ``inf`` and count as never recalled. No pairs give 0.
    """
    errors = np.sort(np.asarray(errors, dtype=np.float64))
    if len(errors) == 0:
        return [0.0 for _ in thresholds]
    recall = (np.arange(len(errors)) + 1) / len(errors)
    errors = np.concatenate([[0.0], errors])
    recall = np.concatenate([[0.0], recall])
    aucs = []
    for t in thresholds:
        last = np.searchsorted(errors, t)
        r = np.concatenate([recall[:last], [recall[last - 1]]])
        e = np.concatenate([errors[:last], [t]])
        aucs.append(float(np.trapezoid(r, x=e) / t))
    return aucs


def homography_accuracy(errors: np.ndarray, eps: float) -> float:
    """Fraction of pairs whose corner error is ``<= eps`` (0 for no pairs)."""
    errors = np.asarray(errors, dtype=np.float64)
    return float((errors <= eps).mean()) if len(errors) else 0.0


def finite_or_none(x: float | None) -> float | None:
    """``x`` if it is a finite number, else ``None`` (for JSON)."""
    return x if x is not None and math.isfinite(x) else None
