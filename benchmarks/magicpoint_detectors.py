"""MagicPoint against classical corner detectors on held-out synthetic shapes.

Every detector is evaluated the same way, in one run, on the same images: the test set is
``SyntheticShapes(size, seed=--seed)`` (default seed 12345, distinct from the training
stream), whose corner labels are exact.

1. Each detector gives a dense score map: MagicPoint's heatmap, OpenCV FAST's keypoint
   responses at their pixels (zero elsewhere), the Harris response (``cv2.cornerHarris``)
   and the Shi-Tomasi minimum eigenvalue (``cv2.cornerMinEigenVal``, the score of
   ``cv2.goodFeaturesToTrack``).
2. Each map is normalised per image to [0, 1] (negative responses clipped to 0, then
   divided by the image's maximum) and reduced to keypoints by the same NMS
   (:func:`keypointlab.models.superpoint.heatmap_nms_keypoints`, ``--nms`` px radius,
   scores above ``--min-score``). Unless ``--no-raw``, every detector is also evaluated on
   its raw (not normalised) scores, as ``<name>-raw``: per-image normalisation gives the
   best detection of every image score 1, also in images without corners (ellipses,
   noise), which lowers the pooled precision of all methods.
3. Detections of all images are pooled and sorted by score; a detection is correct when it
   lies within ``--distance`` px (default 2, as in SuperPoint's synthetic evaluation) of a
   ground-truth corner not already taken by a higher-scored detection (each corner counts
   once). Reported: mean average precision (area under the interpolated precision-recall
   curve, as rpautrat/SuperPoint's ``compute_pr`` and ``compute_mAP``), precision and
   recall at each method's best F1, and the localization error (mean distance of the
   correct detections to their corner) at that operating point.

Writes ``results.json``, ``report.md`` and ``pr_curves.png`` to ``--out``::

    python benchmarks/magicpoint_detectors.py --model runs/magicpoint \\
        --out benchmarks/results/magicpoint_detectors
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from torch import nn
from tqdm import tqdm

from keypointlab.data.synthetic import SyntheticShapes
from keypointlab.evaluation.report import write_atomic
from keypointlab.models.superpoint import heatmap_nms_keypoints
from keypointlab.viz import save_figure

TEST_SEED = 12345  # the training streams use small seeds (0 by default)
DISTANCE_THRESHOLD = 2.0  # px, SuperPoint's synthetic-shapes evaluation
NMS_RADIUS = 4  # px, SuperPoint's
MIN_SCORE = 1e-3  # smallest (normalised) score kept, SuperPoint's detection threshold
FAST_THRESHOLD = 10  # OpenCV's default intensity threshold
BLOCK_SIZE, APERTURE, HARRIS_K = 3, 3, 0.04  # cv2.goodFeaturesToTrack's defaults
CURVE_POINTS = 300  # precision-recall points kept per method in results.json

ScoreMap = Callable[[np.ndarray], np.ndarray]


# ------------------------------------------------------------------------ score maps


def fast_score_map(image: np.ndarray, threshold: int = FAST_THRESHOLD) -> np.ndarray:
    """FAST-9 responses of a uint8 grey image at their keypoints' pixels, 0 elsewhere.

    OpenCV's own 3x3 non-maximum suppression stays on: without it FAST reports a response
    of 0 for every keypoint. The common NMS (:func:`detect`) is applied afterwards anyway.
    """
    detector = cv2.FastFeatureDetector_create(threshold=threshold, nonmaxSuppression=True)
    scores = np.zeros(image.shape[:2], np.float32)
    for kp in detector.detect(image):
        x, y = int(round(kp.pt[0])), int(round(kp.pt[1]))
        scores[y, x] = max(scores[y, x], kp.response)
    return scores


def harris_score_map(image: np.ndarray) -> np.ndarray:
    """Harris corner response ``det(M) - k trace(M)^2`` (``cv2.cornerHarris``), float32."""
    return cv2.cornerHarris(image.astype(np.float32), BLOCK_SIZE, APERTURE, HARRIS_K)


def shi_tomasi_score_map(image: np.ndarray) -> np.ndarray:
    """Smaller eigenvalue of the structure tensor (``cv2.cornerMinEigenVal``), the score
    that ``cv2.goodFeaturesToTrack`` thresholds, float32."""
    return cv2.cornerMinEigenVal(image.astype(np.float32), BLOCK_SIZE, APERTURE)


class MagicPointScoreMap:
    """MagicPoint's full-resolution heatmap of a uint8 grey image (callable).

    Images whose sides are not multiples of 8 are padded (replicating the border) and the
    heatmap cropped back.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model.eval()

    @torch.inference_mode()
    def __call__(self, image: np.ndarray) -> np.ndarray:
        h, w = image.shape[:2]
        x = torch.from_numpy(np.ascontiguousarray(image)).float().div_(255.0)[None, None]
        x = F.pad(x, (0, (-w) % 8, 0, (-h) % 8), mode="replicate")
        out = self.model({"image": x})
        if "heatmap" not in out:
            raise ValueError(
                f"{type(self.model).__name__} has no 'heatmap' output: this benchmark needs "
                "a dense detector heatmap (a magicpoint or superpoint checkpoint)"
            )
        return out["heatmap"][0, 0, :h, :w].float().numpy()


def normalise_map(scores: np.ndarray) -> np.ndarray:
    """Per-image score map in [0, 1]: negatives clipped to 0, then divided by the maximum
    (an all-zero map stays zero). Flat regions stay at 0, so they yield no detections."""
    s = np.maximum(np.asarray(scores, np.float32), 0.0)
    top = float(s.max(initial=0.0))
    return s / top if top > 0 else s


def detect(
    scores: np.ndarray,
    nms_radius: int = NMS_RADIUS,
    min_score: float = MIN_SCORE,
    normalise: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Keypoints of a dense score map: optional :func:`normalise_map`, then
    :func:`heatmap_nms_keypoints` (max-pool NMS of radius ``nms_radius``, scores above
    ``min_score``).

    Returns:
        ``(keypoints, scores)``: ``(N, 2)`` float64 pixel xy and ``(N,)`` float64 scores,
        by decreasing score.
    """
    s = normalise_map(scores) if normalise else np.asarray(scores, np.float32)
    kp, sc = heatmap_nms_keypoints(torch.from_numpy(np.ascontiguousarray(s)), min_score, nms_radius)
    return kp.double().numpy().reshape(-1, 2), sc.double().numpy()


# ---------------------------------------------------------------------------- metrics


def match_detections(
    detections: np.ndarray, scores: np.ndarray, gt: np.ndarray, threshold: float
) -> tuple[np.ndarray, np.ndarray]:
    """Correct detections of one image, matched greedily by decreasing score.

    Each detection, from the highest score down (ties in input order), takes the nearest
    ground-truth point within ``threshold`` px that no earlier detection took; without one
    it is a false positive. So every ground-truth point is matched at most once. (Unlike
    rpautrat/SuperPoint's ``compute_tp_fp``, which tries only the first ground-truth point
    in range, a detection may fall back on another free point in range.)

    Args:
        detections: ``(N, 2)`` xy.
        scores: ``(N,)`` detection scores.
        gt: ``(M, 2)`` ground-truth xy.
        threshold: largest distance (px, inclusive) of a correct detection.

    Returns:
        ``(correct, errors)``, both ``(N,)`` in the order of ``detections``: boolean, and the
        distance to the matched point (NaN for false positives).
    """
    det = np.asarray(detections, np.float64).reshape(-1, 2)
    gt = np.asarray(gt, np.float64).reshape(-1, 2)
    scores = np.asarray(scores, np.float64).reshape(-1)
    if len(scores) != len(det):
        raise ValueError(f"{len(det)} detections but {len(scores)} scores")
    correct = np.zeros(len(det), bool)
    errors = np.full(len(det), np.nan)
    if len(det) == 0 or len(gt) == 0:
        return correct, errors
    dist = np.linalg.norm(det[:, None, :] - gt[None, :, :], axis=-1)
    taken = np.zeros(len(gt), bool)
    for i in np.argsort(-scores, kind="stable"):
        d = np.where(taken | (dist[i] > threshold), np.inf, dist[i])
        j = int(np.argmin(d))
        if np.isfinite(d[j]):
            taken[j] = correct[i] = True
            errors[i] = d[j]
    return correct, errors


@dataclass
class PRCurve:
    """Pooled precision-recall curve; the ``i``-th point keeps the detections whose score is
    ``>= thresholds[i]`` (one point per distinct score, thresholds decreasing)."""

    thresholds: np.ndarray
    precision: np.ndarray
    recall: np.ndarray
    average_precision: float
    n_gt: int
    n_detections: int
    mean_error: np.ndarray  # mean distance of the correct detections kept at each point


def average_precision(precision: np.ndarray, recall: np.ndarray) -> float:
    """Area under the interpolated precision-recall curve (rpautrat/SuperPoint's mAP, the
    PASCAL VOC all-point AP): ``sum_i (r_i - r_{i-1}) max_{k >= i} p_k`` with ``r_0 = 0``,
    for points ordered by decreasing score threshold (recall non-decreasing)."""
    p = np.asarray(precision, np.float64)
    r = np.asarray(recall, np.float64)
    if p.size == 0:
        return 0.0
    envelope = np.maximum.accumulate(p[::-1])[::-1]
    return float(np.sum(np.diff(r, prepend=0.0) * envelope))


def pr_curve(
    detections_per_image: Sequence[np.ndarray],
    scores_per_image: Sequence[np.ndarray],
    gt_per_image: Sequence[np.ndarray],
    threshold: float = DISTANCE_THRESHOLD,
) -> PRCurve:
    """The :class:`PRCurve` of detections pooled over images (see :func:`precision_recall`)."""
    if not len(detections_per_image) == len(scores_per_image) == len(gt_per_image):
        raise ValueError("detections, scores and ground truth need one entry per image")
    all_scores, all_correct, all_errors, n_gt = [], [], [], 0
    for det, sc, gt in zip(detections_per_image, scores_per_image, gt_per_image, strict=True):
        correct, errors = match_detections(det, sc, gt, threshold)
        all_scores.append(np.asarray(sc, np.float64).reshape(-1))
        all_correct.append(correct)
        all_errors.append(errors)
        n_gt += len(np.asarray(gt).reshape(-1, 2))
    scores = np.concatenate(all_scores) if all_scores else np.zeros(0)
    order = np.argsort(-scores, kind="stable")
    scores = scores[order]
    correct = np.concatenate(all_correct)[order] if all_correct else np.zeros(0, bool)
    errors = np.concatenate(all_errors)[order] if all_errors else np.zeros(0)
    tp = np.cumsum(correct)
    err_sum = np.cumsum(np.where(correct, errors, 0.0))
    # end of each group of equal scores: one curve point per distinct threshold
    last = np.zeros(0, np.int64)
    if len(scores):
        last = np.flatnonzero(np.r_[scores[1:] != scores[:-1], True])
    precision = tp[last] / (last + 1.0)
    recall = tp[last] / n_gt if n_gt else np.zeros(len(last))
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_error = np.where(tp[last] > 0, err_sum[last] / tp[last], np.nan)
    return PRCurve(
        thresholds=scores[last],
        precision=precision,
        recall=recall,
        average_precision=average_precision(precision, recall),
        n_gt=n_gt,
        n_detections=len(scores),
        mean_error=mean_error,
    )


def precision_recall(
    detections_per_image: Sequence[np.ndarray],
    scores_per_image: Sequence[np.ndarray],
    gt_per_image: Sequence[np.ndarray],
    threshold: float = DISTANCE_THRESHOLD,
) -> tuple[np.ndarray, np.ndarray, float]:
    """Precision-recall curve over score thresholds and its average precision.

    Detections are matched per image by :func:`match_detections` (within ``threshold`` px,
    each ground-truth point at most once), then pooled over all images and sorted by
    decreasing score. Point ``i`` of the curve keeps every detection scored at least the
    ``i``-th distinct score: precision = correct kept / kept, recall = correct kept / all
    ground-truth points of all images (0 when there are none). Equal scores are one
    threshold, so their order does not matter.

    Args:
        detections_per_image: per image, ``(N_i, 2)`` xy detections.
        scores_per_image: per image, ``(N_i,)`` scores.
        gt_per_image: per image, ``(M_i, 2)`` ground-truth xy points.
        threshold: largest distance (px) of a correct detection.

    Returns:
        ``(precision, recall, average_precision)``: two arrays with one point per distinct
        score (decreasing), and :func:`average_precision` of the curve (0 without
        detections or ground truth).
    """
    c = pr_curve(detections_per_image, scores_per_image, gt_per_image, threshold)
    return c.precision, c.recall, c.average_precision


def best_f1(curve: PRCurve) -> dict[str, float | None]:
    """The curve's point of highest F1 = 2 P R / (P + R) (the highest threshold on ties):
    its ``precision``, ``recall``, ``f1``, score ``threshold`` and ``localization_error``
    (mean distance, px, of the correct detections kept there). ``None`` values when the
    curve is empty or has no correct detection."""
    p, r = curve.precision, curve.recall
    if p.size == 0 or not np.any(p + r > 0):
        return dict.fromkeys(("precision", "recall", "f1", "threshold", "localization_error"))
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(p + r > 0, 2 * p * r / (p + r), 0.0)
    i = int(np.argmax(f1))
    return {
        "precision": float(p[i]),
        "recall": float(r[i]),
        "f1": float(f1[i]),
        "threshold": float(curve.thresholds[i]),
        "localization_error": float(curve.mean_error[i]),
    }


def _subsample(values: np.ndarray, n: int = CURVE_POINTS) -> list[float]:
    """At most ``n`` evenly spaced entries of ``values`` (the last one always kept)."""
    if len(values) <= n:
        return [float(v) for v in values]
    idx = np.unique(np.linspace(0, len(values) - 1, n).round().astype(int))
    return [float(v) for v in values[idx]]


# ---------------------------------------------------------------------------- running


@dataclass
class Detector:
    """A named score map and whether :func:`detect` normalises it per image."""

    name: str
    score_map: ScoreMap
    normalise: bool = True


def classical_detectors(fast_threshold: int = FAST_THRESHOLD) -> list[Detector]:
    """FAST, Harris and Shi-Tomasi, in that order."""
    return [
        Detector("fast", lambda im: fast_score_map(im, fast_threshold)),
        Detector("harris", harris_score_map),
        Detector("shi-tomasi", shi_tomasi_score_map),
    ]


def magicpoint_detector(model: nn.Module) -> Detector:
    """MagicPoint's heatmap as a :class:`Detector` named ``magicpoint``."""
    return Detector("magicpoint", MagicPointScoreMap(model))


def with_raw(detectors: Sequence[Detector]) -> list[Detector]:
    """``detectors`` (normalised) followed by ``<name>-raw`` copies scoring the same maps
    without per-image normalisation (each map is still computed once per image)."""
    raw = [Detector(f"{d.name}-raw", d.score_map, normalise=False) for d in detectors]
    return [*detectors, *raw]


def run_benchmark(
    detectors: Sequence[Detector],
    n: int = 500,
    size: tuple[int, int] = (120, 160),
    seed: int = TEST_SEED,
    distance: float = DISTANCE_THRESHOLD,
    nms_radius: int = NMS_RADIUS,
    min_score: float = MIN_SCORE,
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate ``detectors`` on images ``0..n-1`` of ``SyntheticShapes(size, seed=seed)``.

    Returns:
        ``{"methods": {name: metrics}, "primitives": {...}, "n_gt": int, "images": n}``
        where metrics are ``average_precision``, ``best_f1`` (see :func:`best_f1`),
        ``detections_per_image`` (all kept by NMS and at the best-F1 threshold),
        ``ms_per_image`` (the score map alone: the NMS is common) and a subsampled
        ``curve``; ``primitives`` gives the average precision per primitive with corners.
    """
    data = SyntheticShapes(size, length=n, seed=seed)
    gts: list[np.ndarray] = []
    primitives: list[str] = []
    dets = {d.name: ([], []) for d in detectors}
    seconds = dict.fromkeys(dets, 0.0)
    maps: dict[int, tuple[np.ndarray, float]] = {}  # a shared score map is computed once
    for i in tqdm(range(n), desc="detectors", unit="img", disable=not progress):
        item = data[i]
        image = (item["image"][0].numpy() * 255.0 + 0.5).astype(np.uint8)
        gts.append(item["keypoints"].numpy().astype(np.float64).reshape(-1, 2))
        primitives.append(item["primitive"])
        maps.clear()
        for d in detectors:
            key = id(d.score_map)
            if key not in maps:
                start = time.perf_counter()
                maps[key] = (d.score_map(image), time.perf_counter() - start)
            score_map, map_seconds = maps[key]
            kp, sc = detect(score_map, nms_radius, min_score, d.normalise)
            seconds[d.name] += map_seconds
            dets[d.name][0].append(kp)
            dets[d.name][1].append(sc)
    methods: dict[str, Any] = {}
    per_primitive: dict[str, dict[str, float]] = {}
    names = sorted({p for p, g in zip(primitives, gts, strict=True) if len(g)})
    for d in detectors:
        kps, scs = dets[d.name]
        curve = pr_curve(kps, scs, gts, distance)
        op = best_f1(curve)
        thr = op["threshold"]
        kept = 0 if thr is None else sum(int((s >= thr).sum()) for s in scs)
        methods[d.name] = {
            "average_precision": curve.average_precision,
            "best_f1": op,
            "detections_per_image": curve.n_detections / max(n, 1),
            "detections_per_image_at_best_f1": kept / max(n, 1),
            "ms_per_image": 1000 * seconds[d.name] / max(n, 1),
            "curve": {
                "precision": _subsample(curve.precision),
                "recall": _subsample(curve.recall),
                "threshold": _subsample(curve.thresholds),
            },
        }
        for p in names:
            idx = [k for k, q in enumerate(primitives) if q == p]
            sub = ([kps[k] for k in idx], [scs[k] for k in idx], [gts[k] for k in idx])
            per_primitive.setdefault(p, {})[d.name] = precision_recall(*sub, distance)[2]
    counts = {p: primitives.count(p) for p in sorted(set(primitives))}
    return {
        "methods": methods,
        "primitives": per_primitive,
        "primitive_counts": counts,
        "n_gt": int(sum(len(g) for g in gts)),
        "images": n,
        "images_without_corners": int(sum(len(g) == 0 for g in gts)),
    }


# --------------------------------------------------------------------------- outputs


def markdown_table(methods: dict[str, Any]) -> str:
    """One row per method: mAP, best-F1 operating point, localization error, counts, time."""
    head = ["method", "mAP", "P@F1", "R@F1", "best F1", "score thr", "loc err [px]"]
    head += ["det/img @F1", "det/img", "map ms/img"]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]

    def f(v: float | None, fmt: str = "{:.3f}") -> str:
        return "-" if v is None else fmt.format(v)

    for name, m in methods.items():
        b = m["best_f1"]
        row = [name, f(m["average_precision"]), f(b["precision"]), f(b["recall"]), f(b["f1"])]
        row += [f(b["threshold"], "{:.3g}"), f(b["localization_error"], "{:.2f}")]
        row += [f"{m['detections_per_image_at_best_f1']:.1f}", f"{m['detections_per_image']:.1f}"]
        row.append(f"{m['ms_per_image']:.1f}")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def primitive_table(primitives: dict[str, dict[str, float]], counts: dict[str, int]) -> str:
    """Average precision per primitive (rows) and method (columns)."""
    methods = list(next(iter(primitives.values()), {}))
    lines = ["| primitive | images | " + " | ".join(methods) + " |"]
    lines.append("|---|---:|" + "---:|" * len(methods))
    for p, aps in primitives.items():
        lines.append(
            f"| {p} | {counts[p]} | " + " | ".join(f"{aps[m]:.3f}" for m in methods) + " |"
        )
    return "\n".join(lines)


def pr_figure(methods: dict[str, Any], title: str = "") -> Figure:
    """Precision against recall per method, each best-F1 point marked; normalised methods
    on the left, ``<name>-raw`` ones (if any) on the right, one colour per detector."""
    groups = {"normalised per image": {}, "raw scores": {}}
    for name, m in methods.items():
        groups["raw scores" if name.endswith("-raw") else "normalised per image"][name] = m
    groups = {k: v for k, v in groups.items() if v}
    colours: dict[str, str] = {}
    fig = Figure(figsize=(5.2 * len(groups), 4.4))
    axes = fig.subplots(1, len(groups), squeeze=False)[0]
    for ax, (panel, group) in zip(axes, groups.items(), strict=True):
        for name, m in group.items():
            colour = colours.setdefault(name.removesuffix("-raw"), f"C{len(colours)}")
            c, b = m["curve"], m["best_f1"]
            label = f"{name} (mAP {m['average_precision']:.3f})"
            ax.plot(c["recall"], c["precision"], color=colour, lw=1.5, label=label)
            if b["f1"] is not None:
                ax.plot(b["recall"], b["precision"], "o", color=colour, ms=5)
        ax.set_title(panel, fontsize=10)
        ax.set_xlabel("recall")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    axes[0].set_ylabel("precision")
    if title:
        fig.suptitle(title, fontsize=11)
    return fig


def write_outputs(results: dict[str, Any], out: Path) -> dict[str, Path]:
    """``results.json``, ``report.md`` and ``pr_curves.png`` in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    meta = results["meta"]
    files = {"json": write_atomic(out / "results.json", json.dumps(results, indent=1))}
    files["figure"] = save_figure(
        pr_figure(results["methods"], f"{results['images']} synthetic images, {meta['size']}"),
        out / "pr_curves.png",
    )
    md = [
        "# MagicPoint and classical detectors on synthetic shapes",
        "",
        "```",
        meta["command"],
        "```",
        "",
        f"{results['images']} held-out images of `SyntheticShapes` (seed {meta['seed']}, "
        f"{meta['size']}), {results['n_gt']} ground-truth corners "
        f"({results['images_without_corners']} images have none: ellipses, noise).",
    ]
    if meta.get("model"):
        md += [
            "",
            f"MagicPoint: `{meta.get('checkpoint')}` (step {meta.get('step')}, "
            f"{meta.get('train_minutes')} min of training).",
        ]
    md += [
        "",
        "Every score map normalised per image to [0, 1] (negatives clipped, divided by the "
        f"maximum), then NMS radius {meta['nms_radius']} px, scores > {meta['min_score']}. "
        f"A detection is correct within {meta['distance_threshold']} px of a ground-truth "
        "corner, each corner matched once (greedy by decreasing score). mAP = area under "
        "the interpolated precision-recall curve of all detections pooled over images; "
        "P/R/F1 and localization error (mean distance of the correct detections) at each "
        "method's best-F1 score threshold. `<name>-raw`: the same detector without the "
        "per-image normalisation (raw responses; MagicPoint's probabilities), which does not "
        "give images without corners (ellipses, noise) a detection of score 1. map ms/img: "
        "time of the score map alone (the NMS is the same for all), single-threaded if run "
        "with `OMP_NUM_THREADS=1`.",
        "",
        markdown_table(results["methods"]),
        "",
        "![precision-recall curves](pr_curves.png)",
        "",
        "## Average precision per primitive",
        "",
        primitive_table(results["primitives"], results["primitive_counts"]),
        "",
    ]
    files["markdown"] = write_atomic(out / "report.md", "\n".join(md))
    return files


def _checkpoint_meta(path: Path) -> dict[str, Any]:
    """Checkpoint file, method, step and training minutes of a checkpoint or run folder."""
    from keypointlab.io.checkpoint import load_checkpoint, load_latest

    found = load_latest(path) if path.is_dir() else (path, load_checkpoint(path))
    if found is None:
        return {}
    ckpt, state = found
    return {
        "checkpoint": str(ckpt),
        "method": state.get("method"),
        "step": state.get("step"),
        "train_minutes": round(state.get("train_seconds", 0.0) / 60, 1),
    }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, help="MagicPoint checkpoint or run folder")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--n", type=int, default=500, help="test images")
    parser.add_argument("--size", default="120x160", help="HxW of the test images")
    parser.add_argument("--seed", type=int, default=TEST_SEED, help="test-set stream")
    parser.add_argument("--distance", type=float, default=DISTANCE_THRESHOLD, help="px")
    parser.add_argument("--nms", type=int, default=NMS_RADIUS, help="NMS radius, px")
    parser.add_argument("--min-score", type=float, default=MIN_SCORE)
    parser.add_argument("--fast-threshold", type=int, default=FAST_THRESHOLD)
    parser.add_argument("--no-raw", action="store_true", help="skip the <name>-raw rows")
    parser.add_argument("--no-progress", action="store_true")
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)

    h, w = (int(v) for v in args.size.lower().split("x"))
    detectors = []
    meta: dict[str, Any] = {}
    if args.model is not None:
        from keypointlab.adaptation import load_trained_model

        model = load_trained_model(args.model)
        detectors.append(magicpoint_detector(model))
        meta.update(model=str(args.model), **_checkpoint_meta(args.model))
    detectors += classical_detectors(args.fast_threshold)
    if not args.no_raw:
        detectors = with_raw(detectors)
    results = run_benchmark(
        detectors,
        n=args.n,
        size=(h, w),
        seed=args.seed,
        distance=args.distance,
        nms_radius=args.nms,
        min_score=args.min_score,
        progress=not args.no_progress,
    )
    script = os.path.relpath(Path(__file__).resolve())
    results["meta"] = {
        "command": shlex.join(["python", script, *argv]),
        "size": f"{h}x{w}",
        "seed": args.seed,
        "distance_threshold": args.distance,
        "nms_radius": args.nms,
        "min_score": args.min_score,
        "fast_threshold": args.fast_threshold,
        "harris": {"block_size": BLOCK_SIZE, "aperture": APERTURE, "k": HARRIS_K},
        "torch_threads": torch.get_num_threads(),
        **meta,
    }
    results = {"meta": results.pop("meta"), **results}
    write_outputs(results, args.out)
    print(markdown_table(results["methods"]))
    print(f"wrote {args.out}/results.json, report.md, pr_curves.png")
    return results


if __name__ == "__main__":
    main()
