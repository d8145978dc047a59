"""Keypoint orientations and descriptors that turn with the image."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from keypointlab.data.samples import sample_photo
from keypointlab.features import get_extractor
from keypointlab.features.learned import DenseExtractor
from keypointlab.features.orientation import centroid_orientation
from keypointlab.geometry import image_corners, rotation_canvas, warp_points
from keypointlab.geometry.keypoints import sample_descriptors
from keypointlab.models.kp2d import KeyPointNet


def _quarter_turn(points: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Where pixel xy of an image of ``size`` lands after ``np.rot90`` (counter-clockwise)."""
    _, w = size
    return np.stack([points[:, 1], w - 1 - points[:, 0]], axis=1)


@pytest.mark.parametrize("degrees", [0, 30, 90, 135, 180, 290])
def test_rotation_canvas_holds_the_image_and_turns_the_direction_to_x(degrees: int) -> None:
    angle = math.radians(degrees)
    H, (h, w) = rotation_canvas((240, 320), angle)
    corners = warp_points(image_corners((240, 320)), H)
    assert corners.min(axis=0) == pytest.approx([0, 0], abs=1e-9)
    assert np.all(corners.max(axis=0) <= np.array([w - 1, h - 1]) + 1e-9)
    assert np.all(corners.max(axis=0) > [w - 2, h - 2])  # the smallest such canvas
    p = np.array([[100.0, 50.0]])
    step = warp_points(p + [math.cos(angle), math.sin(angle)], H) - warp_points(p, H)
    assert step[0] == pytest.approx([1, 0], abs=1e-9)
    if degrees == 90:
        assert (h, w) == (320, 240)


def test_centroid_orientation_points_to_the_bright_side_and_turns_with_the_image() -> None:
    image = np.zeros((64, 80), np.uint8)
    image[20:30, 50:60] = 255  # a bright square up and right of (32, 32)
    angle = centroid_orientation(image, np.array([[32.0, 32.0]]))[0]
    expected = math.atan2(24.5 - 32, 54.5 - 32)
    assert abs(angle - expected) < math.radians(3)

    photo = sample_photo("astronaut", (96, 128))
    points = np.array([[20.0, 30.0], [64.0, 48.0], [101.5, 70.25]])
    before = centroid_orientation(photo, points)
    after = centroid_orientation(np.rot90(photo).copy(), _quarter_turn(points, (96, 128)))
    turn = np.angle(np.exp(1j * (after - before)))
    assert turn == pytest.approx([-math.pi / 2] * 3, abs=1e-4)


@pytest.fixture(scope="module")
def net() -> KeyPointNet:
    torch.manual_seed(0)
    return KeyPointNet(
        {"channels": [4, 8, 8, 16], "descriptor_dim": 16, "stem_stride": 2, "upsample_width": 8}
    )


def test_rotated_descriptors_follow_a_quarter_turn() -> None:
    net = get_extractor("kp2d").net  # trained: its upright descriptors do not turn
    photo = sample_photo("astronaut", (96, 128))
    turned = np.rot90(photo).copy()
    points = np.array([[20.0, 30.0], [64.0, 48.0], [101.5, 70.25], [40.0, 80.0]])
    moved = _quarter_turn(points, (96, 128))
    rotating = DenseExtractor(net, "tiny", orientations=4, upright_weight=0)
    upright = DenseExtractor(net, "tiny")

    def describe(ex: DenseExtractor, image: np.ndarray, xy: np.ndarray, rotate: bool):
        kp = torch.from_numpy(xy).float()
        if rotate:
            return ex._rotated_descriptors(image, kp, 128).numpy()
        out, padded = ex._forward(image)
        return sample_descriptors(out["descriptors"], kp[None], padded)[0].numpy()

    with torch.inference_mode():
        a = describe(rotating, photo, points, True)
        b = describe(rotating, turned, moved, True)
        ua = describe(upright, photo, points, False)
        ub = describe(upright, turned, moved, False)
    assert np.allclose(np.linalg.norm(a, axis=1), 1, atol=1e-5)
    # the same pixels rotated the same way: equal up to interpolation round-off
    assert np.sum(a * b, axis=1).min() > 0.999
    # while the upright descriptors of the two views differ
    assert np.sum(ua * ub, axis=1).max() < 0.9


def test_orientations_option(net: KeyPointNet) -> None:
    photo = sample_photo("astronaut", (96, 128))
    both = DenseExtractor(net, "tiny", max_keypoints=50, orientations=8)
    assert both.name == "tiny+rot8"
    f = both.extract(photo)
    assert f.descriptors.shape == (50, 32)  # upright and rotated, concatenated
    assert np.allclose(np.linalg.norm(f.descriptors, axis=1), 1, atol=1e-5)
    only = DenseExtractor(net, "tiny", max_keypoints=50, orientations=8, upright_weight=0)
    assert only.extract(photo).descriptors.shape == (50, 16)
    with pytest.raises(ValueError, match="orientations"):
        DenseExtractor(net, "tiny", orientations=1)
    assert get_extractor("sift", orientations=8).name == "sift"  # OpenCV has its own
