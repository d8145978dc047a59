"""The relative-pose benchmark: match two views with known intrinsics, estimate their
relative pose and measure its error (SuperGlue / LoFTR protocol).

Per pair (:class:`PosePairResult`): the top-k keypoints of each view are matched by mutual
nearest neighbour (:func:`keypointlab.matching.match_nn`), the pose is estimated from
all matches (:func:`keypointlab.geometry.epipolar.estimate_relative_pose`, RANSAC at 1 px)
and its error is ``max(rotation error, translation angle error)`` in degrees, ``inf`` when
no pose was found. Matching precision is the fraction of matches that are correct:

- with depth (RGB-D pairs): the view-0 keypoint back-projected with its depth, moved by
  ``T_0to1`` and projected lands within ``DEPTH_THRESHOLD`` px of its match; only matches
  whose view-0 point has a known correspondence (depth, inside image 1, not occluded) are
  counted;
- without depth (multi-view pairs): the symmetric epipolar distance under the true pose
  (:func:`keypointlab.geometry.epipolar.epipolar_distance`) is within
  ``EPIPOLAR_THRESHOLD`` px; every match is counted.

Summary (:meth:`PoseBenchmarkResult.summary`): ``pose_auc_5/10/20``, the area under the
recall curve of the pose error up to 5/10/20 degrees (failed pairs are never recalled);
the mean per-pair precision (over pairs with a counted match), matches, inliers and
extraction time.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from tqdm import tqdm

from keypointlab import limits
from keypointlab.data.images import ImageReadError
from keypointlab.data.posepairs import PosePair, PoseView, load_view_at
from keypointlab.data.sequences import Skipped
from keypointlab.errors import LimitError
from keypointlab.evaluation import metrics as M
from keypointlab.evaluation.benchmark import BENCHMARKS, size_label
from keypointlab.features.base import Extractor, Features
from keypointlab.geometry.epipolar import (
    depth_reprojection_errors,
    epipolar_distance,
    estimate_relative_pose,
    fundamental_from_pose,
    rotation_error,
    translation_angle_error,
)
from keypointlab.matching import match_nn

logger = logging.getLogger(__name__)

AUC_THRESHOLDS = (5, 10, 20)  # degrees
DEPTH_THRESHOLD = 5.0  # px: a match is correct within this of its depth reprojection
EPIPOLAR_THRESHOLD = 2.0  # px: ... or of its epipolar lines, without depth
RANSAC_THRESHOLD = 1.0  # px, as SuperGlue


def pose_auc(errors: Sequence[float], thresholds: Sequence[float] = AUC_THRESHOLDS) -> list[float]:
    """Area under the recall-vs-pose-error curve up to each threshold (degrees), over the
    threshold: SuperGlue's ``pose_auc`` (:func:`keypointlab.evaluation.metrics.error_auc`,
    trapezoids). Failed pairs carry ``inf``; no pairs give 0."""
    return M.error_auc(np.asarray(errors, np.float64), tuple(thresholds))


@dataclass
class PosePairResult:
    """Metrics of one pair (angles in degrees, ``inf`` when no pose was found)."""

    name0: str
    name1: str
    overlap: float | None
    rotation_error: float
    translation_error: float
    pose_error: float
    num_keypoints: tuple[int, int]
    num_matches: int
    num_inliers: int
    precision: float | None  # None when no match could be checked
    num_checked: int  # matches whose correctness is known


@dataclass
class PoseBenchmarkResult:
    """Results of one feature method at one evaluation size on one set of pairs."""

    method: str
    size: str
    top_k: int
    precision_by: str  # "depth" or "epipolar"
    pairs: list[PosePairResult] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    extraction_times: list[float] = field(default_factory=list)
    pair_times: list[float] = field(default_factory=list)  # matching + pose + precision

    def summary(self) -> dict[str, Any]:
        """Averages over the pairs; never NaN (0 for no pairs)."""

        def mean(values: list[float]) -> float:
            return float(np.mean(values)) if values else 0.0

        errors = [p.pose_error for p in self.pairs]
        out: dict[str, Any] = {}
        for t, auc in zip(AUC_THRESHOLDS, pose_auc(errors), strict=True):
            out[f"pose_auc_{t}"] = auc
        out["pairs"] = len(self.pairs)
        out["pairs_failed"] = sum(1 for e in errors if not np.isfinite(e))
        precisions = [p.precision for p in self.pairs if p.precision is not None]
        out["matching_precision"] = mean(precisions)
        out["pairs_without_precision"] = len(self.pairs) - len(precisions)
        out["matches_per_pair"] = mean([p.num_matches for p in self.pairs])
        out["inliers_per_pair"] = mean([p.num_inliers for p in self.pairs])
        finite = [e for e in errors if np.isfinite(e)]
        out["median_pose_error"] = float(np.median(finite)) if finite else None
        out["extraction_time_per_image"] = mean(self.extraction_times)
        out["match_and_pose_time_per_pair"] = mean(self.pair_times)
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: summary, per pair (non-finite errors as None) and what was skipped."""
        pairs = []
        for p in self.pairs:
            d = asdict(p)
            for k in ("rotation_error", "translation_error", "pose_error"):
                d[k] = M.finite_or_none(d[k])
            pairs.append(d)
        return {
            "task": "pose",
            "method": self.method,
            "size": self.size,
            "top_k": self.top_k,
            "precision_by": self.precision_by,
            "summary": self.summary(),
            "pairs": pairs,
            "skipped": [asdict(s) for s in self.skipped],
        }


@dataclass
class ViewData:
    """One view at the evaluation size: its features, depth (``(h, w)`` metres, or None)
    and ``(3, 3)`` intrinsics."""

    features: Features
    depth: np.ndarray | None
    K: np.ndarray


class _ViewCache:
    """Loads, resizes and extracts each view once, timing extraction; a view is dropped
    after the last pair that uses it."""

    def __init__(
        self,
        extractor: Extractor,
        pairs: Sequence[PosePair],
        size: tuple[int, int] | None,
        result: PoseBenchmarkResult,
    ) -> None:
        self.extractor, self.size, self.result = extractor, size, result
        self.last_use = {v.name: k for k, p in enumerate(pairs) for v in (p.view0, p.view1)}
        self.views: dict[str, ViewData] = {}

    def get(self, view: PoseView) -> ViewData:
        if view.name not in self.views:
            image, depth, K = load_view_at(view, self.size)
            start = time.perf_counter()
            feats = self.extractor.extract(image)
            self.result.extraction_times.append(time.perf_counter() - start)
            self.views[view.name] = ViewData(feats, depth, K)
        return self.views[view.name]

    def done(self, index: int) -> None:
        for name in [n for n in self.views if self.last_use[n] <= index]:
            del self.views[name]


def evaluate_pose_pair(
    v0: ViewData, v1: ViewData, T_0to1: np.ndarray, top_k: int
) -> dict[str, Any]:
    """All per-pair metrics of two views at the evaluation size (see the module)."""
    f0, f1 = v0.features.top_k(top_k), v1.features.top_k(top_k)
    m = match_nn(f0.descriptors, f1.descriptors).numpy()
    i = np.flatnonzero(m >= 0)
    p0, p1 = f0.keypoints[i], f1.keypoints[m[i]]
    est = estimate_relative_pose(p0, p1, v0.K, v1.K, threshold=RANSAC_THRESHOLD)
    if est.success:
        r_err = rotation_error(est.R, T_0to1[:3, :3])
        t_err = translation_angle_error(est.t, T_0to1[:3, 3])
    else:
        r_err = t_err = float("inf")
    if v0.depth is not None and v1.depth is not None:
        err, known = depth_reprojection_errors(p0, p1, v0.depth, v1.depth, v0.K, v1.K, T_0to1)
        correct = known & (err <= DEPTH_THRESHOLD)
    else:
        F = fundamental_from_pose(T_0to1, v0.K, v1.K)
        known = np.ones(len(i), dtype=bool)
        correct = epipolar_distance(p0, p1, F) <= EPIPOLAR_THRESHOLD
    checked = int(known.sum())
    return {
        "rotation_error": r_err,
        "translation_error": t_err,
        "pose_error": max(r_err, t_err),
        "num_keypoints": (len(f0), len(f1)),
        "num_matches": len(i),
        "num_inliers": est.num_inliers,
        "precision": float(correct.sum()) / checked if checked else None,
        "num_checked": checked,
    }


@BENCHMARKS.register("pose")
def evaluate_pose(
    extractor: Extractor,
    pairs: Sequence[PosePair],
    size: tuple[int, int] | None,
    top_k: int,
    progress: bool = True,
) -> PoseBenchmarkResult:
    """Evaluate one extractor on every pair at ``size = (h, w)`` (None: the size of each
    view's intrinsics). Views that cannot be read or are above the pixel limit skip their
    pairs, listed in ``skipped``."""
    top_k = limits.check_count(top_k, "top-k")
    by = "depth" if all(p.view0.frame is not None for p in pairs) else "epipolar"
    result = PoseBenchmarkResult(extractor.name, size_label(size), top_k, by)
    cache = _ViewCache(extractor, pairs, size, result)
    bar = tqdm(pairs, desc=f"pose {extractor.name} @ {size_label(size)}", disable=not progress,
               leave=False)  # fmt: skip
    for k, pair in enumerate(bar):
        try:
            v0, v1 = cache.get(pair.view0), cache.get(pair.view1)
        except (ImageReadError, LimitError) as exc:
            result.skipped.append(Skipped(pair.name, str(exc)))
            logger.warning("skipped %s: %s", pair.name, exc)
            cache.done(k)
            continue
        start = time.perf_counter()
        values = evaluate_pose_pair(v0, v1, pair.T_0to1, top_k)
        result.pair_times.append(time.perf_counter() - start)
        result.pairs.append(PosePairResult(pair.view0.name, pair.view1.name, pair.overlap,
                                           **values))  # fmt: skip
        cache.done(k)
    bar.close()
    return result
