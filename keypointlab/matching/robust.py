"""Robust homography estimation through OpenCV, never raising on degenerate input."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

METHODS = {"ransac": cv2.RANSAC, "magsac": cv2.USAC_MAGSAC, "lmeds": cv2.LMEDS}


@dataclass
class HomographyEstimate:
    """Result of :func:`estimate_homography`.

    Attributes:
        H: ``(3, 3)`` estimate mapping points 0 to points 1, ``None`` when it failed.
        inliers: ``(M,)`` boolean inlier mask over the input matches (all False on failure).
        success: whether an estimate was found.
        reason: why it failed, empty on success.
    """

    H: np.ndarray | None
    inliers: np.ndarray
    success: bool
    reason: str = ""

    @property
    def num_inliers(self) -> int:
        return int(self.inliers.sum())


def estimate_homography(
    points0: np.ndarray,
    points1: np.ndarray,
    method: str = "ransac",
    threshold: float = 3.0,
    max_iters: int = 5000,
    confidence: float = 0.995,
    seed: int | None = 0,
) -> HomographyEstimate:
    """Fit ``H`` with ``points1 ~ H points0`` robustly.

    Args:
        points0: ``(M, 2)`` xy of the matches in view 0.
        points1: ``(M, 2)`` xy of the matches in view 1.
        method: ``ransac``, ``magsac`` (USAC-MAGSAC) or ``lmeds``.
        threshold: inlier reprojection threshold in pixels.
        max_iters: maximum number of iterations.
        confidence: RANSAC confidence.
        seed: seeds OpenCV's RNG before the fit so results repeat; ``None`` leaves it.

    Returns:
        A :class:`HomographyEstimate`; fewer than 4 matches or a failed fit gives
        ``success=False`` rather than an exception.
    """
    if method not in METHODS:
        raise KeyError(f"unknown robust estimator {method!r}; known: {sorted(METHODS)}")
    p0 = np.asarray(points0, dtype=np.float64).reshape(-1, 2)
    p1 = np.asarray(points1, dtype=np.float64).reshape(-1, 2)
    m = len(p0)
    none = np.zeros(m, dtype=bool)
    if m != len(p1):
        raise ValueError(f"points0 has {m} points but points1 has {len(p1)}")
    if m < 4:
        return HomographyEstimate(None, none, False, f"{m} matches, at least 4 needed")
    if not (np.all(np.isfinite(p0)) and np.all(np.isfinite(p1))):
        return HomographyEstimate(None, none, False, "non-finite match coordinates")
    if seed is not None:
        cv2.setRNGSeed(seed)
    try:
        H, mask = cv2.findHomography(
            p0, p1, METHODS[method], threshold, maxIters=max_iters, confidence=confidence
        )
    except cv2.error as exc:
        return HomographyEstimate(None, none, False, f"OpenCV failed: {exc}")
    if H is None or not np.all(np.isfinite(H)):
        return HomographyEstimate(None, none, False, "no homography found")
    inliers = mask.reshape(-1).astype(bool) if mask is not None else np.ones(m, dtype=bool)
    return HomographyEstimate(H, inliers, True)
