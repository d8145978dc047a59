"""Tests for benchmarks/magicpoint_detectors.py: PR metrics on hand-computed cases and a
few-second smoke run of the detectors on synthetic shapes."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from keypointlab.io.checkpoint import save_checkpoint
from keypointlab.models.superpoint import MagicPoint

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "magicpoint_detectors.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("magicpoint_detectors", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


bench = _load_script()

# Image A: 3 corners. Image B: 1 corner. Pooled by score:
#   0.9 TP (A, 1 px)   0.8 FP (A)   0.7 TP (B, 1.5 px)
#   0.6 TP (A, 0 px) and 0.6 FP (B): one threshold   0.5 FP (A, its corner already taken)
GT = [np.array([[10.0, 10.0], [20.0, 20.0], [30.0, 30.0]]), np.array([[5.0, 5.0]])]
DETS = [
    np.array([[10.0, 11.0], [50.0, 50.0], [20.0, 20.0], [11.0, 10.0]]),
    np.array([[5.0, 6.5], [40.0, 40.0]]),
]
SCORES = [np.array([0.9, 0.8, 0.6, 0.5]), np.array([0.7, 0.6])]


def test_precision_recall_hand_computed():
    precision, recall, ap = bench.precision_recall(DETS, SCORES, GT, 2.0)
    # thresholds 0.9, 0.8, 0.7, 0.6, 0.5 -> (TP, kept) = (1,1) (1,2) (2,3) (3,5) (3,6), 4 GT
    np.testing.assert_allclose(precision, [1, 1 / 2, 2 / 3, 3 / 5, 1 / 2])
    np.testing.assert_allclose(recall, [1 / 4, 1 / 4, 2 / 4, 3 / 4, 3 / 4])
    # interpolated precision [1, 2/3, 2/3, 3/5, 1/2] times recall steps [1/4, 0, 1/4, 1/4, 0]
    assert ap == pytest.approx(1 / 4 + 2 / 3 / 4 + 3 / 5 / 4)  # 17/30


def test_ties_are_one_threshold_and_order_free():
    # swapping the two 0.6 detections between images changes nothing
    swapped = bench.precision_recall(DETS[::-1], SCORES[::-1], GT[::-1], 2.0)
    reference = bench.precision_recall(DETS, SCORES, GT, 2.0)
    for a, b in zip(swapped, reference, strict=True):
        np.testing.assert_allclose(a, b)


def test_best_f1_and_localization_error():
    curve = bench.pr_curve(DETS, SCORES, GT, 2.0)
    np.testing.assert_allclose(curve.thresholds, [0.9, 0.8, 0.7, 0.6, 0.5])
    op = bench.best_f1(curve)
    # F1 = 0.4, 1/3, 4/7, 2/3, 0.6: best at threshold 0.6
    assert op["threshold"] == pytest.approx(0.6)
    assert (op["precision"], op["recall"]) == pytest.approx((0.6, 0.75))
    assert op["f1"] == pytest.approx(2 / 3)
    assert op["localization_error"] == pytest.approx((1.0 + 1.5 + 0.0) / 3)


def test_match_detections_each_gt_once_nearest_free():
    gt = np.array([[0.0, 0.0], [2.0, 0.0]])
    det = np.array([[0.5, 0.0], [1.9, 0.0], [2.1, 0.0]])
    correct, errors = bench.match_detections(det, np.array([0.8, 0.9, 0.7]), gt, 2.0)
    # 1.9 (best score) takes (2, 0); 0.5 falls back on (0, 0); 2.1 finds both taken
    np.testing.assert_array_equal(correct, [True, True, False])
    np.testing.assert_allclose(errors[:2], [0.5, 0.1])
    assert np.isnan(errors[2])
    # the distance threshold is inclusive
    assert bench.match_detections(np.array([[2.0, 0.0]]), np.ones(1), gt[:1], 2.0)[0][0]


def test_empty_inputs():
    p, r, ap = bench.precision_recall([np.zeros((0, 2))], [np.zeros(0)], [GT[0]], 2.0)
    assert p.size == r.size == 0 and ap == 0.0
    p, r, ap = bench.precision_recall(DETS[:1], SCORES[:1], [np.zeros((0, 2))], 2.0)
    np.testing.assert_allclose(p, 0.0)
    np.testing.assert_allclose(r, 0.0)
    assert ap == 0.0
    assert bench.best_f1(bench.pr_curve(DETS[:1], SCORES[:1], [np.zeros((0, 2))]))["f1"] is None


def test_normalise_and_detect():
    scores = np.zeros((20, 30), np.float32)
    scores[5, 7], scores[5, 9], scores[15, 20] = 4.0, 3.0, 2.0
    scores[0, 0] = -10.0  # negative responses (Harris edges) do not count
    kp, sc = bench.detect(scores, nms_radius=4, min_score=1e-3)
    np.testing.assert_allclose(kp, [[7, 5], [20, 15]])  # (9, 5) suppressed by (7, 5)
    np.testing.assert_allclose(sc, [1.0, 0.5])
    kp, sc = bench.detect(scores, nms_radius=4, min_score=1e-3, normalise=False)
    np.testing.assert_allclose(sc, [4.0, 2.0])
    assert bench.normalise_map(np.zeros((4, 4))).max() == 0.0


def test_smoke_classical_detectors_on_five_images():
    results = bench.run_benchmark(bench.classical_detectors(), n=5, progress=False)
    assert list(results["methods"]) == ["fast", "harris", "shi-tomasi"]
    assert results["images"] == 5 and results["n_gt"] > 0
    for m in results["methods"].values():
        assert 0.0 <= m["average_precision"] <= 1.0
        assert m["detections_per_image"] > 0
        curve = m["curve"]
        assert len(curve["precision"]) == len(curve["recall"]) > 0
        assert np.all(np.diff(curve["recall"]) >= 0)
        assert np.all(np.diff(curve["threshold"]) < 0)
    # the corner detectors find the corners of synthetic shapes better than chance
    assert results["methods"]["harris"]["average_precision"] > 0.1


def test_main_writes_outputs_with_a_magicpoint_checkpoint(tmp_path: Path):
    conf = {"channels": [4, 4, 8, 8], "head_width": 8}
    state = {"method": "magicpoint", "config": {"model": conf}, "step": 7}
    state["model"] = MagicPoint(conf).state_dict()
    save_checkpoint(state, tmp_path / "run", 7)
    out = tmp_path / "out"
    results = bench.main(
        ["--model", str(tmp_path / "run"), "--n", "3", "--out", str(out), "--no-progress"]
    )
    names = ["magicpoint", "fast", "harris", "shi-tomasi"]
    assert list(results["methods"]) == names + [f"{n}-raw" for n in names]
    assert results["meta"]["step"] == 7
    assert {p.name for p in out.iterdir()} >= {"results.json", "report.md", "pr_curves.png"}
    saved = json.loads((out / "results.json").read_text())
    assert saved["methods"].keys() == results["methods"].keys()
    report = (out / "report.md").read_text()
    assert "magicpoint_detectors.py --model" in report and "| magicpoint-raw |" in report
