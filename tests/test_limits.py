"""Every input bounded before work starts (:mod:`keypointlab.limits`): image pixels from the
header (forged and real decompression bombs), file size, scales, rotations, counts, float
and non-finite arrays; one clear message, exit status 2, and folders that skip the item."""

from __future__ import annotations

import struct
import subprocess
import sys
import zlib
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest
import torch

import keypointlab as kl
from keypointlab import limits
from keypointlab.cli import main
from keypointlab.data.images import (
    ImageReadError,
    ImageTooLargeError,
    header_size,
    read_image,
    read_images,
    to_rgb_uint8,
)
from keypointlab.data.pairs import load_image_cache
from keypointlab.errors import InputError, LimitError
from keypointlab.evaluation.benchmark import parse_size
from keypointlab.features import Features, get_extractor
from keypointlab.features.learned import LearnedExtractor

BOMB_SIDE = 30000  # a real PNG of 30000x30000 pixels (900 MB as 8-bit grey, 2.7 GB as RGB)
FORGED_SIDE = 60000  # a PNG whose header claims 60000x60000 (above OpenCV's own limit)


# --------------------------------------------------------------------------- image files


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png(width: int, height: int, idat: bytes, bit_depth: int = 8) -> bytes:
    """A grey PNG with this header and this (compressed) pixel stream."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")
    )


def _forged_png(path: Path) -> Path:
    """A few hundred bytes claiming 60000x60000 pixels (the pixel data is not there)."""
    path.write_bytes(_png(FORGED_SIDE, FORGED_SIDE, zlib.compress(b"\x00" * 1000)))
    return path


def _real_bomb(path: Path) -> Path:
    """A valid 1-bit PNG of 30000x30000 black pixels, about 110 KB, compressed row by row so
    that this test never holds the image itself."""
    row = b"\x00" * (1 + BOMB_SIDE // 8)  # filter byte + 30000 bits
    z = zlib.compressobj(9)
    idat = b"".join(z.compress(row) for _ in range(BOMB_SIDE)) + z.flush()
    path.write_bytes(_png(BOMB_SIDE, BOMB_SIDE, idat, bit_depth=1))
    return path


@pytest.fixture(scope="module")
def bombs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bombs")
    return {"forged": _forged_png(root / "forged.png"), "real": _real_bomb(root / "real.png")}


def _photo(h: int = 120, w: int = 160) -> np.ndarray:
    import skimage.data

    return cv2.resize(skimage.data.astronaut(), (w, h), interpolation=cv2.INTER_AREA)


def _write(path: Path, rgb: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return path


def _cli(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str, str]:
    """Exit status, stdout and stderr of ``keypointlab ARGS`` (argparse refusals included)."""
    try:
        code = main([str(a) for a in args])
    except SystemExit as exc:  # argparse: usage line + "error: argument ...", status 2
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def _one_error(code: int, err: str, *needles: str) -> str:
    """Status 2, no traceback, and the error line holds every needle."""
    assert code == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.strip().splitlines() if "error:" in line]
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def test_bomb_files_are_small(bombs: dict[str, Path]) -> None:
    assert bombs["forged"].stat().st_size < 1000
    assert bombs["real"].stat().st_size < 400_000
    assert header_size(bombs["real"].read_bytes()) == (BOMB_SIDE, BOMB_SIDE)


def test_forged_header_is_refused_with_the_limit(bombs: dict[str, Path]) -> None:
    with pytest.raises(ImageTooLargeError) as info:
        read_image(bombs["forged"])
    msg = str(info.value)
    assert str(bombs["forged"]) in msg and "60000x60000" in msg
    assert f"{limits.DEFAULT_MAX_PIXELS:,}" in msg and "--max-pixels" in msg
    # one type for every caller: a LimitError / InputError / ValueError, and an OSError
    assert isinstance(info.value, LimitError) and isinstance(info.value, ImageReadError)
    assert isinstance(info.value, ValueError) and isinstance(info.value, OSError)


def test_real_bomb_is_refused_before_decoding(bombs: dict[str, Path], monkeypatch) -> None:
    decoded = []
    monkeypatch.setattr(cv2, "imdecode", lambda *a: decoded.append(a))  # must not be reached
    with pytest.raises(ImageTooLargeError, match="30000x30000 = 900,000,000 pixels"):
        read_image(bombs["real"])
    assert decoded == []


def test_decoder_failure_is_an_input_error_naming_the_file(
    bombs: dict[str, Path], monkeypatch
) -> None:
    """With the limit raised above the forged header, OpenCV's own refusal (cv2.error) is
    turned into an ImageReadError naming the file."""
    monkeypatch.setenv(limits.ENV_MAX_PIXELS, str(2 * FORGED_SIDE**2))
    with pytest.raises(ImageReadError) as info:
        read_image(bombs["forged"])
    assert str(bombs["forged"]) in str(info.value)
    assert not isinstance(info.value, LimitError)


def test_forged_jpeg_and_bmp_headers(tmp_path: Path) -> None:
    small = _photo(16, 24)
    ok, jpg = cv2.imencode(".jpg", small)
    assert ok
    jpg = bytearray(jpg.tobytes())
    assert header_size(bytes(jpg)) == (16, 24)
    sof = next(i for i in range(2, len(jpg) - 1) if jpg[i] == 0xFF and jpg[i + 1] == 0xC0)
    jpg[sof + 5 : sof + 9] = struct.pack(">HH", 50000, 40000)
    (tmp_path / "big.jpg").write_bytes(jpg)
    with pytest.raises(ImageTooLargeError, match="50000x40000 = 2,000,000,000 pixels"):
        read_image(tmp_path / "big.jpg")

    ok, bmp = cv2.imencode(".bmp", small)
    assert ok
    bmp = bytearray(bmp.tobytes())
    assert header_size(bytes(bmp)) == (16, 24)  # read by Pillow
    bmp[18:26] = struct.pack("<ii", 8000, 8000)  # below Pillow's own bomb limit
    (tmp_path / "big.bmp").write_bytes(bmp)
    with pytest.raises(ImageTooLargeError, match="8000x8000 = 64,000,000 pixels"):
        read_image(tmp_path / "big.bmp")
    bmp[18:26] = struct.pack("<ii", 60000, 60000)  # above it: Pillow gives the count only
    (tmp_path / "huge.bmp").write_bytes(bmp)
    with pytest.raises(ImageTooLargeError, match="declares 3,600,000,000 pixels"):
        read_image(tmp_path / "huge.bmp")


def test_file_size_is_checked_before_reading(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv(limits.ENV_MAX_PIXELS, "1000")
    path = tmp_path / "sparse.png"
    with path.open("wb") as f:  # 20 MB of nothing, without writing them
        f.truncate(20 * 2**20)
    with pytest.raises(ImageTooLargeError, match=r"file of 20,971,520 bytes exceeds the limit"):
        read_image(path)


def test_pixel_limit_from_environment_and_option(tmp_path: Path, monkeypatch, capsys) -> None:
    path = _write(tmp_path / "a.png", _photo())  # 120x160 = 19,200 pixels
    assert read_image(path).shape == (120, 160, 3)
    monkeypatch.setenv(limits.ENV_MAX_PIXELS, "19199")
    with pytest.raises(ImageTooLargeError, match="19,199 pixels"):
        read_image(path)
    with limits.override(max_pixels=19200):  # the option wins over the environment
        assert read_image(path).shape == (120, 160, 3)
    with pytest.raises(ImageTooLargeError):  # and is gone after its block
        read_image(path)
    monkeypatch.setenv(limits.ENV_MAX_PIXELS, "lots")
    with pytest.raises(InputError, match="KEYPOINTLAB_MAX_PIXELS"):
        limits.max_pixels()
    monkeypatch.delenv(limits.ENV_MAX_PIXELS)
    assert limits.max_pixels() == limits.DEFAULT_MAX_PIXELS
    assert limits.parse_max_pixels("40M") == limits.parse_max_pixels("4e7") == 40_000_000

    code, _, err = _cli(capsys, "match", path, path, "--max-pixels", "10000",
                        "--out", tmp_path / "m.png")  # fmt: skip
    _one_error(code, err, str(path), "120x160 = 19,200 pixels", "limit of 10,000 pixels")
    assert limits.max_pixels() == limits.DEFAULT_MAX_PIXELS  # restored after the command
    code, _, err = _cli(capsys, "match", path, path, "--max-pixels", "-3")
    _one_error(code, err, "--max-pixels '-3'")


# --------------------------------------------------------------------------- command line


def test_match_on_bombs_is_one_line(bombs: dict[str, Path], tmp_path: Path, capsys) -> None:
    good = _write(tmp_path / "good.png", _photo())
    for name, side in (("forged", FORGED_SIDE), ("real", BOMB_SIDE)):
        code, _, err = _cli(capsys, "match", good, bombs[name], "--out", tmp_path / "m.png")
        _one_error(code, err, str(bombs[name]), f"{side}x{side}", "exceeds the limit")
    assert not (tmp_path / "m.png").exists()


def test_match_on_a_real_bomb_stays_small_in_memory(bombs: dict[str, Path], tmp_path) -> None:
    """The whole command, in a fresh process: its peak memory stays far below what
    decoding would take (900 MB for the grey pixels alone, 2.7 GB as RGB)."""
    good = _write(tmp_path / "good.png", _photo())
    script = (
        "import resource, sys\n"
        "from keypointlab.cli import main\n"
        "code = main(sys.argv[1:])\n"
        "print('maxrss_kb', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
        "sys.exit(code)\n"
    )
    args = ["match", str(good), str(bombs["real"]), "--out", str(tmp_path / "m.png")]
    proc = subprocess.run(
        [sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "30000x30000" in proc.stderr
    peak_mb = int(proc.stdout.split("maxrss_kb")[-1]) / 1024
    assert peak_mb < 900, peak_mb


def _feature_groups(path: Path) -> list[str]:
    found: list[str] = []
    with h5py.File(path, "r") as h5:
        h5.visititems(
            lambda name, obj: (
                found.append(name) if isinstance(obj, h5py.Group) and "descriptors" in obj else None
            )
        )
    return sorted(found)


def test_extract_folder_skips_bombs_and_finishes(
    bombs: dict[str, Path], tmp_path: Path, capsys
) -> None:
    folder = tmp_path / "images"
    _write(folder / "a.png", _photo())
    _write(folder / "sub" / "b.png", _photo()[::-1].copy())
    for name, path in bombs.items():
        (folder / f"{name}.png").symlink_to(path)
    for resume in ([], ["--resume"]):  # a fresh run, and --resume, both finish the folder
        out = tmp_path / f"f{len(resume)}.h5"
        code, stdout, err = _cli(capsys, "extract", folder, "--out", out, "--quiet", *resume)
        assert code == 0, err
        assert "2 images written, 0 already done, 2 skipped" in stdout
        for name in bombs:
            line = next(s for s in stdout.splitlines() if f"{name}.png" in s)
            assert "skipped" in line and "exceeds the limit" in line
        assert _feature_groups(out) == ["a.png", "sub/b.png"]


def test_evaluate_skips_the_pairs_of_a_bomb(bombs: dict[str, Path], tmp_path: Path, capsys):
    seq = tmp_path / "data" / "v_seq"
    ref = _photo(240, 320)
    _write(seq / "1.png", ref)
    for n in (2, 3):
        H = np.array([[1.0, 0.01 * n, 2.0 * n], [-0.01 * n, 1.0, n], [0.0, 0.0, 1.0]])
        _write(seq / f"{n}.png", cv2.warpPerspective(ref, H, (320, 240)))
        np.savetxt(seq / f"H_1_{n}", H)
    (seq / "3.png").unlink()
    (seq / "3.png").symlink_to(bombs["real"])
    out = tmp_path / "report"
    code, stdout, err = _cli(capsys, "evaluate", "--features", "sift", "--data", tmp_path / "data",
                             "--size", "240x320", "--out", out, "--quiet")  # fmt: skip
    assert code == 0, err
    assert "v_seq 1-3" in stdout and "exceeds the limit" in stdout
    assert "| sift |" in stdout  # the other pair was evaluated


def test_folder_readers_skip_and_report(bombs: dict[str, Path], tmp_path: Path) -> None:
    """The readers behind adapt and the training image caches."""
    folder = tmp_path / "images"
    _write(folder / "a.png", _photo())
    (folder / "z.png").symlink_to(bombs["forged"])
    results = list(read_images(sorted(folder.iterdir())))
    assert results[0][1] is not None and results[0][2] is None
    assert results[1][1] is None and "60000x60000" in results[1][2]
    images = load_image_cache(folder, max_side=64, progress=False)
    assert [im.shape for im in images] == [(48, 64, 3)]


@pytest.mark.parametrize(
    ("option", "value", "needle"),
    [
        ("--scales", "inf", "scale inf is outside the allowed range 0.125 to 4"),
        ("--scales", "nan", "scale nan is outside"),
        ("--scales", "100", "scale 100 is outside the allowed range"),
        ("--scales", "0", "scale 0 is outside"),
        ("--scales", ",".join(["1"] * 9), "9 scales exceed the limit of 8"),
        ("--rotations", "100000", "--rotations 100000: exceeds the limit of 36"),
        ("--rotations", "0", "--rotations 0: must be at least 1"),
        ("--top-k", "-5", "--top-k -5: must be at least 1"),
    ],
)
def test_evaluate_options_are_bounded(capsys, option: str, value: str, needle: str) -> None:
    code, _, err = _cli(capsys, "evaluate", "--data", ".", "--features", "sift", option, value)
    _one_error(code, err, needle)


def test_other_commands_bound_their_counts(tmp_path: Path, capsys) -> None:
    cases = [
        (["extract", tmp_path, "--out", tmp_path / "f.h5", "--max-keypoints", "-1"],
         "--max-keypoints -1: must be at least 1"),
        (["extract", tmp_path, "--out", tmp_path / "f.h5", "--max-keypoints", "0"],
         "--max-keypoints 0: must be at least 1"),
        (["adapt", tmp_path, tmp_path, "--out", tmp_path / "l.h5", "--num-homographies",
          "100000"], "--num-homographies 100000: exceeds the limit of 1000"),
        (["adapt", tmp_path, tmp_path, "--out", tmp_path / "l.h5", "--max-keypoints", "-1"],
         "--max-keypoints -1: must be at least 0"),
        (["match", tmp_path, tmp_path, "--scales", "1,5"], "scale 5 is outside"),
        (["evaluate", "--data", ".", "--features", "sift", "--size", "100000x100000"],
         "100000x100000 = 10,000,000,000 pixels"),
    ]  # fmt: skip
    for args, needle in cases:
        code, _, err = _cli(capsys, *args)
        _one_error(code, err, needle)


# --------------------------------------------------------------------------- Python API


class _Cells(torch.nn.Module):
    """A hand-made dense 'network': one keypoint per 8x8 cell, scored by its brightness."""

    def forward(self, data: dict) -> dict:
        grey = data["image"].mean(1, keepdim=True)
        cells = torch.nn.functional.avg_pool2d(grey, 8)
        _, _, hc, wc = cells.shape
        ys, xs = torch.meshgrid(torch.arange(hc) * 8.0 + 4, torch.arange(wc) * 8.0 + 4,
                                indexing="ij")  # fmt: skip
        return {
            "scores": cells,
            "keypoints": torch.stack([xs, ys])[None],
            "descriptors": torch.cat([cells, 1 - cells], 1),
        }


def test_learned_extractor_bounds_scales_rotations_and_keypoints() -> None:
    for kwargs, needle in [
        ({"scales": (100.0,)}, "scale 100 is outside"),
        ({"scales": (float("inf"),)}, "scale inf is outside"),
        ({"scales": ()}, "at least one scale"),
        ({"rotations": 100000}, "rotations 100000: exceeds the limit of 36"),
        ({"rotations": 2.5}, "expected a whole number"),
        ({"max_keypoints": -5}, "max_keypoints -5: must be at least 1"),
    ]:
        with pytest.raises(InputError, match=needle):
            LearnedExtractor(_Cells(), "cells", **kwargs)
    with pytest.raises(InputError, match="max_keypoints -1"):
        get_extractor("sift", max_keypoints=-1)
    with pytest.raises(InputError, match="max_keypoints 0"):
        kl.load_extractor("orb", max_keypoints=0)


def test_network_input_is_bounded_before_any_pass() -> None:
    calls = []

    class Counting(_Cells):
        def forward(self, data: dict) -> dict:
            calls.append(data["image"].shape)
            return super().forward(data)

    image = _photo(120, 160)
    with limits.override(max_pixels=50_000):
        assert len(LearnedExtractor(Counting(), "c").extract(image)) > 0  # 19,200 pixels
        calls.clear()
        with pytest.raises(LimitError, match=r"120x160 at scale 2: network input: 240x320"):
            LearnedExtractor(Counting(), "c", scales=(1.0, 2.0)).extract(image)
        with pytest.raises(LimitError, match="rotated: network input"):  # canvas of 45 degrees
            LearnedExtractor(Counting(), "c", scales=(1.5,), rotations=8).extract(image)
    assert calls == []  # refused before the first pass


def test_float_images_out_of_range_and_non_finite_are_refused() -> None:
    sift = get_extractor("sift")
    photo = _photo()
    as_255 = photo.astype(np.float64)  # 0..255 in a float array: was clipped to all white
    with pytest.raises(InputError, match=r"values up to \d+, above 1.*divide by 255"):
        sift.extract(as_255)
    with pytest.raises(InputError, match="above 1"):
        sift.extract(torch.from_numpy(as_255).permute(2, 0, 1))
    f = sift.extract(as_255 / 255.0)  # the same image as it should be given
    assert len(f) > 0 and len(f) == len(sift.extract(photo))
    nan = (photo / 255.0).copy()
    nan[3, 4, 1] = np.nan
    with pytest.raises(InputError, match="1 of 57600 values are non-finite"):
        sift.extract(nan)
    with pytest.raises(InputError, match="non-finite"):
        to_rgb_uint8(np.full((4, 4), np.inf, np.float32))
    with pytest.raises(InputError, match="below 0"):
        to_rgb_uint8(np.full((4, 4), -3.0))
    assert to_rgb_uint8(np.full((2, 2), 1.2))[0, 0, 0] == 255  # overshoot is still clipped


def test_array_images_are_bounded_by_the_pixel_limit() -> None:
    with limits.override(max_pixels=1000):
        with pytest.raises(ImageTooLargeError, match=r"array of shape \(40, 30\).*1,200 pixels"):
            get_extractor("sift").extract(np.zeros((40, 30), np.uint8))


def test_matching_refuses_non_finite_descriptors() -> None:
    rng = np.random.default_rng(0)
    f0 = Features(rng.random((5, 2)), rng.random(5), rng.random((5, 8)), (10, 10))
    f1 = Features(rng.random((6, 2)), rng.random(6), rng.random((6, 8)), (10, 10))
    assert len(kl.match(f0, f1)) > 0
    f1.descriptors[2, 3] = np.nan
    with pytest.raises(InputError, match="descriptors of image 1: 1 of 48 values are non-finite"):
        kl.match(f0, f1)
    f0.descriptors[0, 0] = np.inf
    with pytest.raises(InputError, match="descriptors of image 0"):
        kl.match(f0, f1)
    with pytest.raises(InputError, match="ratio"):
        kl.match(f1, f1, ratio=float("nan"))


def test_top_k_and_sizes_are_positive() -> None:
    rng = np.random.default_rng(0)
    f = Features(rng.random((5, 2)), rng.random(5), rng.random((5, 8)), (10, 10))
    assert len(f.top_k(3)) == 3 and len(f.top_k(None)) == 5
    for k in (-1, 0):  # top_k(-1) used to drop the last keypoint silently
        with pytest.raises(InputError, match=f"top-k {k}: must be at least 1"):
            f.top_k(k)
    with pytest.raises(LimitError, match="size '20000x20000'"):
        parse_size("20000x20000")
    assert parse_size("480x640") == (480, 640)


def test_limits_module_checks() -> None:
    assert limits.check_scales([1.41, 1, 0.71]) == (1.41, 1.0, 0.71)
    assert limits.check_count(np.int64(3), "n") == 3
    for bad in (True, "3", 1.5, float("nan")):
        with pytest.raises(InputError, match="expected a whole number"):
            limits.check_count(bad, "n")
    limits.check_finite(np.arange(4), "ints")  # integers are always finite
    limits.check_finite(torch.ones(3), "tensor")
    with pytest.raises(InputError, match="t: 1 of 3 values"):
        limits.check_finite(torch.tensor([1.0, float("nan"), 2.0]), "t")
