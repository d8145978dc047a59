"""The five-line Python API.

>>> import keypointlab as kl
>>> extractor = kl.load_extractor("sift")
>>> f0, f1 = extractor.extract("a.png"), extractor.extract("b.png")
>>> matches = kl.match(f0, f1)
>>> result = kl.estimate(f0, f1, matches)
>>> kl.draw_matches("a.png", "b.png", f0, f1, matches, result).savefig("matches.png")
"""

from __future__ import annotations

from typing import Any

import numpy as np
from matplotlib.figure import Figure

from keypointlab.features.base import Extractor, Features, ImageInput, as_rgb_uint8
from keypointlab.features.registry import get_extractor
from keypointlab.matching import HomographyEstimate, estimate_homography, match_nn, matches_to_pairs
from keypointlab.viz import matches_figure


def load_extractor(name: str = "kp2d_fast", **kwargs: Any) -> Extractor:
    """An extractor by name: ``sift``, ``orb``, a shipped model or a checkpoint path; the
    default, ``kp2d_fast``, is the shipped model that extracts faster than SIFT on a CPU."""
    return get_extractor(name, **kwargs)


def match(
    f0: Features,
    f1: Features,
    mutual: bool = True,
    ratio: float | None = None,
    max_distance: float | None = None,
) -> np.ndarray:
    """Nearest-neighbour matches as ``(M, 2)`` index pairs ``(i in f0, j in f1)``."""
    m = match_nn(
        f0.descriptors, f1.descriptors, mutual=mutual, ratio=ratio, max_distance=max_distance
    )
    return matches_to_pairs(m)


def estimate(
    f0: Features, f1: Features, matches: np.ndarray, method: str = "ransac", threshold: float = 3.0
) -> HomographyEstimate:
    """Robust homography ``H_0to1`` from matched keypoints (never raises on few matches)."""
    matches = np.asarray(matches, dtype=np.int64).reshape(-1, 2)
    return estimate_homography(
        f0.keypoints[matches[:, 0]], f1.keypoints[matches[:, 1]], method=method, threshold=threshold
    )


def draw_matches(
    image0: ImageInput,
    image1: ImageInput,
    f0: Features,
    f1: Features,
    matches: np.ndarray,
    result: HomographyEstimate | None = None,
) -> Figure:
    """Figure of the matches (inliers green) and the estimated outline of image 0."""
    matches = np.asarray(matches, dtype=np.int64).reshape(-1, 2)
    inliers = result.inliers if result is not None and result.success else None
    H = result.H if result is not None and result.success else None
    return matches_figure(
        as_rgb_uint8(image0),
        as_rgb_uint8(image1),
        f0.keypoints[matches[:, 0]],
        f1.keypoints[matches[:, 1]],
        inliers,
        H,
    )
