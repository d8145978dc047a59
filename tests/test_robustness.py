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
from keypointlab.features.learned import LearnedExtractor, shipped_models
from keypointlab.models.kp2d import KeyPointNet


@pytest.fixture(scope="module")
def tiny_net() -> LearnedExtractor:
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
    return LearnedExtractor(net, "tiny")


def test_empty_folder_is_a_clear_error(tmp_path: Path, capsys) -> None:
    (tmp_path / "empty").mkdir()
    assert main(["extract", str(tmp_path / "empty"), "--out", str(tmp_path / "f.h5")]) == 2
    assert "empty" in capsys.readouterr().err
    assert main(["evaluate", "--features", "sift", "--data", str(tmp_path / "empty")]) == 2


def test_zero_size_image_is_refused() -> None:
    with pytest.raises(ImageReadError, match="zero size"):
        to_rgb_uint8(np.zeros((0, 5, 3), np.uint8))


def test_image_smaller_than_the_stride_names_its_size(tiny_net: LearnedExtractor) -> None:
    with pytest.raises(ValueError, match="7x30"):
        tiny_net.extract(np.zeros((7, 30, 3), np.uint8))


@pytest.mark.parametrize("shape", [(17, 23), (33, 65, 4)])
def test_learned_extractor_pads_odd_sizes(tiny_net: LearnedExtractor, shape) -> None:
    rng = np.random.default_rng(0)
    image = (rng.random(shape) * 65535).astype(np.uint16)
    f = tiny_net.extract(image)
    h, w = shape[:2]
    assert f.image_size == (h, w) and len(f) > 0
    assert np.all((f.keypoints >= 0) & (f.keypoints <= [w - 1, h - 1]))
    np.testing.assert_allclose(np.linalg.norm(f.descriptors, axis=1), 1, atol=1e-5)


def test_very_large_image(tiny_net: LearnedExtractor) -> None:
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
    from keypointlab.models.loading import WEIGHTS_DIR

    if name not in shipped_models():
        pytest.skip("no weights shipped in keypointlab/weights")
    assert (WEIGHTS_DIR / f"{name}.md").is_file(), f"{name}: shipped without a model card"
    f = get_extractor(name).extract(sample_photo("astronaut", (240, 320)))
    model = json.loads((WEIGHTS_DIR / f"{name}.json").read_text())["model"]
    conf = model.get("keypoint_net", model)
    # D2-Net: its last width; DELF: its PCA's
    dim = conf.get("descriptor_dim") or conf.get("pca_dim") or conf["channels"][-1]
    assert len(f) > 100 and f.descriptors.shape == (len(f), dim)
    assert np.all(f.keypoints >= 0) and np.all(f.keypoints <= [319, 239])
    assert np.allclose(np.linalg.norm(f.descriptors, axis=1), 1, atol=1e-4)


class _BrightestPixel(torch.nn.Module):
    """A hand-made dense 'network': per 8x8 cell, the brightest pixel and its brightness."""

    def forward(self, data: dict) -> dict:
        grey = data["image"].mean(1, keepdim=True)  # (1, 1, H, W)
        b, _, h, w = grey.shape
        cells = grey.reshape(b, h // 8, 8, w // 8, 8).permute(0, 1, 3, 2, 4).flatten(3)
        best, idx = cells.max(-1)  # (1, Hc, Wc)
        ys = torch.arange(h // 8).view(-1, 1) * 8 + idx // 8
        xs = torch.arange(w // 8).view(1, -1) * 8 + idx % 8
        keypoints = torch.stack([xs, ys], 1).float()  # (1, 2, Hc, Wc)
        return {"scores": best[:, None], "keypoints": keypoints, "descriptors": grey + 1}


def test_multi_scale_keypoints_come_back_to_image_pixels() -> None:
    image = np.zeros((64, 96, 3), np.uint8)
    dots = {(20, 12): 250, (71, 40): 200}  # (x, y): brightness
    for (x, y), v in dots.items():
        image[y - 1 : y + 2, x - 1 : x + 2] = v - 60  # 3x3 dots survive resizing ...
        image[y, x] = v  # ... and peak at their centre
    single = LearnedExtractor(_BrightestPixel(), "dots", max_keypoints=2)
    multi = LearnedExtractor(_BrightestPixel(), "dots", max_keypoints=6, scales=(2.0, 1.0, 0.5))
    assert multi.name == "dots@2,1,0.5"
    found = sorted(map(tuple, single.extract(image).keypoints))
    assert found == sorted((float(x), float(y)) for x, y in dots)
    f = multi.extract(image)
    bright = f.keypoints[f.scores > 0.5]
    assert len(bright) == 6  # each dot at each of the three scales
    # every one lies on a dot in the image's own pixels (resizing moves the peak a little)
    d = np.linalg.norm(bright[:, None] - np.array(list(dots), float)[None], axis=2).min(1)
    assert d.max() <= 1.5
    assert {int(np.argmin(np.linalg.norm(np.array(list(dots)) - k, axis=1))) for k in bright} == {
        0,
        1,
    }


def test_scales_option_is_checked(capsys) -> None:
    with pytest.raises(ValueError, match="scales"):
        LearnedExtractor(_BrightestPixel(), "dots", scales=(1.0, 0.0))
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", "--data", ".", "--features", "sift", "--scales", "1,x"])
    assert exit_info.value.code == 2
    assert "--scales '1,x'" in capsys.readouterr().err
