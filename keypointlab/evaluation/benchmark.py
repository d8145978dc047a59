"""Run the evaluation protocol over a dataset of sequences and collect the results."""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from tqdm import tqdm

from keypointlab import limits
from keypointlab.data.images import ImageReadError, read_image, resize_image
from keypointlab.data.sequences import Sequence, Skipped
from keypointlab.errors import LimitError
from keypointlab.evaluation import metrics as M
from keypointlab.features.base import Extractor, Features
from keypointlab.features.h5 import FeatureFileError, FeatureFileExtractor
from keypointlab.geometry import resize_scale, scale_homography
from keypointlab.matching import match_nn
from keypointlab.registry import Registry

logger = logging.getLogger(__name__)

#: benchmarks by task, each ``(extractor, data, ...) -> result`` registered where it is
#: defined: ``homography`` here; the pose, 3D and retrieval benchmarks join the same way
BENCHMARKS: Registry[Any] = Registry("benchmark", "keypointlab.evaluation")

SPLITS = ("illumination", "viewpoint", "other")
EPSILONS = (1, 3, 5)


@dataclass
class PairResult:
    """Metrics of one pair ``(1, N)`` of a sequence."""

    sequence: str
    split: str
    pair: tuple[int, int]
    repeatability: float
    localization_error: float | None
    corner_error: float  # inf when the homography could not be estimated
    matching_score: float
    mma: list[float]
    num_keypoints: tuple[int, int]  # visible top-k of each image
    num_matches: int


@dataclass
class BenchmarkResult:
    """Results of one feature method at one evaluation size."""

    method: str
    size: str  # "240x320" or "original"
    top_k: int
    pairs: list[PairResult] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    extraction_times: list[float] = field(default_factory=list)
    matching_times: list[float] = field(default_factory=list)

    def summary(self, split: str | None = None) -> dict[str, Any]:
        """Averages over the pairs (of one split, or all); never NaN."""
        pairs = [p for p in self.pairs if split is None or p.split == split]
        errors = np.array([p.corner_error for p in pairs])
        locs = [p.localization_error for p in pairs if p.localization_error is not None]
        mma = np.mean([p.mma for p in pairs], axis=0) if pairs else np.zeros(10)

        def mean(values: list[float]) -> float:
            return float(np.mean(values)) if values else 0.0

        out: dict[str, Any] = {
            "repeatability": mean([p.repeatability for p in pairs]),
            "localization_error": mean(locs),
        }
        for eps in EPSILONS:
            out[f"homography_accuracy_{eps}"] = M.homography_accuracy(errors, eps)
        for eps, auc in zip(EPSILONS, M.error_auc(errors, EPSILONS), strict=True):
            out[f"homography_auc_{eps}"] = auc
        out["matching_score"] = mean([p.matching_score for p in pairs])
        out["mma_3"] = float(mma[2])
        out["mma"] = [float(x) for x in mma]
        out["pairs"] = len(pairs)
        out["pairs_without_keypoints"] = sum(1 for p in pairs if min(p.num_keypoints) == 0)
        out["pairs_without_localization"] = len(pairs) - len(locs)
        if split is None:
            out["extraction_time_per_image"] = mean(self.extraction_times)
            out["matching_time_per_pair"] = mean(self.matching_times)
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: summary, per split, per pair and what was skipped."""
        pairs = []
        for p in self.pairs:
            d = asdict(p)
            d["corner_error"] = M.finite_or_none(p.corner_error)
            pairs.append(d)
        return {
            "method": self.method,
            "size": self.size,
            "top_k": self.top_k,
            "summary": self.summary(),
            "splits": {s: self.summary(s) for s in SPLITS if any(p.split == s for p in self.pairs)},
            "pairs": pairs,
            "skipped": [asdict(s) for s in self.skipped],
        }


def parse_size(text: str | None) -> tuple[int, int] | None:
    """``"240x320"`` -> ``(240, 320)`` (height x width); ``"original"``/None -> None."""
    if text is None or text == "original":
        return None
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError as exc:
        raise ValueError(
            f"size {text!r}: expected HEIGHTxWIDTH such as 240x320, or 'original'"
        ) from exc
    if h < 16 or w < 16:
        raise ValueError(f"size {text!r}: each side must be at least 16 pixels")
    limits.check_pixels(h, w, f"size {text!r}")
    return h, w


def size_label(size: tuple[int, int] | None) -> str:
    return "original" if size is None else f"{size[0]}x{size[1]}"


class _SequenceFeatures:
    """Loads, resizes and extracts the images of one sequence, timing the extraction."""

    def __init__(
        self,
        extractor: Extractor,
        seq: Sequence,
        size: tuple[int, int] | None,
        result: BenchmarkResult,
    ) -> None:
        self.extractor, self.seq, self.size, self.result = extractor, seq, size, result
        self.features: dict[int, Features] = {}
        self.scales: dict[int, tuple[float, float]] = {}

    def get(self, index: int) -> Features:
        if index in self.features:
            return self.features[index]
        path = self.seq.images[index]
        image = read_image(path)
        orig = image.shape[:2]
        target = self.size or orig
        self.scales[index] = resize_scale(orig, target)
        if isinstance(self.extractor, FeatureFileExtractor):
            feats = self.extractor.lookup(self.seq.relative(index), orig)
            if self.size is not None:
                feats = feats.scaled(*self.scales[index], target)
        else:
            image = resize_image(image, target)
            start = time.perf_counter()
            feats = self.extractor.extract(image)
            self.result.extraction_times.append(time.perf_counter() - start)
        self.features[index] = feats
        return feats


def evaluate_pair(f1: Features, f2: Features, H: np.ndarray, top_k: int) -> dict[str, Any]:
    """All per-pair metrics for features already at the evaluation size."""
    rep = M.repeatability(f1, f2, H, top_k)
    err, n_matches = M.homography_corner_error(f1, f2, H, top_k)
    return {
        "repeatability": rep.repeatability,
        "localization_error": rep.localization_error,
        "corner_error": err,
        "matching_score": M.matching_score(f1, f2, H, top_k),
        "mma": [float(x) for x in M.mean_matching_accuracy(f1, f2, H, top_k)],
        "num_keypoints": rep.num_keypoints,
        "num_matches": n_matches,
    }


def _time_matching(f1: Features, f2: Features, top_k: int) -> float:
    d1, d2 = f1.top_k(top_k).descriptors, f2.top_k(top_k).descriptors
    start = time.perf_counter()
    match_nn(d1, d2)
    return time.perf_counter() - start


@BENCHMARKS.register("homography")
def evaluate_features(
    extractor: Extractor,
    sequences: list[Sequence],
    size: tuple[int, int] | None,
    top_k: int,
    skipped: list[Skipped] | None = None,
    progress: bool = True,
) -> BenchmarkResult:
    """Evaluate one extractor on every pair of ``sequences`` at ``size`` (None = original).

    Unreadable images, images above the limits of :mod:`keypointlab.limits` and missing
    features skip the pairs they belong to; the result lists them in ``skipped`` beside
    those passed in.
    """
    top_k = limits.check_count(top_k, "top-k")
    result = BenchmarkResult(extractor.name, size_label(size), top_k, skipped=list(skipped or []))
    n_pairs = sum(len(s.pairs()) for s in sequences)
    bar = tqdm(
        total=n_pairs,
        desc=f"{extractor.name} @ {size_label(size)}",
        disable=not progress,
        leave=False,
    )
    for seq in sequences:
        feats = _SequenceFeatures(extractor, seq, size, result)
        for a, b in seq.pairs():
            bar.update(1)
            try:
                f1, f2 = feats.get(a), feats.get(b)
            except (ImageReadError, FeatureFileError, LimitError) as exc:
                result.skipped.append(Skipped(f"{seq.name} {a}-{b}", str(exc)))
                logger.warning("skipped %s %d-%d: %s", seq.name, a, b, exc)
                continue
            H = scale_homography(seq.homographies[b], feats.scales[a], feats.scales[b])
            values = evaluate_pair(f1, f2, H, top_k)
            result.matching_times.append(_time_matching(f1, f2, top_k))
            result.pairs.append(PairResult(seq.name, seq.split, (a, b), **values))
    bar.close()
    return result
