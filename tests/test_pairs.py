"""Homographic training pairs: crop scale and view 1 rendered from the source image."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from keypointlab.data.pairs import HomographicPairs, random_crop_with_matrix, render_view
from keypointlab.data.samples import sample_photo
from keypointlab.geometry import warp_image

SIZE = (60, 80)
ZOOM = {"patch_ratio": 0.5, "rotation": False, "perspective": False, "scaling": False}


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return sample_photo("astronaut", (240, 320))


def _items(dataset: HomographicPairs, n: int):
    for i in range(n):
        item = dataset[i]
        v0 = (item["image0"].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        v1 = (item["image1"].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        yield v0, v1, item["H_0to1"].numpy().astype(np.float64)


def test_crop_scale_bounds_the_crop_side(photo: np.ndarray) -> None:
    rng = np.random.default_rng(0)
    sides = []
    for _ in range(200):
        _, m = random_crop_with_matrix(photo, SIZE, rng, (0.25, 0.5))
        sides.append(SIZE[1] / m[0, 0] / 320)  # crop width over the largest crop's
    sides = np.array(sides)
    assert sides.min() >= 0.25 - 0.02 and sides.max() <= 0.5 + 0.02
    assert sides.min() < 0.3 and sides.max() > 0.45  # the range is used, not one value
    with pytest.raises(ValueError, match="crop scale"):
        random_crop_with_matrix(photo, SIZE, rng, (0.0, 1.0))


def test_view1_from_source_is_aligned_and_sharper(photo: np.ndarray) -> None:
    plain = HomographicPairs([photo], SIZE, ZOOM, None, seed=3, crop_scale=(1.0, 1.0))
    source = HomographicPairs(
        [photo], SIZE, ZOOM, None, seed=3, crop_scale=(1.0, 1.0), render_from_source=True
    )
    for (a0, a1, Ha), (b0, b1, Hb) in zip(_items(plain, 3), _items(source, 3), strict=True):
        np.testing.assert_array_equal(a0, b0)  # same view 0 and homography
        np.testing.assert_allclose(Ha, Hb)
        # view 1 of the source: same content (low-pass equal) ...
        blur = [cv2.GaussianBlur(v.astype(np.float32), (0, 0), 2.0) for v in (a1, b1)]
        assert np.abs(blur[0] - blur[1])[8:-8, 8:-8].mean() < 4.0
        # ... with more detail than view 0 upsampled 2x (higher gradient energy)
        lap = [
            np.abs(cv2.Laplacian(cv2.cvtColor(v, cv2.COLOR_RGB2GRAY), cv2.CV_32F)).mean()
            for v in (a1, b1)
        ]
        assert lap[1] > 1.5 * lap[0]


def test_render_view_antialiases_a_zoom_out() -> None:
    stripes = np.zeros((120, 160), np.uint8)
    stripes[:, ::2] = 255  # highest horizontal frequency
    shrink = np.diag([0.25, 0.25, 1.0])
    plain = warp_image(stripes, shrink, (30, 40)).astype(np.float32)
    filtered = render_view(stripes, shrink, (30, 40)).astype(np.float32)
    # every 4th column is a stripe: the plain warp aliases to (nearly) all white
    assert plain[2:-2, 2:-2].mean() > 200
    # low-passed first, it shows the stripes' mean grey
    assert abs(filtered[2:-2, 2:-2].mean() - 127.5) < 20
    assert filtered[2:-2, 2:-2].std() < 20
