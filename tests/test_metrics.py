"""Every protocol metric against a case computed by hand (see shared/PROTOCOL.md)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from keypointlab.evaluation import metrics as M
from keypointlab.evaluation.benchmark import BenchmarkResult, PairResult
from keypointlab.features.base import Features
from keypointlab.geometry import inside_image, warp_points

SIZE = (100, 100)  # (h, w): inside means 0 <= x, y <= 99
I3 = np.eye(3)


def shift(dx: float, dy: float = 0.0) -> np.ndarray:
    return np.array([[1.0, 0.0, dx], [0.0, 1.0, dy], [0.0, 0.0, 1.0]])


def feats(kp, scores=None, desc=None, size=SIZE) -> Features:
    kp = np.asarray(kp, dtype=np.float64).reshape(-1, 2)
    n = len(kp)
    scores = np.ones(n) if scores is None else scores
    desc = np.eye(n, max(n, 1), dtype=np.float32) if desc is None else desc
    return Features(kp, scores, desc, size)


def empty(size=SIZE, dim: int = 4) -> Features:
    return Features(np.zeros((0, 2)), np.zeros(0), np.zeros((0, dim), np.float32), size)


# --------------------------------------------------------------------------- repeatability


def test_repeatability_identity_with_offsets():
    f1 = feats([(10, 10), (50, 50), (80, 80)])
    f2 = feats([(11, 10), (52.5, 50), (84, 80)])
    r = M.repeatability(f1, f2, I3, top_k=300)
    # min distances image 1 -> 2: 1, 2.5, 4 (only 1 and 2.5 are <= 3): c1 = 2
    # min distances image 2 -> 1: 1, 2.5, 4: c2 = 2; rep = (2 + 2) / (3 + 3)
    assert r.repeatability == pytest.approx(4 / 6)
    # localization error: mean of 1, 2.5, 1, 2.5
    assert r.localization_error == pytest.approx(1.75)
    assert r.num_keypoints == (3, 3)


def test_repeatability_counts_each_direction():
    # two image-1 points share one image-2 neighbour at distance 1
    f1 = feats([(10, 10), (12, 10)])
    f2 = feats([(11, 10), (60, 60)])
    r = M.repeatability(f1, f2, I3, None)
    # c1 = 2 (both within 1 px of (11, 10)), c2 = 1 ((60, 60) is far): rep = 3 / 4
    assert r.repeatability == pytest.approx(0.75)
    assert r.localization_error == pytest.approx(1.0)  # mean of 1, 1, 1


def test_repeatability_threshold_is_inclusive():
    r = M.repeatability(feats([(20, 20)]), feats([(23, 20)]), I3, None)
    assert r.repeatability == 1.0  # distance exactly 3 counts
    assert r.localization_error == pytest.approx(3.0)
    r = M.repeatability(feats([(20, 20)]), feats([(23.001, 20)]), I3, None)
    assert r.repeatability == 0.0
    assert r.localization_error is None  # not NaN


def test_repeatability_visibility_filter():
    H = shift(50)  # image 1 -> image 2 moves x by +50
    # image 1: A -> (60, 10) inside image 2, B -> (110, 20) outside, C -> (80, 40) inside
    f1 = feats([(10, 10), (60, 20), (30, 40)])
    # image 2: A' 1 px from warped A, C' 2 px from warped C, D' -> (-40, 10) outside image 1
    f2 = feats([(61, 10), (82, 40), (10, 10)])
    r = M.repeatability(f1, f2, H, None)
    # only A, C and A', C' remain: c1 = c2 = 2, rep = 4 / 4, loc = mean(1, 2, 1, 2)
    assert r.num_keypoints == (2, 2)
    assert r.repeatability == pytest.approx(1.0)
    assert r.localization_error == pytest.approx(1.5)


def test_repeatability_uses_each_images_own_bounds():
    f1 = feats([(10, 10), (10, 70)], size=(100, 100))
    f2 = feats([(10, 11), (150, 10)], size=(50, 200))
    r = M.repeatability(f1, f2, I3, None)
    # (10, 70) is outside image 2 (y > 49); (150, 10) is outside image 1 (x > 99)
    assert r.num_keypoints == (1, 1)
    assert r.repeatability == 1.0
    assert r.localization_error == pytest.approx(1.0)


def test_repeatability_top_k_by_score_ties_keep_order():
    f1 = feats([(10, 10), (20, 20), (30, 30), (40, 40)], scores=np.array([0.5, 0.9, 0.9, 0.9]))
    f2 = feats([(20, 20), (30, 30)])
    # top-2 of image 1 is (20, 20), (30, 30): the tie at 0.9 keeps the first two
    np.testing.assert_array_equal(f1.top_k(2).keypoints, [[20, 20], [30, 30]])
    r = M.repeatability(f1, f2, I3, top_k=2)
    assert r.num_keypoints == (2, 2)
    assert r.repeatability == 1.0  # with (40, 40) instead of (30, 30) it would be 0.5
    assert r.localization_error == 0.0


def test_top_k_ties_keep_extractor_order_many_points():
    # enough points for numpy's default (unstable) sort to reorder ties
    scores = np.random.default_rng(0).integers(0, 3, 300).astype(np.float64)
    kp = np.stack([np.arange(300.0), np.zeros(300)], axis=1)
    f = Features(kp, scores, np.zeros((300, 2), np.float32), SIZE)
    expected = np.concatenate([np.flatnonzero(scores == v) for v in (2, 1, 0)])
    np.testing.assert_array_equal(f.top_k(150).keypoints[:, 0], expected[:150])
    np.testing.assert_array_equal(f.top_k(None).keypoints[:, 0], expected)
    np.testing.assert_array_equal(f.top_k(1000).keypoints[:, 0], expected)


def test_repeatability_visibility_before_top_k():
    H = shift(50)
    # the best point of image 1 is not visible in image 2; top-1 must take the next one
    f1 = feats([(60, 20), (10, 10)], scores=np.array([1.0, 0.5]))
    f2 = feats([(60, 10)])
    r = M.repeatability(f1, f2, H, top_k=1)
    assert r.num_keypoints == (1, 1)
    assert r.repeatability == 1.0


@pytest.mark.parametrize("which", ["first", "second", "both", "invisible"])
def test_repeatability_empty(which):
    some = feats([(10, 10), (20, 20)])
    if which == "first":
        f1, f2, H = empty(), some, I3
    elif which == "second":
        f1, f2, H = some, empty(), I3
    elif which == "both":
        f1, f2, H = empty(), empty(), I3
    else:  # every point leaves the other image
        f1, f2, H = some, some, shift(1000)
    r = M.repeatability(f1, f2, H, 300)
    assert r.repeatability == 0.0
    assert r.localization_error is None
    assert not math.isnan(r.repeatability)


# --------------------------------------------------------------------------- matching score


def _ms_case():
    # H moves x by +10. Descriptors pair A-A', B-B', C-C', E-E' (one-hot); F resembles C.
    t1 = feats(
        [(10, 10), (30, 30), (50, 50), (95, 50), (70, 70)],  # A B C E F
        desc=np.array(
            [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1], [0, 0, 0.9, 0.1]], np.float32
        ),
    )
    t2 = feats([(22, 10), (43, 30), (60, 50), (5, 80)])  # A' B' C' E'
    return t1, t2, shift(10)


def test_matching_score_hand_case():
    t1, t2, H = _ms_case()
    # From image 1: A->A' back to (12, 10), 2 px: correct. B->B' back to (33, 30), exactly
    # 3 px: visible, not correct (strict < 3). C->C' back to (50, 50): correct. E->E' back to
    # (-5, 80): not visible, not counted. F->C' back to (50, 50), 28 px: visible, wrong.
    # s1 = 2 / 4.
    # From image 2: A'->A to (20, 10), 2 px: correct. B'->B to (40, 30), 3 px: wrong.
    # C'->C to (60, 50): correct. E'->E to (105, 50): not visible. s2 = 2 / 3.
    expected = (2 / 4 + 2 / 3) / 2  # 0.58333
    assert M.matching_score(t1, t2, H, top_k=300) == pytest.approx(expected)
    assert M.matching_score(t1, t2, H, top_k=None) == pytest.approx(expected)


def test_matching_score_strict_boundary():
    t1, t2, H = _ms_case()
    kp = t2.keypoints.copy()
    kp[1] = (42.999, 30)  # B' now 2.999 px from B in both directions: correct
    t2b = Features(kp, t2.scores, t2.descriptors, t2.image_size)
    # s1 = 3 / 4, s2 = 3 / 3
    assert M.matching_score(t1, t2b, H, None) == pytest.approx((3 / 4 + 1.0) / 2)


def test_matching_score_top_k_and_empty():
    t1, t2, H = _ms_case()
    # top-1 of each by score: F (image 1) and C' (image 2). F->C' back to (50, 50), 28 px
    # from F: s1 = 0 / 1; C'->F to (80, 70), 28 px from C': s2 = 0 / 1.
    s1 = np.array([0.1, 0.1, 0.1, 0.1, 0.9])
    s2 = np.array([0.1, 0.1, 0.9, 0.1])
    a = Features(t1.keypoints, s1, t1.descriptors, SIZE)
    b = Features(t2.keypoints, s2, t2.descriptors, SIZE)
    assert M.matching_score(a, b, H, 1) == 0.0
    # top-2: image 1 keeps F then A (tie at 0.1 keeps order); image 2 keeps C' then A'.
    # F->C' wrong (visible); A->A' correct: s1 = 1/2. C'->C? C is not in the top-2, so
    # C'->F (desc distance 0.14 < 1): wrong; A'->A correct: s2 = 1/2.
    assert M.matching_score(a, b, H, 2) == pytest.approx(0.5)
    assert M.matching_score(empty(), t2, H, 300) == 0.0
    assert M.matching_score(t1, empty(), H, 300) == 0.0


def test_matching_score_nothing_visible():
    # all matched points land outside the other image: s = 0 / max(0, 1) = 0, not NaN
    t1 = feats([(10, 10)])
    t2 = feats([(10, 10)])
    assert M.matching_score(t1, t2, shift(500), 10) == 0.0


# --------------------------------------------------------------------------- MMA


def test_mean_matching_accuracy_hand_case():
    # Five mutual matches P_i <-> Q_i (one-hot descriptors) with errors 0.5, 1, 2.5, 3, 7.
    # P5 resembles P0 but Q0's nearest neighbour is P0: P5's match is not mutual, left out.
    d1 = np.zeros((6, 6), np.float32)
    d1[:5, :5] = np.eye(5)
    d1[5] = [0.9, 0, 0, 0, 0, 0.1]
    t1 = Features(
        [(10, 10), (30, 10), (50, 10), (70, 10), (90, 10), (10, 50)], np.ones(6), d1, SIZE
    )
    t2 = feats([(10.5, 10), (31, 10), (52.5, 10), (73, 10), (97, 10)], desc=np.eye(5, 6))
    mma = M.mean_matching_accuracy(t1, t2, I3, 300)
    # t=1,2: {0.5, 1} -> 2/5; t=3..6: {0.5, 1, 2.5, 3} -> 4/5; t>=7: all 5
    expected = [0.4, 0.4, 0.8, 0.8, 0.8, 0.8, 1.0, 1.0, 1.0, 1.0]
    np.testing.assert_allclose(mma, expected)
    np.testing.assert_allclose(
        M.mean_matching_accuracy(t1, t2, I3, 300, thresholds=(0.5, 2.5)), [1 / 5, 3 / 5]
    )
    # through a homography: move image 2 by +20 in x, errors unchanged
    t2s = Features(t2.keypoints + [20, 0], t2.scores, t2.descriptors, SIZE)
    np.testing.assert_allclose(M.mean_matching_accuracy(t1, t2s, shift(20), 300), expected)


def test_mean_matching_accuracy_no_matches():
    out = M.mean_matching_accuracy(empty(dim=5), feats([(1, 1)], desc=np.ones((1, 5))), I3, 300)
    assert out.shape == (10,)
    np.testing.assert_array_equal(out, np.zeros(10))


# --------------------------------------------------------------------------- homography


H_TRUE = np.array([[1.02, 0.03, 5.0], [-0.02, 0.98, 3.0], [1e-4, 5e-5, 1.0]])


def _exact_pair(n_extra_invisible: bool = True):
    size = (120, 160)
    xs, ys = np.meshgrid(np.linspace(20, 130, 5), np.linspace(20, 100, 4))
    p1 = np.stack([xs.ravel(), ys.ravel()], 1)
    p2 = warp_points(p1, H_TRUE)
    n = len(p1)
    desc = np.eye(n + 1, dtype=np.float32)
    kp1, kp2 = p1, p2
    d1, d2 = desc[:n], desc[:n]
    if n_extra_invisible:
        # a point of image 1 that leaves image 2 and one of image 2 that leaves image 1,
        # with identical descriptors: they would match if the visibility filter were missing
        kp1 = np.vstack([p1, [[159, 119]]])
        kp2 = np.vstack([p2, [[0, 0]]])
        d1, d2 = desc, desc
    f1 = Features(kp1, np.ones(len(kp1)), d1, size)
    f2 = Features(kp2, np.ones(len(kp2)), d2, size)
    return f1, f2


def test_homography_corner_error_exact():
    f1, f2 = _exact_pair()
    assert not inside_image(warp_points(f1.keypoints[-1:], H_TRUE), (120, 160)).any()
    err, n = M.homography_corner_error(f1, f2, H_TRUE, 300)
    assert n == 20  # the two invisible points are filtered before matching
    assert err < 1e-4  # OpenCV fits in float32


def test_homography_corner_error_too_few_matches():
    f1, f2 = _exact_pair(False)
    err, n = M.homography_corner_error(
        f1.select(np.arange(3)), f2.select(np.arange(3)), H_TRUE, 300
    )
    assert (err, n) == (math.inf, 3)
    err, n = M.homography_corner_error(empty(), f2, H_TRUE, 300)
    assert (err, n) == (math.inf, 0)


# --------------------------------------------------------------------------- AUC and accuracy


def test_error_auc_hand_case():
    # Recall curve through (0, 0), (0.5, 1/3), (2, 2/3), flat after (inf never recalled).
    # t=1: trapezoids [0, 0.5]: 0.5 * (0 + 1/3) / 2 = 1/12; [0.5, 1]: 0.5 * 1/3 = 1/6
    #      -> 3/12 / 1 = 0.25
    # t=3: 1/12 + [0.5, 2]: 1.5 * (1/3 + 2/3) / 2 = 0.75 + [2, 3]: 2/3 -> 1.5 / 3 = 0.5
    # t=5: 1/12 + 0.75 + [2, 5]: 3 * 2/3 = 2 -> 2.8333 / 5 = 0.56667
    expected = [0.25, 0.5, 17 / 30]
    np.testing.assert_allclose(M.error_auc(np.array([0.5, 2.0, math.inf]), (1, 3, 5)), expected)
    np.testing.assert_allclose(M.error_auc([math.inf, 2.0, 0.5], (1, 3, 5)), expected)
    np.testing.assert_allclose(M.error_auc([0.0, 0.0], (1, 3)), [1.0, 1.0])
    assert M.error_auc([math.inf, math.inf], (1, 3, 5)) == [0.0, 0.0, 0.0]
    assert M.error_auc([], (1, 3, 5)) == [0.0, 0.0, 0.0]


def test_homography_accuracy():
    errors = np.array([0.5, 2.0, math.inf])
    assert M.homography_accuracy(errors, 1) == pytest.approx(1 / 3)
    assert M.homography_accuracy(errors, 3) == pytest.approx(2 / 3)
    assert M.homography_accuracy(errors, 5) == pytest.approx(2 / 3)
    assert M.homography_accuracy([1.0], 1) == 1.0  # d <= eps
    assert M.homography_accuracy([], 1) == 0.0


def test_finite_or_none():
    assert M.finite_or_none(1.5) == 1.5
    assert M.finite_or_none(math.inf) is None
    assert M.finite_or_none(None) is None


# --------------------------------------------------------------------------- summary


def _pair(seq, split, rep, loc, corner, ms, mma, nkp=(10, 10)) -> PairResult:
    return PairResult(seq, split, (1, 2), rep, loc, corner, ms, list(mma), nkp, 5)


def _result() -> BenchmarkResult:
    r = BenchmarkResult("m", "240x320", 300)
    r.pairs = [
        _pair("i_a", "illumination", 0.5, 1.0, 0.5, 0.2, np.linspace(0.1, 1.0, 10)),
        _pair("i_b", "illumination", 0.0, None, math.inf, 0.0, np.zeros(10), nkp=(0, 5)),
        _pair("v_c", "viewpoint", 1.0, 2.0, 2.0, 0.6, np.ones(10)),
    ]
    r.extraction_times = [0.1, 0.3]
    r.matching_times = [0.02, 0.04, 0.06]
    return r


def _no_nan(obj) -> bool:
    if isinstance(obj, dict):
        return all(_no_nan(v) for v in obj.values())
    if isinstance(obj, list | tuple):
        return all(_no_nan(v) for v in obj)
    if isinstance(obj, float):
        return not math.isnan(obj)
    return True


def test_summary_all_pairs():
    s = _result().summary()
    assert s["repeatability"] == pytest.approx(0.5)  # (0.5 + 0 + 1) / 3
    assert s["localization_error"] == pytest.approx(1.5)  # None left out: (1 + 2) / 2
    assert s["pairs_without_localization"] == 1
    assert s["pairs_without_keypoints"] == 1
    assert s["pairs"] == 3
    # corner errors 0.5, inf, 2: same as the AUC hand case
    assert s["homography_accuracy_1"] == pytest.approx(1 / 3)
    assert s["homography_accuracy_3"] == pytest.approx(2 / 3)
    assert s["homography_accuracy_5"] == pytest.approx(2 / 3)
    assert s["homography_auc_1"] == pytest.approx(0.25)
    assert s["homography_auc_3"] == pytest.approx(0.5)
    assert s["homography_auc_5"] == pytest.approx(17 / 30)
    assert s["matching_score"] == pytest.approx(0.8 / 3)
    assert s["mma_3"] == pytest.approx((0.3 + 0 + 1) / 3)
    np.testing.assert_allclose(s["mma"], (np.linspace(0.1, 1, 10) + 1) / 3)
    assert s["extraction_time_per_image"] == pytest.approx(0.2)
    assert s["matching_time_per_pair"] == pytest.approx(0.04)
    assert _no_nan(s)


def test_summary_by_split():
    r = _result()
    s = r.summary("illumination")
    assert s["pairs"] == 2
    assert s["repeatability"] == pytest.approx(0.25)
    assert s["localization_error"] == pytest.approx(1.0)
    assert s["homography_accuracy_1"] == pytest.approx(0.5)
    assert s["homography_accuracy_5"] == pytest.approx(0.5)
    assert s["matching_score"] == pytest.approx(0.1)
    assert s["mma_3"] == pytest.approx(0.15)
    assert "extraction_time_per_image" not in s
    v = r.summary("viewpoint")
    assert v["pairs"] == 1
    assert v["repeatability"] == 1.0
    assert (v["homography_accuracy_1"], v["homography_accuracy_3"]) == (0.0, 1.0)
    o = r.summary("other")
    assert o["pairs"] == 0
    assert o["repeatability"] == 0.0 and o["localization_error"] == 0.0
    assert o["mma"] == [0.0] * 10
    assert _no_nan(o)


def test_summary_without_pairs_and_to_dict():
    r = BenchmarkResult("m", "original", 300)
    s = r.summary()
    assert s["pairs"] == 0
    assert _no_nan(s)
    assert all(s[k] == 0.0 for k in ("repeatability", "localization_error", "matching_score"))
    assert all(s[f"homography_auc_{e}"] == 0.0 for e in (1, 3, 5))
    d = _result().to_dict()
    assert d["pairs"][1]["corner_error"] is None  # inf is not JSON
    assert set(d["splits"]) == {"illumination", "viewpoint"}
    json.dumps(d, allow_nan=False)
    json.dumps(r.to_dict(), allow_nan=False)
