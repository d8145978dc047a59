"""Tests of keypointlab.data.images: every format becomes RGB uint8 (H, W, 3), errors name files."""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import pytest

import keypointlab.data.images as images_module
from keypointlab.data.images import (
    ImageReadError,
    list_images,
    read_image,
    read_images,
    resize_image,
    to_gray,
    to_rgb_uint8,
)

H, W = 24, 32


def _rgb() -> np.ndarray:
    """An RGB image with distinct channels: R varies with x, G with y, B is constant 200."""
    ys, xs = np.mgrid[0:H, 0:W]
    img = np.zeros((H, W, 3), np.uint8)
    img[..., 0] = xs * 7
    img[..., 1] = ys * 9 + 5
    img[..., 2] = 200
    return img


def _grey() -> np.ndarray:
    ys, xs = np.mgrid[0:H, 0:W]
    return ((xs * 5 + ys * 3) % 256).astype(np.uint8)


def _grey16() -> np.ndarray:
    ys, xs = np.mgrid[0:H, 0:W]
    # multiples of 257 map exactly to 8 bits; the offsets test rounding of v / 257
    base = ((xs * 5 + ys * 3) % 256).astype(np.uint16) * 257
    off = np.where((xs + ys) % 2 == 0, 100, -100).astype(np.int32)
    return np.clip(base.astype(np.int32) + off, 0, 65535).astype(np.uint16)


def _rgb16() -> np.ndarray:
    img = _rgb().astype(np.uint16) * 257
    img[0, 0] = (65535, 0, 128)  # 128 / 257 = 0.498 -> 0
    img[0, 1] = (129, 385, 65407)  # 0.502 -> 1, 1.498 -> 1, 254.5 -> 255 (0.5 rounds up)
    return img


def _write(path: Path, rgb_or_grey: np.ndarray) -> None:
    """Write an RGB(A) or grey array with OpenCV (which wants BGR(A))."""
    img = rgb_or_grey
    if img.ndim == 3 and img.shape[2] == 3:
        img = cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
    elif img.ndim == 3 and img.shape[2] == 4:
        img = cv2.cvtColor(img, cv2.COLOR_RGBA2BGRA)
    assert cv2.imwrite(str(path), img), path


def _expected_8bit(v16: np.ndarray) -> np.ndarray:
    return np.floor(v16.astype(np.float64) / 257.0 + 0.5).astype(np.uint8)


CASES = [
    # (extension, kind)
    ("png", "grey"),
    ("png", "rgb"),
    ("png", "rgba"),
    ("png", "grey16"),
    ("png", "rgb16"),
    ("tif", "grey"),
    ("tif", "rgb"),
    ("tif", "rgba"),
    ("tif", "grey16"),
    ("tif", "rgb16"),
    ("ppm", "rgb"),
    ("pgm", "grey"),
    ("pgm", "grey16"),
    ("bmp", "grey"),
    ("bmp", "rgb"),
    ("bmp", "rgba"),
    ("jpg", "grey"),
    ("jpg", "rgb"),
]


@pytest.mark.parametrize("ext, kind", CASES, ids=[f"{e}-{k}" for e, k in CASES])
def test_read_image_formats(tmp_path, ext, kind):
    if kind == "grey":
        data = _grey()
        expected = np.repeat(data[..., None], 3, axis=2)
    elif kind == "rgb":
        data = _rgb()
        expected = data
    elif kind == "rgba":
        rgb = _rgb()
        alpha = np.full((H, W, 1), 77, np.uint8)
        data = np.concatenate([rgb, alpha], axis=2)
        expected = rgb  # alpha dropped, not blended
    elif kind == "grey16":
        data = _grey16()
        expected = np.repeat(_expected_8bit(data)[..., None], 3, axis=2)
    else:
        data = _rgb16()
        expected = _expected_8bit(data)
    path = tmp_path / f"image.{ext}"
    _write(path, data)
    out = read_image(path)
    assert out.dtype == np.uint8
    assert out.shape == (H, W, 3)
    assert out.flags["C_CONTIGUOUS"]
    if ext == "jpg":  # lossy: close on average, and the channel order must be RGB
        diff = np.abs(out.astype(int) - expected.astype(int))
        assert diff.mean() < 4, diff.mean()
        if kind == "rgb":
            assert abs(out[..., 2].astype(int).mean() - 200) < 4  # blue is the constant one
            assert np.corrcoef(out[0, :, 0], expected[0, :, 0])[0, 1] > 0.99  # red follows x
    else:
        np.testing.assert_array_equal(out, expected)


def test_read_image_rgb_order_exact(tmp_path):
    """A pure red pixel written as BGR by OpenCV must come back as (255, 0, 0)."""
    img = np.zeros((4, 4, 3), np.uint8)
    img[0, 0] = (255, 0, 0)
    img[0, 1] = (0, 255, 0)
    img[0, 2] = (0, 0, 255)
    _write(tmp_path / "c.png", img)
    out = read_image(tmp_path / "c.png")
    assert tuple(out[0, 0]) == (255, 0, 0)
    assert tuple(out[0, 1]) == (0, 255, 0)
    assert tuple(out[0, 2]) == (0, 0, 255)


def test_read_image_uppercase_extension_and_str_path(tmp_path):
    path = tmp_path / "UPPER.PNG"
    _write(path, _rgb())
    np.testing.assert_array_equal(read_image(str(path)), _rgb())


def test_read_image_sniffs_content_not_extension(tmp_path):
    """A complete JPEG named .png is readable; it is neither truncated nor an error."""
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(_rgb(), cv2.COLOR_RGB2BGR))
    assert ok
    path = tmp_path / "really_a_jpeg.png"
    path.write_bytes(buf.tobytes())
    out = read_image(path)
    assert out.shape == (H, W, 3)
    assert np.abs(out.astype(int) - _rgb().astype(int)).mean() < 4


def test_truncation_check_when_the_decoder_is_lenient(tmp_path, monkeypatch):
    """Some OpenCV builds decode truncated PNG/JPEG files; the end-of-stream check catches them.

    The decoder is replaced by one that accepts anything, so the check itself is tested
    whatever this OpenCV does with truncated files.
    """
    monkeypatch.setattr(
        images_module.cv2, "imdecode", lambda buf, flags: np.zeros((4, 4, 3), np.uint8)
    )
    ok_png, png = cv2.imencode(".png", _rgb())
    ok_jpg, jpg = cv2.imencode(".jpg", _rgb())
    assert ok_png and ok_jpg
    png, jpg = png.tobytes(), jpg.tobytes()
    for name, data, truncated in [
        ("full.png", png, False),
        ("full.jpg", jpg, False),
        ("zero_padded.jpg", jpg + b"\x00" * 100, False),
        ("jpeg_named.png", jpg, False),  # the content decides, not the name
        ("png_named.jpg", png, False),
        ("cut.png", png[: len(png) // 2], True),
        ("cut.jpg", jpg[: len(jpg) // 2], True),
        ("cut_named.bmp", jpg[:-2], True),
    ]:
        path = tmp_path / name
        path.write_bytes(data)
        if truncated:
            assert "truncated" in _assert_read_error(path), name
        else:
            assert read_image(path).shape == (4, 4, 3), name


# --------------------------------------------------------------------------- errors


def _assert_read_error(path: Path) -> str:
    with pytest.raises(ImageReadError) as info:
        read_image(path)
    msg = str(info.value)
    assert str(path) in msg
    assert isinstance(info.value, OSError)
    return msg


def test_missing_file(tmp_path):
    _assert_read_error(tmp_path / "nope.png")


def test_directory_is_not_an_image(tmp_path):
    (tmp_path / "dir.png").mkdir()
    _assert_read_error(tmp_path / "dir.png")


def test_empty_file(tmp_path):
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    assert "empty" in _assert_read_error(path)


def test_text_file_renamed_png(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("this is not an image\n" * 20)
    _assert_read_error(path)


@pytest.mark.parametrize("cut", ["half", "last2"])
@pytest.mark.parametrize("ext", ["png", "jpg"])
def test_truncated_file(tmp_path, ext, cut):
    rng = np.random.default_rng(0)
    ys, xs = np.mgrid[0:120, 0:160]
    img = (np.stack([xs, ys, xs + ys], axis=2) % 256).astype(np.uint8)
    img = np.clip(img.astype(int) + rng.integers(-20, 20, img.shape), 0, 255).astype(np.uint8)
    path = tmp_path / f"cut.{ext}"
    _write(path, img)
    np.testing.assert_array_equal(read_image(path).shape, (120, 160, 3))  # intact file reads
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if cut == "half" else data[:-2])
    _assert_read_error(path)


def test_list_images_missing_folder(tmp_path):
    missing = tmp_path / "no_such_folder"
    with pytest.raises(FileNotFoundError) as info:
        list_images(missing)
    assert str(missing) in str(info.value)
    # a file is not a folder either
    f = tmp_path / "file.png"
    _write(f, _rgb())
    with pytest.raises(FileNotFoundError):
        list_images(f)


def test_list_images_sorted_filtered_recursive(tmp_path):
    for name in ["b.png", "a.JPG", "sub/c.ppm", "notes.txt", "d.tiff"]:
        p = tmp_path / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")
    names = [p.relative_to(tmp_path).as_posix() for p in list_images(tmp_path)]
    assert names == ["a.JPG", "b.png", "d.tiff", "sub/c.ppm"]
    flat = [p.name for p in list_images(tmp_path, recursive=False)]
    assert flat == ["a.JPG", "b.png", "d.tiff"]


def test_read_images_reports_and_skips_bad_files(tmp_path, caplog):
    good1, bad, good2, missing = (
        tmp_path / "1.png",
        tmp_path / "2.png",
        tmp_path / "3.png",
        tmp_path / "4.png",
    )
    _write(good1, _rgb())
    bad.write_text("garbage")
    _write(good2, _grey())
    with caplog.at_level(logging.WARNING):
        results = list(read_images([good1, bad, good2, missing]))
    assert [r[0] for r in results] == [good1, bad, good2, missing]
    np.testing.assert_array_equal(results[0][1], _rgb())
    assert results[0][2] is None
    assert results[1][1] is None and str(bad) in results[1][2]
    np.testing.assert_array_equal(results[2][1][..., 0], _grey())
    assert results[2][2] is None
    assert results[3][1] is None and str(missing) in results[3][2]
    assert str(bad) in caplog.text


# --------------------------------------------------------------------------- conversions


def test_to_rgb_uint8_float():
    img = np.array([[0.0, 0.5, 1.0, 1.5, -0.2, 0.1]], dtype=np.float32)
    out = to_rgb_uint8(img)
    # x * 255 + 0.5 truncated, after clipping to [0, 1]: 0, 128 (127.5 + 0.5), 255, 255, 0, 26
    assert out.shape == (1, 6, 3)
    assert out.dtype == np.uint8
    assert out[0, :, 0].tolist() == [0, 128, 255, 255, 0, 26]
    assert np.all(out[..., 0] == out[..., 2])
    rgb = np.zeros((2, 2, 3), np.float64)
    rgb[..., 0] = 1.0
    out = to_rgb_uint8(rgb)
    assert out[0, 0].tolist() == [255, 0, 0]
    # (H, W, 1) float
    assert to_rgb_uint8(np.full((3, 3, 1), 0.2, np.float32)).shape == (3, 3, 3)


def test_to_rgb_uint8_other_inputs_and_errors():
    assert to_rgb_uint8(np.array([[True, False]]))[0, :, 1].tolist() == [255, 0]
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[..., 3] = 255
    rgba[..., 1] = 9
    assert to_rgb_uint8(rgba)[0, 0].tolist() == [0, 9, 0]
    with pytest.raises(ImageReadError, match="my_image"):
        to_rgb_uint8(np.array([[np.nan]], np.float32), name="my_image")
    with pytest.raises(ImageReadError):
        to_rgb_uint8(np.zeros((2, 2, 2), np.uint8))
    with pytest.raises(ImageReadError):
        to_rgb_uint8(np.zeros((0, 5), np.uint8))
    with pytest.raises(ImageReadError):
        to_rgb_uint8(np.zeros((2, 2), np.int32))


def test_to_gray_and_resize():
    rgb = _rgb()
    g = to_gray(rgb)
    assert g.shape == (H, W)
    np.testing.assert_array_equal(g, cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY))
    out = resize_image(rgb, (12, 16))
    assert out.shape == (12, 16, 3)
    np.testing.assert_array_equal(out, cv2.resize(rgb, (16, 12), interpolation=cv2.INTER_AREA))
    assert resize_image(rgb, (H, W)) is rgb
