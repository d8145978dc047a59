"""Tests of keypointlab.matching: nearest-neighbour matching and robust homographies."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from keypointlab.geometry import corner_error, warp_points
from keypointlab.matching import (
    descriptor_distances,
    estimate_homography,
    match_nn,
    matches_to_pairs,
)


def _t(x) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float64)


# --------------------------------------------------------------------------- match_nn


def test_mutual_and_not_mutual():
    # desc0 = 0 and 1, desc1 = 0.9: both pick desc1[0]; desc1[0]'s nearest is desc0[1]
    d0, d1 = _t([[0.0], [1.0]]), _t([[0.9]])
    assert match_nn(d0, d1, mutual=False).tolist() == [0, 0]
    assert match_nn(d0, d1, mutual=True).tolist() == [-1, 0]
    assert match_nn(d0, d1).tolist() == [-1, 0]  # mutual by default


def test_mutual_two_by_two_cross():
    d0, d1 = _t([[0.0], [5.0], [10.0]]), _t([[1.0], [9.0]])
    # nn01: 0->0, 5->0 (tie 4 vs 4, lowest index), 10->1; nn10: 1->0, 9->2
    assert match_nn(d0, d1, mutual=False).tolist() == [0, 0, 1]
    assert match_nn(d0, d1).tolist() == [0, -1, 1]


def test_ratio_test():
    d0, d1 = _t([[0.0]]), _t([[1.0], [1.5], [10.0]])  # best 1, second 1.5 -> ratio 0.667
    assert match_nn(d0, d1, mutual=False, ratio=0.8).tolist() == [0]
    assert match_nn(d0, d1, mutual=False, ratio=0.6).tolist() == [-1]
    # strict: best < ratio * second; 2 vs 4 at ratio 0.5 is equality and fails
    one = _t([[0.0]])
    assert match_nn(one, _t([[2.0], [4.0]]), mutual=False, ratio=0.5).tolist() == [-1]
    assert match_nn(one, _t([[2.0], [4.0]]), mutual=False, ratio=0.5 + 1e-9).tolist() == [0]
    # one candidate only: nothing passes a ratio test
    assert match_nn(_t([[0.0]]), _t([[1.0]]), mutual=False, ratio=0.99).tolist() == [-1]
    # the ratio test is combined with the mutual check
    d0, d1 = _t([[0.0], [1.0]]), _t([[0.9], [5.0]])
    assert match_nn(d0, d1, mutual=True, ratio=0.9).tolist() == [-1, 0]


def test_max_distance():
    d0, d1 = _t([[0.0, 0.0]]), _t([[3.0, 4.0]])  # distance 5
    assert match_nn(d0, d1, max_distance=5.0).tolist() == [0]  # inclusive
    assert match_nn(d0, d1, max_distance=4.99).tolist() == [-1]
    d0 = _t([[0.0, 0.0], [10.0, 0.0]])
    d1 = _t([[0.0, 1.0], [10.0, 3.0]])
    assert match_nn(d0, d1, max_distance=2.0).tolist() == [0, -1]


@pytest.mark.parametrize(
    "shape0, shape1, expected",
    [
        ((0, 4), (5, 4), (0,)),
        ((3, 4), (0, 4), (3,)),
        ((0, 4), (0, 4), (0,)),
        ((2, 3, 4), (2, 0, 4), (2, 3)),
        ((2, 0, 4), (2, 5, 4), (2, 0)),
    ],
)
def test_empty_inputs(shape0, shape1, expected):
    m = match_nn(np.zeros(shape0, np.float32), np.zeros(shape1, np.float32), ratio=0.8)
    assert tuple(m.shape) == expected
    assert m.dtype == torch.int64
    assert bool((m == -1).all())
    assert tuple(matches_to_pairs(m.reshape(-1)).shape) == (0, 2)


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"mutual": False},
        {"ratio": 0.9},
        {"max_distance": 1.2},
        {"ratio": 0.95, "mutual": False},
    ],
)
def test_batched_equals_per_item(kwargs):
    g = torch.Generator().manual_seed(0)
    d0 = torch.randn(4, 30, 8, generator=g)
    d1 = torch.randn(4, 25, 8, generator=g)
    batched = match_nn(d0, d1, **kwargs)
    assert batched.shape == (4, 30)
    for b in range(4):
        assert torch.equal(batched[b], match_nn(d0[b], d1[b], **kwargs))
    assert (batched >= 0).any()


def test_per_item_against_brute_force():
    rng = np.random.default_rng(1)
    d0, d1 = rng.normal(size=(40, 6)), rng.normal(size=(35, 6))
    D = np.sqrt(((d0[:, None] - d1[None]) ** 2).sum(-1))
    nn01, nn10 = D.argmin(1), D.argmin(0)
    expected = np.where(nn10[nn01] == np.arange(40), nn01, -1)
    np.testing.assert_array_equal(match_nn(d0, d1).numpy(), expected)
    np.testing.assert_array_equal(match_nn(d0, d1, mutual=False).numpy(), nn01)


def test_ties_go_to_lowest_index():
    d0, d1 = _t([[0.0]]), _t([[1.0], [-1.0], [1.0]])
    assert match_nn(d0, d1, mutual=False).tolist() == [0]
    # two identical queries: the mutual check keeps the first
    assert match_nn(_t([[0.0], [0.0]]), _t([[1.0]])).tolist() == [0, -1]
    # binary descriptors as 0/1 bits: Hamming ties
    bits0 = np.array([[1, 0, 0, 0]], np.uint8)
    bits1 = np.array([[0, 1, 0, 0], [0, 0, 1, 0], [1, 0, 0, 1]], np.uint8)
    # Hamming distances 2, 2, 1 -> index 2; integer input is accepted
    assert match_nn(bits0, bits1, mutual=False).tolist() == [2]
    bits1[2] = [1, 1, 1, 0]  # now 2, 2, 2 -> lowest index 0
    assert match_nn(bits0, bits1, mutual=False).tolist() == [0]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_ties_between_duplicate_real_valued_descriptors(dtype):
    """Two identical rows are exactly tied, whatever their values: the lower index wins."""
    failures = []
    for seed in range(50):
        rng = np.random.default_rng(seed)
        n1, dim = int(rng.integers(2, 60)), int(rng.choice([64, 128, 256]))
        d1 = rng.normal(size=(n1, dim)).astype(dtype)
        i, j = sorted(rng.choice(n1, 2, replace=False))
        d1[j] = d1[i]
        queries = (d1[i] + rng.normal(scale=0.3, size=(20, dim))).astype(dtype)
        if not np.all(match_nn(queries, d1, mutual=False).numpy() == i):
            failures.append((seed, "nearest"))
        # the same from the other side: duplicated queries, the mutual check keeps the first
        m = match_nn(d1, queries[:1]).numpy()
        if not (m[i] == 0 and m[j] == -1):
            failures.append((seed, "mutual"))
    assert not failures


def _hard_sets(dtype, n0: int, n1: int, dim: int, seed: int):
    """Descriptor sets full of what the matrix-product pass gets wrong unaided: exact
    duplicates (ties), near-duplicates, repeated queries, nearest and second nearest closer
    together than the product form's rounding."""
    g = torch.Generator().manual_seed(seed)
    a = torch.nn.functional.normalize(torch.randn(n0, dim, generator=g, dtype=dtype), dim=1)
    b = torch.nn.functional.normalize(torch.randn(n1, dim, generator=g, dtype=dtype), dim=1)
    b[:40] = a[:40]
    b[40:80] = a[40:80] + 1e-7 * torch.randn(40, dim, generator=g, dtype=dtype)
    b[80:90] = b[0]
    a[100:110] = a[5]
    # a query equal to b[j] with b[j - 100] a few 1e-5 away: the squared distances differ
    # by less than the product form's rounding, which then often picks the wrong one
    scale = 1e-4 if dtype == torch.float32 else 1e-12
    for j in range(300, 360):
        b[j - 100] = b[j] + scale * torch.randn(dim, generator=g, dtype=dtype)
        a[j] = b[j]
    # and six such columns around each of 20 queries: the nearest is often not among the
    # product form's first few, so the whole row must be measured exactly
    if min(n0, n1) > 520:
        for t, j in enumerate(range(500, 520)):
            a[j] = b[j]
            for r in range(6):
                b[380 + 6 * t + r] = b[j] + 0.1 * scale * torch.randn(dim, generator=g, dtype=dtype)
    return a, b


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"mutual": False},
        {"ratio": 0.8},
        {"ratio": 0.95, "mutual": False},
        {"max_distance": 0.9},
    ],
)
def test_matrix_product_pass_equals_the_exact_one(dtype, kwargs):
    a, b = _hard_sets(dtype, 600, 637, 128, seed=0)
    exact = match_nn(a, b, fast=False, **kwargs)
    fast = match_nn(a, b, fast=True, **kwargs)
    assert torch.equal(exact, fast)
    assert (fast >= 0).sum() >= 40  # the duplicates at least are matched (or kept out)
    swapped = match_nn(b, a, fast=True, **kwargs)  # more rows than columns
    assert torch.equal(match_nn(b, a, fast=False, **kwargs), swapped)


def test_matrix_product_pass_on_binary_and_large_descriptors():
    g = torch.Generator().manual_seed(3)
    bits0 = torch.randint(0, 2, (700, 256), generator=g).float()
    bits1 = torch.randint(0, 2, (650, 256), generator=g).float()
    bits1[:300] = bits0[:300]  # Hamming distances: integer, many ties
    large = torch.randn(500, 64, generator=g, dtype=torch.float64) * 1e4
    near = large[torch.randperm(500, generator=g)] + torch.randn(500, 64, dtype=torch.float64)
    for a, b in ((bits0, bits1), (large, near)):
        for kwargs in ({}, {"ratio": 0.8}):
            assert torch.equal(
                match_nn(a, b, fast=False, **kwargs), match_nn(a, b, fast=True, **kwargs)
            )


def test_matrix_product_pass_is_the_default_for_large_unbatched_sets(monkeypatch):
    from keypointlab.matching import nearest

    calls = []
    real = nearest._nearest_fast
    monkeypatch.setattr(nearest, "_nearest_fast", lambda *a: calls.append(1) or real(*a))
    a, b = _hard_sets(torch.float32, 400, 400, 32, seed=1)
    match_nn(a, b)  # 160,000 pairs >= FAST_MIN_PAIRS
    match_nn(a[:100], b[:100])  # 10,000: the exact pass
    match_nn(a[None], b[None])  # batched: the exact pass
    assert calls == [1]


def test_descriptor_distances_are_euclidean():
    a, b = _t([[0.0, 0.0], [1.0, 1.0]]), _t([[3.0, 4.0]])
    # |(0,0)-(3,4)| = 5, |(1,1)-(3,4)| = sqrt(4 + 9)
    np.testing.assert_allclose(descriptor_distances(a, b).numpy(), [[5.0], [np.sqrt(13.0)]])
    assert descriptor_distances(a, _t(np.zeros((0, 2)))).shape == (2, 0)


def test_matches_to_pairs():
    m = torch.tensor([-1, 2, -1, 0])
    pairs = matches_to_pairs(m)
    assert pairs.dtype == np.int64
    np.testing.assert_array_equal(pairs, [[1, 2], [3, 0]])
    np.testing.assert_array_equal(matches_to_pairs(np.array([0, 1, -1])), [[0, 0], [1, 1]])
    assert matches_to_pairs(np.array([-1, -1])).shape == (0, 2)


# --------------------------------------------------------------------------- estimate_homography

H_TRUE = np.array([[1.1, 0.05, 15.0], [-0.08, 0.95, 8.0], [2e-4, 1e-4, 1.0]])


def _correspondences(n: int = 40, n_out: int = 6, seed: int = 0):
    rng = np.random.default_rng(seed)
    p0 = rng.uniform(0, 300, size=(n, 2))
    p1 = warp_points(p0, H_TRUE)
    p1[:n_out] += rng.uniform(30, 80, size=(n_out, 2)) * rng.choice([-1, 1], size=(n_out, 2))
    return p0, p1


@pytest.mark.parametrize("method", ["ransac", "magsac"])
def test_recovers_known_homography(method):
    p0, p1 = _correspondences()
    est = estimate_homography(p0, p1, method=method)
    assert est.success and est.reason == ""
    assert est.H.shape == (3, 3)
    assert corner_error(est.H, H_TRUE, (240, 320)) < 1e-3
    assert not est.inliers[:6].any()
    assert est.inliers[6:].all()
    assert est.num_inliers == 34


def test_estimate_is_repeatable_with_seed():
    p0, p1 = _correspondences(n=60, n_out=25, seed=4)
    a = estimate_homography(p0, p1 + np.random.default_rng(0).normal(0, 0.5, p1.shape))
    b = estimate_homography(p0, p1 + np.random.default_rng(0).normal(0, 0.5, p1.shape))
    np.testing.assert_array_equal(a.H, b.H)
    np.testing.assert_array_equal(a.inliers, b.inliers)


@pytest.mark.parametrize("method", ["ransac", "magsac", "lmeds"])
def test_degenerate_inputs_fail_without_exception(method):
    # three points
    est = estimate_homography(np.zeros((3, 2)), np.zeros((3, 2)), method=method)
    assert not est.success and est.H is None
    assert est.inliers.shape == (3,) and not est.inliers.any()
    assert "4" in est.reason
    # no points
    est = estimate_homography(np.zeros((0, 2)), np.zeros((0, 2)), method=method)
    assert not est.success and est.inliers.shape == (0,)
    # collinear points
    x = np.linspace(0, 100, 12)
    line = np.stack([x, 2 * x + 1], axis=1)
    est = estimate_homography(line, line + 5, method=method)
    assert not est.success and est.H is None and not est.inliers.any()
    # all points identical
    same = np.tile([[10.0, 20.0]], (8, 1))
    est = estimate_homography(same, same, method=method)
    assert not est.success and est.H is None
    # NaN coordinates
    p0, p1 = _correspondences()
    p1[3, 0] = np.nan
    est = estimate_homography(p0, p1, method=method)
    assert not est.success and est.H is None
    assert "non-finite" in est.reason
    assert est.inliers.shape == (len(p0),)


def test_bad_arguments_raise():
    p0, p1 = _correspondences()
    with pytest.raises(KeyError, match="nope"):
        estimate_homography(p0, p1, method="nope")
    with pytest.raises(ValueError):
        estimate_homography(p0, p1[:-1])
