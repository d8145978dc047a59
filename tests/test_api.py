"""The Python API: README's five lines run as printed; every input kind; bad input is clear."""

from __future__ import annotations

import functools
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import keypointlab as kl
from keypointlab.data.images import ImageReadError
from keypointlab.geometry import warp_points

README = Path(__file__).resolve().parents[1] / "README.md"
H_TRUE = np.array([[1.04, 0.02, 6.0], [-0.02, 1.0, 4.0], [2e-5, 0.0, 1.0]])
H_IMG, W_IMG = 120, 160


@functools.cache
def _photo() -> np.ndarray:
    """A textured RGB uint8 image (scikit-image's astronaut) at 120x160."""
    import skimage.data

    return cv2.resize(skimage.data.astronaut(), (W_IMG, H_IMG), interpolation=cv2.INTER_AREA)


def _write_png(path: Path, rgb: np.ndarray) -> Path:
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return path


def _readme_api_snippet() -> str:
    text = README.read_text()
    section = text.split("## Python API", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "README's Python API section has no python code block"
    return match.group(1)


def test_readme_snippet_runs_as_printed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    code = _readme_api_snippet()
    assert "import keypointlab as kl" in code
    outputs = re.findall(r"savefig\(\s*\"([^\"]+)\"", code)
    inputs = sorted(set(re.findall(r"\"([^\"]+\.(?:png|jpg|ppm))\"", code)) - set(outputs))
    assert len(inputs) == 2 and len(outputs) == 1, (inputs, outputs)
    # the snippet's own file names, created in tmp_path: image 2 is image 1 under H_TRUE
    monkeypatch.chdir(tmp_path)
    photo = cv2.resize(_photo(), (320, 240), interpolation=cv2.INTER_AREA)
    for name in inputs:  # the snippet may name images inside the demo's report folder
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
    _write_png(tmp_path / inputs[0], photo)
    _write_png(tmp_path / inputs[1], cv2.warpPerspective(photo, H_TRUE, (320, 240)))

    namespace: dict = {}
    exec(compile(code, str(README), "exec"), namespace)

    assert (tmp_path / outputs[0]).stat().st_size > 0
    assert cv2.imread(str(tmp_path / outputs[0])) is not None
    result, matches = namespace["result"], namespace["matches"]
    assert matches.ndim == 2 and matches.shape[1] == 2 and len(matches) >= 20
    assert result.success and result.num_inliers >= 20
    corners = np.array([[0, 0], [319, 0], [0, 239], [319, 239]], float)
    err = np.linalg.norm(warp_points(corners, result.H) - warp_points(corners, H_TRUE), axis=1)
    assert err.max() < 2.0


# ---------------------------------------------------------------------------------------------
# input kinds: every spelling of the same picture gives the same features


def _variants(tmp_path: Path) -> dict[str, object]:
    rgb = _photo()
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 77, np.uint8)])
    chw = torch.from_numpy(rgb).permute(2, 0, 1)
    return {
        "path str": str(_write_png(tmp_path / "img.png", rgb)),
        "path Path": tmp_path / "img.png",
        "rgb uint8": rgb,
        "grey uint8": grey,
        "grey (H,W,1)": grey[..., None],
        "rgba uint8": rgba,
        "rgb uint16": rgb.astype(np.uint16) * 257,
        "grey uint16": grey.astype(np.uint16) * 257,
        "rgb big-endian uint16": (rgb.astype(np.uint16) * 257).astype(">u2"),
        "rgb float32": rgb.astype(np.float32) / 255,
        "grey float64": grey / 255.0,
        "rgb non-contiguous": np.ascontiguousarray(rgb[:, ::-1])[:, ::-1],
        "tensor (3,H,W) uint8": chw,
        "tensor (3,H,W) float": chw.float() / 255,
        "tensor (1,3,H,W) float": (chw.float() / 255)[None],
        "tensor (1,H,W) float": torch.from_numpy(grey).float()[None] / 255,
        "tensor (H,W) uint8": torch.from_numpy(grey),
        "tensor requires_grad": (chw.float() / 255).requires_grad_(),
    }


@pytest.mark.parametrize("name", ["sift", "orb"])
def test_extract_accepts_every_input_kind(name: str, tmp_path: Path) -> None:
    extractor = kl.load_extractor(name)
    reference = extractor.extract(_photo())
    assert len(reference) > 20 and reference.image_size == (H_IMG, W_IMG)
    for kind, image in _variants(tmp_path).items():
        f = extractor.extract(image)
        assert f.image_size == (H_IMG, W_IMG), kind
        np.testing.assert_array_equal(f.keypoints, reference.keypoints, err_msg=kind)
        np.testing.assert_array_equal(f.scores, reference.scores, err_msg=kind)
        np.testing.assert_array_equal(f.descriptors, reference.descriptors, err_msg=kind)


def test_bfloat16_tensor(tmp_path: Path) -> None:
    """numpy has no bfloat16: such a tensor is converted, not refused with a numpy error."""
    t = torch.from_numpy(_photo()).permute(2, 0, 1).to(torch.bfloat16) / 255
    f = kl.load_extractor("sift").extract(t)
    assert f.image_size == (H_IMG, W_IMG) and len(f) > 20


@pytest.mark.parametrize(
    ("image", "error", "needle"),
    [
        (torch.zeros(2, 3, 32, 32), ValueError, "batch"),
        (np.zeros(100, np.uint8), ImageReadError, "shape (100,)"),
        (np.zeros((32, 32, 2), np.uint8), ImageReadError, "shape (32, 32, 2)"),
        (np.zeros((2, 32, 32, 3), np.uint8), ImageReadError, "shape"),
        (np.zeros((0, 32), np.uint8), ImageReadError, "zero size"),
        (np.zeros((32, 32), np.int32), ImageReadError, "dtype int32"),
        (np.zeros((32, 32), np.complex64), ImageReadError, "dtype complex64"),
        (np.full((32, 32), np.nan, np.float32), ImageReadError, "non-finite"),
        (torch.zeros(3, 32, 32, dtype=torch.int64), ImageReadError, "dtype int64"),
        ([[0, 1], [2, 3]], TypeError, "list"),
    ],
    ids=lambda v: None if isinstance(v, (np.ndarray, torch.Tensor, list)) else str(v),
)
def test_bad_inputs_raise_clear_errors(image: object, error: type, needle: str) -> None:
    with pytest.raises(error) as info:
        kl.load_extractor("sift").extract(image)
    assert needle in str(info.value)


def test_bad_paths_name_the_file(tmp_path: Path) -> None:
    extractor = kl.load_extractor("sift")
    text = tmp_path / "notes.png"
    text.write_text("hello")
    for path in (tmp_path / "missing.png", text):
        with pytest.raises(ImageReadError, match=re.escape(str(path))):
            extractor.extract(path)


def test_unknown_extractor_lists_known_names() -> None:
    with pytest.raises(KeyError, match="available: .*sift.*orb"):
        kl.load_extractor("nosuchfeature")


def test_match_and_estimate_never_raise_on_few_keypoints() -> None:
    extractor = kl.load_extractor("sift")
    empty = extractor.extract(np.zeros((32, 32), np.uint8))
    full = extractor.extract(_photo())
    assert len(empty) == 0
    for f0, f1 in ((empty, full), (full, empty), (empty, empty)):
        m = kl.match(f0, f1)
        assert m.shape == (0, 2)
        result = kl.estimate(f0, f1, m)
        assert not result.success and result.reason
    fig = kl.draw_matches(np.zeros((32, 32), np.uint8), _photo(), empty, full, m, result)
    assert fig is not None


# ---------------------------------------------------------------------------------------------
# property: random shapes, channels, dtypes and containers -> valid Features or a clear error


@st.composite
def images(draw: st.DrawFn) -> object:
    h = draw(st.integers(1, 80))
    w = draw(st.integers(1, 80))
    channels = draw(st.sampled_from([None, 1, 3, 4]))
    dtype = draw(st.sampled_from(["uint8", "uint16", "float32"]))
    pattern = draw(st.sampled_from(["noise", "blobs", "constant", "checker"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    shape = (h, w) if channels is None else (h, w, channels)
    if pattern == "noise":
        x = rng.random(shape)
    elif pattern == "blobs":
        x = cv2.GaussianBlur(rng.random(shape).astype(np.float32), (0, 0), 2.0).reshape(shape)
        x = (x - x.min()) / max(float(x.max() - x.min()), 1e-6)
    elif pattern == "constant":
        x = np.full(shape, rng.random())
    else:
        ys, xs = np.indices((h, w))
        x = (((ys // 4) + (xs // 4)) % 2).astype(np.float64)
        x = x if channels is None else np.repeat(x[..., None], channels, axis=2)
    x = np.clip(x, 0.0, 1.0)
    if dtype == "uint8":
        arr: np.ndarray = (x * 255).astype(np.uint8)
    elif dtype == "uint16":
        arr = (x * 65535).astype(np.uint16)
    else:
        arr = x.astype(np.float32)
    if draw(st.booleans()):  # as a torch tensor, channels first
        t = torch.from_numpy(np.ascontiguousarray(arr))
        return t.permute(2, 0, 1) if t.ndim == 3 else t
    return arr


@pytest.mark.parametrize(("name", "dim"), [("sift", 128), ("orb", 256)])
@settings(max_examples=25, deadline=None)
@given(image=images())
def test_extract_property(name: str, dim: int, image: object) -> None:
    if isinstance(image, torch.Tensor):
        h, w = image.shape[-2:] if image.ndim == 3 else image.shape
    else:
        h, w = image.shape[:2]
    try:
        f = kl.load_extractor(name).extract(image)
    except (ImageReadError, ValueError) as exc:
        assert str(exc).strip()
        return
    assert isinstance(f, kl.Features)
    assert f.image_size == (h, w)
    n = len(f)
    assert f.keypoints.shape == (n, 2) and f.scores.shape == (n,)
    assert f.descriptors.shape == (n, dim) and f.descriptors.dtype == np.float32
    assert np.all(np.isfinite(f.keypoints)) and np.all(np.isfinite(f.scores))
    assert np.all(np.isfinite(f.descriptors))
    x, y = f.keypoints.T
    assert np.all((x >= 0) & (x <= w - 1) & (y >= 0) & (y <= h - 1)), f.keypoints
    top = f.top_k(5)
    assert len(top) == min(5, n) and np.all(np.diff(top.scores) <= 0)


def test_a_shipped_name_can_reuse_another_models_weights(tmp_path, monkeypatch) -> None:
    """``<name>.json`` with ``weights: other`` runs ``other``'s tensors with its own model
    options (``d2net_ms`` is ``d2net`` at the paper's pyramid); a name whose tensors are
    missing is not listed."""
    import json
    import shutil

    from keypointlab.models import loading

    for ext in ("json", "safetensors"):
        shutil.copy(loading.WEIGHTS_DIR / f"kp2d_fast.{ext}", tmp_path / f"kp2d_fast.{ext}")
    meta = json.loads((tmp_path / "kp2d_fast.json").read_text())
    (tmp_path / "alias.json").write_text(json.dumps({**meta, "weights": "kp2d_fast"}))
    (tmp_path / "orphan.json").write_text(json.dumps({**meta, "weights": "missing"}))
    (tmp_path / "broken.json").write_text("{not json")
    monkeypatch.setattr(loading, "WEIGHTS_DIR", tmp_path)
    assert loading.shipped_models() == ["alias", "kp2d_fast"]
    a, b = loading.load_shipped("alias"), loading.load_shipped("kp2d_fast")
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert a.name == "alias" and all(torch.equal(sa[k], sb[k]) for k in sb)
