"""Inputs at the edges: empty folders, zero-size, tiny and very large images, 16-bit/RGBA
through the learned extractor, and the shipped model loading without a network."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from keypointlab.cli import main
from keypointlab.data.images import ImageReadError, to_rgb_uint8
from keypointlab.features import get_extractor
from keypointlab.features.learned import DenseExtractor, shipped_models
from keypointlab.models.kp2d import KeyPointNet


@pytest.fixture(scope="module")
def tiny_net() -> DenseExtractor:
    torch.manual_seed(0)
    net = KeyPointNet(
        {
            "channels": [4, 4, 8, 8],
            "descriptor_dim": 8,
            "stem_stride": 2,
            "shared_head": True,
            "upsample_width": 4,
        }
    )
    return DenseExtractor(net, "tiny")


def test_empty_folder_is_a_clear_error(tmp_path: Path, capsys) -> None:
    (tmp_path / "empty").mkdir()
    assert main(["extract", str(tmp_path / "empty"), "--out", str(tmp_path / "f.h5")]) == 2
    assert "empty" in capsys.readouterr().err
    assert main(["evaluate", "--features", "sift", "--data", str(tmp_path / "empty")]) == 2


def test_zero_size_image_is_refused() -> None:
    with pytest.raises(ImageReadError, match="zero size"):
        to_rgb_uint8(np.zeros((0, 5, 3), np.uint8))


def test_image_smaller_than_the_stride_names_its_size(tiny_net: DenseExtractor) -> None:
    with pytest.raises(ValueError, match="7x30"):
        tiny_net.extract(np.zeros((7, 30, 3), np.uint8))


@pytest.mark.parametrize("shape", [(17, 23), (33, 65, 4)])
def test_learned_extractor_pads_odd_sizes(tiny_net: DenseExtractor, shape) -> None:
    rng = np.random.default_rng(0)
    image = (rng.random(shape) * 65535).astype(np.uint16)
    f = tiny_net.extract(image)
    h, w = shape[:2]
    assert f.image_size == (h, w) and len(f) > 0
    assert np.all((f.keypoints >= 0) & (f.keypoints <= [w - 1, h - 1]))
    np.testing.assert_allclose(np.linalg.norm(f.descriptors, axis=1), 1, atol=1e-5)


def test_very_large_image(tiny_net: DenseExtractor) -> None:
    rng = np.random.default_rng(0)
    image = cv2.GaussianBlur((rng.random((3000, 4000)) * 255).astype(np.uint8), (5, 5), 0)
    for extractor in (get_extractor("orb"), tiny_net):
        f = extractor.extract(image)
        assert f.image_size == (3000, 4000) and len(f) > 0
        assert np.all(f.keypoints <= [3999, 2999])


@pytest.mark.parametrize("name", shipped_models() or ["(none shipped)"])
def test_shipped_model_loads_offline_and_extracts(name: str) -> None:
    import json

    from keypointlab.data.samples import sample_photo
    from keypointlab.features.learned import WEIGHTS_DIR

    if name not in shipped_models():
        pytest.skip("no weights shipped in keypointlab/weights")
    assert (WEIGHTS_DIR / f"{name}.md").is_file(), f"{name}: shipped without a model card"
    f = get_extractor(name).extract(sample_photo("astronaut", (240, 320)))
    model = json.loads((WEIGHTS_DIR / f"{name}.json").read_text())["model"]
    dim = model.get("keypoint_net", model).get("descriptor_dim")
    assert len(f) > 100 and f.descriptors.shape == (len(f), dim)
    assert np.all(f.keypoints >= 0) and np.all(f.keypoints <= [319, 239])
    assert np.allclose(np.linalg.norm(f.descriptors, axis=1), 1, atol=1e-4)
