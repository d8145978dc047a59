"""Features that follow rotations of the image: rotated copies and their canvas."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from keypointlab.data.samples import sample_photo
from keypointlab.features import get_extractor
from keypointlab.features.learned import LearnedExtractor
from keypointlab.geometry import image_corners, rotation_canvas, warp_points
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


@pytest.mark.parametrize("rotations", [4, 8])
def test_rotated_copies_make_features_follow_a_quarter_turn(rotations: int) -> None:
    net = get_extractor("kp2d").net  # trained, so its upright features do not turn
    photo = sample_photo("astronaut", (96, 128))
    turned = np.rot90(photo).copy()

    def pairs(ex: LearnedExtractor) -> tuple[np.ndarray, np.ndarray]:
        """Distance to and descriptor agreement with the turned image's nearest keypoint."""
        a, b = ex.extract(photo), ex.extract(turned)
        moved = _quarter_turn(a.keypoints, (96, 128))
        d = np.linalg.norm(moved[:, None] - b.keypoints[None], axis=2)
        nearest = d.argmin(1)
        cos = np.sum(a.descriptors * b.descriptors[nearest], axis=1)
        return d.min(1), cos

    dist, cos = pairs(LearnedExtractor(net, "kp2d", max_keypoints=5000, rotations=rotations))
    if rotations == 4:  # the copies are the same pixels, turned: the same features
        assert dist.max() < 1e-3 and cos.min() > 0.999
    else:  # the 45-degree copies are resampled: most features still come back
        assert np.mean((dist < 1) & (cos > 0.9)) > 0.8
    dist, cos = pairs(LearnedExtractor(net, "kp2d", max_keypoints=5000))
    assert np.mean((dist < 1) & (cos > 0.9)) < 0.2  # upright only: they do not


def test_rotations_option() -> None:
    torch.manual_seed(0)
    net = KeyPointNet(
        {"channels": [4, 8, 8, 16], "descriptor_dim": 16, "stem_stride": 2, "upsample_width": 8}
    )
    photo = sample_photo("astronaut", (96, 128))
    ex = LearnedExtractor(net, "tiny", max_keypoints=50, rotations=8)
    assert ex.name == "tiny+rot8"
    f = ex.extract(photo)
    assert f.descriptors.shape == (50, 16)
    assert np.all(f.keypoints >= 0) and np.all(f.keypoints <= [127, 95])
    assert np.allclose(np.linalg.norm(f.descriptors, axis=1), 1, atol=1e-5)
    with pytest.raises(ValueError, match="rotations"):
        LearnedExtractor(net, "tiny", rotations=0)
    assert get_extractor("sift", rotations=8).name == "sift"  # OpenCV has its own


def test_extract_command_takes_rotations(tmp_path) -> None:
    import cv2
    import h5py

    from keypointlab.cli import main

    (tmp_path / "images").mkdir()
    photo = sample_photo("astronaut", (96, 128))
    cv2.imwrite(str(tmp_path / "images" / "a.png"), cv2.cvtColor(photo, cv2.COLOR_RGB2BGR))
    out = tmp_path / "feats.h5"
    args = ["extract", str(tmp_path / "images"), "--out", str(out), "--features", "kp2d"]
    assert main([*args, "--scales", "1", "--rotations", "4", "--quiet"]) == 0
    expected = get_extractor("kp2d", scales=(1.0,), rotations=4).extract(photo)
    with h5py.File(out) as h5:
        assert np.allclose(h5["a.png"]["keypoints"][()], expected.keypoints, atol=1e-4)
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--rotations", "x"])
    assert exit_info.value.code == 2
