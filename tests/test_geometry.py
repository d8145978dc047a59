"""Tests of keypointlab.geometry: warping, sampling, resizing, corner error, validity."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from keypointlab.geometry import (
    HomographyConfig,
    InvalidHomographyError,
    check_homography,
    corner_error,
    image_corners,
    inside_image,
    resize_scale,
    sample_homography,
    scale_homography,
    warp_image,
    warp_image_torch,
    warp_points,
)

# A generic homography with rotation, scale, shear and perspective (det != 0).
H_GENERIC = np.array(
    [
        [0.9, -0.15, 12.0],
        [0.2, 1.1, -7.5],
        [1.5e-4, -2.0e-4, 1.0],
    ]
)

SIZES = [(240, 320), (100, 100), (480, 200), (37, 53)]


def _rng_points(n: int, seed: int = 0, scale: float = 300.0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, scale, size=(n, 2))


# --------------------------------------------------------------------------- warp_points


def test_warp_points_numpy_matches_manual_projection():
    pts = np.array([[0.0, 0.0], [10.0, 20.0], [300.0, 5.0]])
    out = warp_points(pts, H_GENERIC)
    for p, q in zip(pts, out, strict=True):
        v = H_GENERIC @ np.array([p[0], p[1], 1.0])
        np.testing.assert_allclose(q, v[:2] / v[2], rtol=1e-12)


def test_warp_points_numpy_and_torch_agree():
    pts = _rng_points(50)
    out_np = warp_points(pts, H_GENERIC)
    out_t = warp_points(torch.from_numpy(pts), torch.from_numpy(H_GENERIC))
    assert isinstance(out_t, torch.Tensor)
    assert out_t.shape == (50, 2)
    np.testing.assert_allclose(out_t.numpy(), out_np, rtol=1e-12, atol=1e-9)
    # torch points with a numpy homography, float32
    out_t32 = warp_points(torch.from_numpy(pts).float(), H_GENERIC)
    assert out_t32.dtype == torch.float32
    np.testing.assert_allclose(out_t32.numpy(), out_np, rtol=1e-4, atol=1e-3)


def test_warp_points_batched():
    rng = np.random.default_rng(1)
    pts = rng.uniform(0, 200, size=(3, 17, 2))
    Hs = np.stack([H_GENERIC, np.eye(3), np.linalg.inv(H_GENERIC)])
    expected = np.stack([warp_points(pts[b], Hs[b]) for b in range(3)])
    out_np = warp_points(pts, Hs)
    assert out_np.shape == (3, 17, 2)
    np.testing.assert_allclose(out_np, expected, rtol=1e-12)
    out_t = warp_points(torch.from_numpy(pts), torch.from_numpy(Hs))
    assert out_t.shape == (3, 17, 2)
    np.testing.assert_allclose(out_t.numpy(), expected, rtol=1e-12, atol=1e-9)
    # one homography broadcast over a batch of point sets
    out_b = warp_points(torch.from_numpy(pts), torch.from_numpy(H_GENERIC))
    np.testing.assert_allclose(out_b.numpy(), warp_points(pts, H_GENERIC), rtol=1e-12)


def test_warp_points_round_trip():
    pts = _rng_points(100, seed=3)
    back = warp_points(warp_points(pts, H_GENERIC), np.linalg.inv(H_GENERIC))
    np.testing.assert_allclose(back, pts, atol=1e-9)
    pts_t = torch.from_numpy(pts)
    back_t = warp_points(
        warp_points(pts_t, H_GENERIC), torch.linalg.inv(torch.from_numpy(H_GENERIC))
    )
    np.testing.assert_allclose(back_t.numpy(), pts, atol=1e-9)


# --------------------------------------------------------------------------- sample_homography


def test_sample_homography_deterministic_and_seed_dependent():
    size = (240, 320)
    a = sample_homography(size, np.random.default_rng(42))
    b = sample_homography(size, np.random.default_rng(42))
    c = sample_homography(size, np.random.default_rng(43))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    assert a.shape == (3, 3) and a.dtype == np.float64
    assert a[2, 2] == pytest.approx(1.0)
    check_homography(a)
    # a sequence from one generator is not constant
    rng = np.random.default_rng(0)
    samples = [sample_homography(size, rng) for _ in range(5)]
    assert len({s.tobytes() for s in samples}) == 5


@pytest.mark.parametrize("size", SIZES)
def test_sample_homography_without_artifacts_stays_inside_view0(size):
    """View 1's corners, warped back by H^-1, must lie in view 0 (no black borders)."""
    h, w = size
    rng = np.random.default_rng(123)
    tol = 1e-3  # float32 rounding in cv2.getPerspectiveTransform
    zooms = 0
    r = HomographyConfig().patch_ratio
    m = (1 - r) / 2
    zoom = np.array([[1 / r, 0, -m * (w - 1) / r], [0, 1 / r, -m * (h - 1) / r], [0, 0, 1]])
    for _ in range(200):
        H = sample_homography(size, rng, HomographyConfig(allow_artifacts=False))
        back = warp_points(image_corners(size), np.linalg.inv(H))
        assert np.all(back >= -tol), back
        assert np.all(back[:, 0] <= w - 1 + tol), back
        assert np.all(back[:, 1] <= h - 1 + tol), back
        zooms += np.allclose(H, zoom, atol=1e-6)
    # the sampler must not fall back to its undistorted last resort most of the time
    assert zooms < 20


def test_sample_homography_pure_zoom_when_everything_is_off():
    size = (240, 320)
    h, w = size
    cfg = HomographyConfig(
        perspective=False, scaling=False, rotation=False, translation=False, patch_ratio=0.5
    )
    H1 = sample_homography(size, np.random.default_rng(0), cfg)
    H2 = sample_homography(size, np.random.default_rng(99), cfg)
    # centred patch [0.25, 0.75] * (w-1, h-1) of view 0 stretched onto view 1: x1 = 2 x0 - 0.5 (w-1)
    expected = np.array([[2.0, 0.0, -0.5 * (w - 1)], [0.0, 2.0, -0.5 * (h - 1)], [0.0, 0.0, 1.0]])
    np.testing.assert_allclose(H1, expected, atol=1e-4)
    np.testing.assert_allclose(H2, expected, atol=1e-4)
    # the centre of view 0 stays the centre of view 1
    c = np.array([[(w - 1) / 2, (h - 1) / 2]])
    np.testing.assert_allclose(warp_points(c, H1), c, atol=1e-3)


def _is_similarity(H: np.ndarray, tol: float = 1e-3) -> bool:
    A = H[:2, :2] / H[2, 2]
    return (
        abs(H[2, 0]) < 1e-7  # float32 rounding in cv2.getPerspectiveTransform
        and abs(H[2, 1]) < 1e-7
        and abs(A[0, 0] - A[1, 1]) < tol
        and abs(A[0, 1] + A[1, 0]) < tol
    )


def test_sample_homography_toggles():
    size = (200, 200)
    rng = np.random.default_rng(5)
    base = dict(perspective=False, scaling=False, rotation=False, translation=False)
    r = 0.5
    # only translation: pure zoom by 1/r plus a translation that differs between samples
    Hs = [
        sample_homography(
            size, rng, HomographyConfig(**{**base, "translation": True}, patch_ratio=r)
        )
        for _ in range(20)
    ]
    for H in Hs:
        np.testing.assert_allclose(H[:2, :2], np.eye(2) / r, atol=1e-4)
        np.testing.assert_allclose(H[2], [0, 0, 1], atol=1e-7)
    assert np.ptp([H[0, 2] for H in Hs]) > 10
    # only scaling: diagonal, isotropic, various zooms
    Hs = [
        sample_homography(size, rng, HomographyConfig(**{**base, "scaling": True}, patch_ratio=r))
        for _ in range(20)
    ]
    for H in Hs:
        assert abs(H[0, 1]) < 1e-6 and abs(H[1, 0]) < 1e-6
        assert H[0, 0] == pytest.approx(H[1, 1], rel=1e-4)
    assert np.ptp([H[0, 0] for H in Hs]) > 0.05
    # only rotation (square image): a similarity with a non-zero angle
    Hs = [
        sample_homography(size, rng, HomographyConfig(**{**base, "rotation": True}, patch_ratio=r))
        for _ in range(20)
    ]
    assert all(_is_similarity(H) for H in Hs)
    assert max(abs(math.atan2(H[1, 0], H[0, 0])) for H in Hs) > 0.1
    # only perspective: a non-affine homography
    Hs = [
        sample_homography(
            size, rng, HomographyConfig(**{**base, "perspective": True}, patch_ratio=0.7)
        )
        for _ in range(20)
    ]
    assert max(np.abs(H[2, :2]).max() for H in Hs) > 1e-5


def test_sample_homography_max_angle():
    size = (256, 256)
    rng = np.random.default_rng(7)
    max_angle = 0.3
    cfg = HomographyConfig(
        perspective=False,
        scaling=False,
        translation=False,
        rotation=True,
        max_angle=max_angle,
        allow_artifacts=True,
    )
    angles = []
    for _ in range(200):
        H = sample_homography(size, rng, cfg)
        assert _is_similarity(H)
        angles.append(math.atan2(H[1, 0], H[0, 0]))
    angles = np.abs(angles)
    assert angles.max() <= max_angle + 1e-3
    assert angles.max() > 0.9 * max_angle  # the range is used, not only small angles


# --------------------------------------------------------------------------- resizing


def test_resize_scale():
    assert resize_scale((480, 640), (240, 320)) == (0.5, 0.5)
    # (sx, sy) = (new_w / old_w, new_h / old_h) from (h, w) sizes
    assert resize_scale((100, 400), (50, 100)) == (0.25, 0.5)
    assert resize_scale((600, 800), (240, 320)) == pytest.approx((0.4, 0.4))


@pytest.mark.parametrize(
    "size1, size2, target1, target2",
    [
        ((600, 800), (500, 700), (240, 320), (240, 320)),  # different originals, same target
        ((600, 800), (600, 800), (240, 320), (480, 640)),  # same originals, different targets
        ((640, 800), (700, 880), (300, 250), (123, 456)),  # anisotropic scales everywhere
    ],
)
def test_scale_homography_keeps_correspondences_exact(size1, size2, target1, target2):
    """The protocol's rule: after a resize a known correspondence must stay exact."""
    x1 = np.random.default_rng(0).uniform(0, 1, size=(20, 2)) * [size1[1] - 1, size1[0] - 1]
    x2 = warp_points(x1, H_GENERIC)  # x2 = H x1 in the original images
    s1 = resize_scale(size1, target1)
    s2 = resize_scale(size2, target2)
    H_new = scale_homography(H_GENERIC, s1, s2)
    np.testing.assert_allclose(warp_points(x1 * s1, H_new), x2 * s2, rtol=1e-10, atol=1e-9)
    # and the explicit formula of PROTOCOL.md
    expected = np.diag([s2[0], s2[1], 1]) @ H_GENERIC @ np.diag([1 / s1[0], 1 / s1[1], 1])
    np.testing.assert_allclose(H_new, expected, rtol=1e-12)
    # the inverse direction works too
    np.testing.assert_allclose(
        warp_points(x2 * s2, np.linalg.inv(H_new)), x1 * s1, rtol=1e-9, atol=1e-8
    )


# --------------------------------------------------------------------------- corner error


def test_corner_error_hand_computed():
    size = (11, 21)  # corners (0,0) (20,0) (0,10) (20,10)
    T = np.array([[1.0, 0, 3], [0, 1, 4], [0, 0, 1]])
    # every corner moves by (3, 4): distance 5
    assert corner_error(T, np.eye(3), size) == pytest.approx(5.0)
    assert corner_error(np.eye(3), T, size) == pytest.approx(5.0)
    assert corner_error(T, T, size) == 0.0
    # scaling by 2 about the origin: displacements 0, 20, 10, sqrt(20^2+10^2)
    S = np.diag([2.0, 2.0, 1.0])
    expected = (0 + 20 + 10 + math.sqrt(500)) / 4  # 13.0902
    assert corner_error(S, np.eye(3), size) == pytest.approx(expected)
    # a homography is defined up to scale
    assert corner_error(3 * T, T, size) == pytest.approx(0.0, abs=1e-12)
    assert corner_error(None, np.eye(3), size) == math.inf
    assert corner_error(np.full((3, 3), np.nan), np.eye(3), size) == math.inf


def test_image_corners_convention():
    np.testing.assert_array_equal(
        image_corners((240, 320)), [[0, 0], [319, 0], [0, 239], [319, 239]]
    )


# --------------------------------------------------------------------------- validity


def test_check_homography_accepts_valid():
    out = check_homography(np.eye(3, dtype=np.float32) * 1e-9)  # tiny but invertible scale
    assert out.dtype == np.float64
    assert out.shape == (3, 3)
    check_homography(H_GENERIC.tolist())


@pytest.mark.parametrize(
    "H, words",
    [
        (np.array([[1, 0, 0], [0, np.nan, 0], [0, 0, 1]]), "non-finite"),
        (np.array([[1, 0, 0], [0, 1, np.inf], [0, 0, 1]]), "non-finite"),
        (np.array([[1, 2, 3], [2, 4, 6], [0, 0, 1]]), "singular"),
        (np.zeros((3, 3)), "singular"),
        (np.eye(2), "3x3"),
        (np.ones(9), "3x3"),
        (np.ones((3, 4)), "3x3"),
    ],
)
def test_check_homography_rejects(H, words):
    with pytest.raises(InvalidHomographyError) as info:
        check_homography(H, name="seq/H_1_4")
    msg = str(info.value)
    assert "seq/H_1_4" in msg
    assert words in msg
    assert isinstance(info.value, ValueError)


# --------------------------------------------------------------------------- inside_image


def test_inside_image_boundaries():
    size = (10, 20)  # h=10, w=20: x in [0, 19], y in [0, 9]
    pts = np.array(
        [
            [19.0, 0.0],  # x = W - 1: inside
            [19.5, 0.0],  # x = W - 0.5: outside
            [20.0, 0.0],  # x = W: outside
            [-0.0, -0.0],  # negative zero: inside
            [-1e-9, 5.0],  # just left: outside
            [5.0, 9.0],  # y = H - 1: inside
            [5.0, 9.5],  # y = H - 0.5: outside
            [5.0, -0.5],  # outside
            [19.0, 9.0],  # bottom-right corner: inside
        ]
    )
    expected = [True, False, False, True, False, True, False, False, True]
    assert inside_image(pts, size).tolist() == expected
    assert inside_image(torch.from_numpy(pts), size).tolist() == expected
    # batched
    assert inside_image(np.stack([pts, pts]), size).shape == (2, len(pts))


# --------------------------------------------------------------------------- image warping


def _smooth_image(h: int, w: int) -> np.ndarray:
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    return (
        0.5 + 0.25 * np.sin(xs / 9.0) * np.cos(ys / 7.0) + 0.2 * np.sin((xs + 2 * ys) / 23.0)
    ).astype(np.float32)


def test_warp_image_torch_agrees_with_cv2_on_interior():
    h, w = 60, 80
    img = _smooth_image(h, w)
    Hs = [
        np.array([[0.95, -0.1, 6.0], [0.08, 1.05, -3.0], [2e-4, -1e-4, 1.0]]),
        np.array([[1.0, 0.0, 2.5], [0.0, 1.0, -1.25], [0.0, 0.0, 1.0]]),  # subpixel shift
    ]
    out_size = (50, 70)
    batch = torch.from_numpy(np.stack([img, img]))[:, None].double()
    out_t = warp_image_torch(batch, torch.from_numpy(np.stack(Hs)), out_size)
    assert out_t.shape == (2, 1, *out_size)
    for b, H in enumerate(Hs):
        ref = warp_image(img, H, out_size)
        assert ref.shape == out_size
        # interior: output pixels whose source lies at least 2 px inside view 0
        ys, xs = np.mgrid[0 : out_size[0], 0 : out_size[1]]
        grid = np.stack([xs.ravel(), ys.ravel()], 1).astype(np.float64)
        src = warp_points(grid, np.linalg.inv(H)).reshape(*out_size, 2)
        interior = (
            (src[..., 0] >= 2)
            & (src[..., 0] <= w - 3)
            & (src[..., 1] >= 2)
            & (src[..., 1] <= h - 3)
        )
        assert interior.sum() > 0.5 * interior.size
        diff = np.abs(out_t[b, 0].numpy() - ref)[interior]
        # cv2 quantises sub-pixel positions to 1/32 px; the image varies slowly
        assert diff.max() < 1e-2, diff.max()
        # outside view 0 the torch warp is zero
        outside = (src[..., 0] < -1) | (src[..., 0] > w) | (src[..., 1] < -1) | (src[..., 1] > h)
        if outside.any():
            assert np.all(out_t[b, 0].numpy()[outside] == 0)


def test_warp_image_identity_and_pixel_convention():
    img = _smooth_image(30, 40)
    out = warp_image_torch(torch.from_numpy(img)[None, None], torch.eye(3)[None], (30, 40))
    np.testing.assert_allclose(out[0, 0].numpy(), img, atol=1e-5)
    # an integer translation moves pixel (x, y) to (x + 3, y + 2)
    T = np.array([[1.0, 0, 3], [0, 1, 2], [0, 0, 1]])
    out = warp_image_torch(torch.from_numpy(img)[None, None], torch.from_numpy(T)[None], (30, 40))
    np.testing.assert_allclose(out[0, 0, 2:, 3:].numpy(), img[:-2, :-3], atol=1e-5)
    np.testing.assert_allclose(warp_image(img, T, (30, 40))[2:, 3:], img[:-2, :-3], atol=1e-5)
