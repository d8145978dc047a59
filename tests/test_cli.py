"""End-to-end tests of the ``keypointlab`` command line through ``keypointlab.cli.main``.

Datasets are tiny HPatches folders built here from a 240x320 crop of scikit-image's
astronaut warped by known homographies, so every test runs in seconds on a CPU.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import keypointlab
from keypointlab.cli import main
from keypointlab.data.images import read_image
from keypointlab.data.sequences import load_dataset
from keypointlab.evaluation.benchmark import evaluate_features
from keypointlab.features import Features, get_extractor
from keypointlab.features.h5 import write_features
from keypointlab.geometry import warp_points
from keypointlab.io.h5 import safe_key

H_IMG, W_IMG = 240, 320
TIMING = ("extraction_time_per_image", "matching_time_per_pair")


def _homography(n: int) -> np.ndarray:
    """A mild, distinct viewpoint change per image index n = 2, 3, ..."""
    return np.array(
        [[1.0 + 0.02 * n, 0.01 * n, 3.0 * n], [-0.01 * n, 1.0, 2.0 * n], [1e-5 * n, 0.0, 1.0]]
    )


@functools.cache
def _photo() -> np.ndarray:
    import skimage.data

    return cv2.resize(skimage.data.astronaut(), (W_IMG, H_IMG), interpolation=cv2.INTER_AREA)


def _write_png(path: Path, rgb: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return path


def _write_sequence(folder: Path, kind: str, n_images: int = 3, with_h: bool = True) -> None:
    """``kind`` "v": warped views with H_1_n; "i": brightness changes with identity H."""
    ref = _photo()
    _write_png(folder / "1.png", ref)
    for n in range(2, n_images + 1):
        if kind == "v":
            H = _homography(n)
            img = cv2.warpPerspective(ref, H, (W_IMG, H_IMG))
        else:
            H = np.eye(3)
            img = np.clip(ref.astype(np.float32) * (1.0 - 0.15 * n) + 10 * n, 0, 255)
            img = img.astype(np.uint8)
        _write_png(folder / f"{n}.png", img)
        if with_h:
            np.savetxt(folder / f"H_1_{n}", H)


@pytest.fixture(scope="module")
def base_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("base") / "data"
    _write_sequence(root / "v_astro", "v")
    _write_sequence(root / "i_astro", "i")
    return root


@pytest.fixture
def data(base_dataset: Path, tmp_path: Path) -> Path:
    """A private copy of the 2-sequence (4-pair) dataset that a test may damage."""
    return Path(shutil.copytree(base_dataset, tmp_path / "data"))


def run(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_error(code: int, err: str, *needles: str) -> str:
    """Exit code 2 and exactly one ``keypointlab: error:`` line holding every needle."""
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("keypointlab: error: "), err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def _results(out: Path) -> dict:
    return json.loads((out / "results.json").read_text())


def _skipped_items(results: dict) -> dict[str, str]:
    return {s["item"]: s["reason"] for s in results["skipped"]}


# ---------------------------------------------------------------------------------------------
# evaluate


def test_evaluate_sift_orb_both_protocol_sizes(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "report"
    code, stdout, err = run(capsys, "evaluate", "--features", "sift", "orb", "--data", data,
                            "--out", out, "--quiet")  # fmt: skip
    assert code == 0, err
    assert "| method | size | top-k |" in stdout
    for method in ("sift", "orb"):
        for size, k in (("240x320", 300), ("480x640", 1000)):
            assert re.search(rf"^\| {method} \| {size} \| {k} \|", stdout, re.M), stdout
    assert f"results: {out / 'results.json'}" in stdout

    res = _results(out)
    for key in (
        "repeatability",
        "localization_error",
        "homography_accuracy_1",
        "homography_accuracy_3",
        "homography_accuracy_5",
        "matching_score",
        "mma_3",
        "pairs",
    ):
        assert key in res["summary"], key
    assert res["summary"]["pairs"] == 4
    assert set(res["splits"]) == {"illumination", "viewpoint"}
    assert res["splits"]["viewpoint"]["pairs"] == res["splits"]["illumination"]["pairs"] == 2
    assert {(p["sequence"], tuple(p["pair"])) for p in res["pairs"]} == {
        ("v_astro", (1, 2)),
        ("v_astro", (1, 3)),
        ("i_astro", (1, 2)),
        ("i_astro", (1, 3)),
    }
    for p in res["pairs"]:
        assert p["split"] == ("viewpoint" if p["sequence"].startswith("v_") else "illumination")
        assert len(p["mma"]) == 10 and len(p["num_keypoints"]) == 2
    assert res["skipped"] == []

    runs = {(r["method"], r["size"], r["top_k"]): r for r in res["runs"]}
    assert set(runs) == {
        ("sift", "240x320", 300),
        ("sift", "480x640", 1000),
        ("orb", "240x320", 300),
        ("orb", "480x640", 1000),
    }
    for r in runs.values():
        s = r["summary"]
        assert s["pairs"] == 4 and len(r["pairs"]) == 4
        assert all(np.isfinite(v) for v in s.values() if isinstance(v, float))
        for key in ("repeatability", "homography_accuracy_3", "matching_score", "mma_3"):
            assert 0.0 <= s[key] <= 1.0
    # the first run is also at the top level; SIFT recovers these mild known homographies
    assert res["summary"] == runs[("sift", "240x320", 300)]["summary"]
    assert runs[("sift", "240x320", 300)]["summary"]["homography_accuracy_5"] == 1.0

    md = (out / "report.md").read_text()
    assert "## All pairs" in md and "## Size 240x320" in md and "## Size 480x640" in md
    assert "## Skipped" not in md
    for size in ("240x320", "480x640"):
        png = out / f"mma_{size}.png"
        assert f"(mma_{size}.png)" in md
        assert cv2.imread(str(png)) is not None, png


def _write_sift_features(data: Path, path: Path) -> None:
    sequences, _ = load_dataset(data)
    sift = get_extractor("sift")
    with h5py.File(path, "w") as h5:
        for seq in sequences:
            for i in seq.images:
                write_features(h5, seq.relative(i), sift.extract(read_image(seq.images[i])))


def test_evaluate_features_file_agrees_with_in_process(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    feats = tmp_path / "sift-feats.h5"
    _write_sift_features(data, feats)
    out = tmp_path / "report"
    code, stdout, err = run(capsys, "evaluate", "--features-file", feats, "--data", data,
                            "--size", "original", "--out", out, "--quiet")  # fmt: skip
    assert code == 0, err
    assert re.search(r"^\| sift-feats \| original \| 300 \|", stdout, re.M), stdout
    got = _results(out)
    assert [(r["method"], r["size"], r["top_k"]) for r in got["runs"]] == [
        ("sift-feats", "original", 300)
    ]

    sequences, skipped = load_dataset(data)
    expected = evaluate_features(get_extractor("sift"), sequences, None, 300, skipped, False)
    want = json.loads(json.dumps(expected.to_dict()))  # tuples -> lists, as in the file
    assert got["pairs"] == want["pairs"]
    for key in TIMING:
        del got["summary"][key], want["summary"][key]
    assert got["summary"] == want["summary"]
    assert got["splits"] == want["splits"]
    assert got["summary"]["pairs"] == 4


def test_evaluate_features_file_missing_group_skips_that_pair(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    feats = tmp_path / "feats.h5"
    _write_sift_features(data, feats)
    with h5py.File(feats, "a") as h5:
        del h5["v_astro/3.png"]
    out = tmp_path / "report"
    code, stdout, err = run(capsys, "evaluate", "--features-file", feats, "--data", data,
                            "--size", "240x320", "--out", out, "--quiet")  # fmt: skip
    assert code == 0, err
    res = _results(out)
    assert res["summary"]["pairs"] == 3
    assert ("v_astro", [1, 3]) not in [(p["sequence"], p["pair"]) for p in res["pairs"]]
    reason = _skipped_items(res)["v_astro 1-3"]
    assert str(feats) in reason and "v_astro/3.png" in reason
    assert "v_astro 1-3" in stdout
    md = (out / "report.md").read_text()
    skipped_section = md.split("## Skipped", 1)[1]
    assert "v_astro 1-3" in skipped_section and "v_astro/3.png" in skipped_section


def test_evaluate_missing_data_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "no-such-data"
    code, _, err = run(capsys, "evaluate", "--features", "sift", "--data", missing,
                       "--out", tmp_path / "o")  # fmt: skip
    assert_one_error(code, err, str(missing))


def test_evaluate_folder_without_sequences(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "empty"
    (empty / "not-a-sequence").mkdir(parents=True)
    _write_png(empty / "not-a-sequence" / "photo.png", _photo())
    code, _, err = run(capsys, "evaluate", "--features", "sift", "--data", empty,
                       "--out", tmp_path / "o")  # fmt: skip
    assert_one_error(code, err, str(empty), "no sequence")


def test_evaluate_unknown_feature_lists_available(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, "evaluate", "--features", "sift", "nosuchfeat", "--data", data,
                       "--out", tmp_path / "o")  # fmt: skip
    line = assert_one_error(code, err, "'nosuchfeat'", "sift", "orb")
    assert "available" in line
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("size", ["240by320", "8x8", "x320", "-240x320", "0x320"])
def test_evaluate_bad_size(
    size: str, data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, "evaluate", "--features", "sift", "--data", data, f"--size={size}",
                       "--out", tmp_path / "o")  # fmt: skip
    assert_one_error(code, err, repr(size))
    assert not (tmp_path / "o").exists()


def test_evaluate_missing_features_file(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nope.h5"
    code, _, err = run(capsys, "evaluate", "--features-file", missing, "--data", data,
                       "--out", tmp_path / "o")  # fmt: skip
    assert_one_error(code, err, str(missing))


def test_evaluate_features_file_not_hdf5(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.h5"
    bad.write_text("not hdf5")
    code, _, err = run(capsys, "evaluate", "--features-file", bad, "--data", data,
                       "--out", tmp_path / "o")  # fmt: skip
    assert_one_error(code, err, str(bad))


def test_evaluate_sequence_without_homographies_next_to_good_one(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _write_sequence(data / "v_noh", "v", with_h=False)
    out = tmp_path / "report"
    code, stdout, err = run(capsys, "evaluate", "--features", "sift", "--data", data,
                            "--size", "240x320", "--out", out, "--quiet")  # fmt: skip
    assert code == 0, err
    res = _results(out)
    assert res["summary"]["pairs"] == 4
    assert {p["sequence"] for p in res["pairs"]} == {"v_astro", "i_astro"}
    skipped = _skipped_items(res)
    assert "no homography files (H_1_N or H1toNp)" in skipped["v_noh"]
    assert "v_noh: no homography files" in stdout
    assert "v_noh" in (out / "report.md").read_text().split("## Skipped", 1)[1]


def test_evaluate_only_unusable_sequences_is_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Nothing evaluable must not produce a table of zeros: not with exit code 0, and not
    on disk either (a results.json of zeros would read as a result)."""
    data = tmp_path / "data"
    _write_sequence(data / "v_noh", "v", with_h=False)
    out = tmp_path / "report"
    code, stdout, err = run(capsys, "evaluate", "--features", "sift", "--data", data,
                            "--size", "240x320", "--out", out, "--quiet")  # fmt: skip
    assert_one_error(code, err, str(data), "no pair could be evaluated")
    assert "v_noh" in stdout and "| method |" not in stdout
    assert f"no report written to {out}" in err
    assert not out.exists() and list(tmp_path.glob(".report*")) == []


def test_evaluate_unreadable_and_truncated_images_skip_their_pairs(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (data / "v_astro" / "2.png").write_bytes(b"this is not a png")
    truncated = data / "i_astro" / "3.png"
    truncated.write_bytes(truncated.read_bytes()[:-12])  # drop the IEND chunk: still decodes
    out = tmp_path / "report"
    code, stdout, err = run(capsys, "evaluate", "--features", "sift", "--data", data,
                            "--size", "240x320", "--out", out, "--quiet")  # fmt: skip
    assert code == 0, err
    res = _results(out)
    assert res["summary"]["pairs"] == 2
    assert {(p["sequence"], tuple(p["pair"])) for p in res["pairs"]} == {
        ("v_astro", (1, 3)),
        ("i_astro", (1, 2)),
    }
    skipped = _skipped_items(res)
    assert str(data / "v_astro" / "2.png") in skipped["v_astro 1-2"]
    assert "not a readable image" in skipped["v_astro 1-2"]
    # OpenCV 5 refuses a PNG without IEND ("not a readable image"); lenient builds decode it
    # and the end-of-stream check says "truncated": either way the file is named
    assert str(truncated) in skipped["i_astro 1-3"]
    assert re.search("truncated|not a readable image", skipped["i_astro 1-3"])
    assert "v_astro 1-2" in stdout and "i_astro 1-3" in stdout
    md = (out / "report.md").read_text().split("## Skipped", 1)[1]
    assert "v_astro 1-2" in md and "i_astro 1-3" in md


def test_evaluate_non_finite_and_singular_homographies(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    nan_file, singular_file = data / "v_astro" / "H_1_2", data / "i_astro" / "H_1_3"
    nan_file.write_text("1 0 0\n0 nan 0\n0 0 1\n")
    singular_file.write_text("1 2 3\n2 4 6\n0 0 1\n")
    out = tmp_path / "report"
    code, stdout, err = run(capsys, "evaluate", "--features", "sift", "--data", data,
                            "--size", "240x320", "--out", out, "--quiet")  # fmt: skip
    assert code == 0, err
    res = _results(out)
    assert res["summary"]["pairs"] == 2
    skipped = _skipped_items(res)
    assert str(nan_file) in skipped["v_astro 1-2"] and "non-finite" in skipped["v_astro 1-2"]
    assert str(singular_file) in skipped["i_astro 1-3"]
    assert "singular" in skipped["i_astro 1-3"]
    assert str(nan_file) in stdout and str(singular_file) in stdout


# ---------------------------------------------------------------------------------------------
# match


def test_match_writes_picture_and_prints_homography(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    H = _homography(3)
    img0 = _write_png(tmp_path / "a.png", _photo())
    img1 = _write_png(tmp_path / "b.png", cv2.warpPerspective(_photo(), H, (W_IMG, H_IMG)))
    out = tmp_path / "pics" / "m.png"
    code, stdout, err = run(capsys, "match", img0, img1, "--features", "sift", "--out", out)
    assert code == 0, err
    assert cv2.imread(str(out)) is not None
    m = re.search(r"(\d+) matches, (\d+) inliers \(H found\)", stdout)
    assert m, stdout
    assert int(m.group(1)) >= int(m.group(2)) >= 20
    assert f"wrote {out}" in stdout
    rows = stdout.split("H_0to1 =\n", 1)[1].splitlines()[:3]
    H_est = np.array([[float(v) for v in row.split()] for row in rows])
    corners = np.array([[0, 0], [W_IMG - 1, 0], [0, H_IMG - 1], [W_IMG - 1, H_IMG - 1]], float)
    err_px = np.linalg.norm(warp_points(corners, H_est) - warp_points(corners, H), axis=1)
    assert err_px.max() < 2.0, (H_est, H)


@pytest.mark.parametrize("bad", ["tiny", "text", "missing"])
def test_match_bad_image_names_the_file(
    bad: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = _write_png(tmp_path / "good.png", _photo())
    if bad == "tiny":
        path = _write_png(tmp_path / "tiny.png", _photo()[:8, :8])
    elif bad == "text":
        path = tmp_path / "notes.png"
        path.write_text("not an image\n")
    else:
        path = tmp_path / "missing.png"
    out = tmp_path / "m.png"
    code, _, err = run(capsys, "match", good, path, "--out", out)
    assert_one_error(code, err, str(path))
    assert not out.exists()


# ---------------------------------------------------------------------------------------------
# extract


def _image_folder(root: Path) -> Path:
    photo = _photo()
    _write_png(root / "a.png", photo)
    _write_png(root / "sub" / "b.png", np.ascontiguousarray(photo[::-1, ::-1]))
    (root / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    return root


def _groups(h5: h5py.File) -> dict[str, h5py.Group]:
    """Every group holding features, by its full name."""
    found: dict[str, h5py.Group] = {}

    def visit(name: str, obj: object) -> None:
        if isinstance(obj, h5py.Group) and "descriptors" in obj:
            found[name] = obj

    h5.visititems(visit)
    return found


def test_extract_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    images = _image_folder(tmp_path / "images")
    out = tmp_path / "f.h5"
    code, stdout, err = run(capsys, "extract", images, "--out", out, "--max-keypoints", "150",
                            "--quiet")  # fmt: skip
    assert code == 0, err
    assert "2 images written, 0 already done, 1 skipped" in stdout
    assert f"skipped {images / 'broken.jpg'}" in stdout
    assert not out.with_name("f.h5.partial").exists()
    with h5py.File(out, "r") as h5:
        groups = _groups(h5)
        assert set(groups) == {"a.png", "sub/b.png"}
        for g in groups.values():
            kp, scores, desc = g["keypoints"][()], g["scores"][()], g["descriptors"][()]
            assert kp.ndim == 2 and kp.shape[1] == 2 and 0 < len(kp) <= 150
            assert scores.shape == (len(kp),) and desc.shape == (len(kp), 128)
            assert tuple(g["image_size"][()]) == (H_IMG, W_IMG)
            assert np.all((kp >= 0) & (kp <= [W_IMG - 1, H_IMG - 1]))


def _sentinel() -> Features:
    return Features(np.array([[1.0, 2.0]]), np.array([9.0]), np.ones((1, 128)), (H_IMG, W_IMG))


def test_extract_resume_only_does_the_rest(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    images = _image_folder(tmp_path / "images")
    out = tmp_path / "f.h5"
    with h5py.File(out.with_name("f.h5.partial"), "w") as h5:  # an interrupted earlier run
        write_features(h5, "a.png", _sentinel())
        h5.create_group("sub/b.png")  # begun, never finished: no datasets yet
    code, stdout, err = run(capsys, "extract", images, "--out", out, "--resume", "--quiet")
    assert code == 0, err
    assert "1 images written, 1 already done, 1 skipped" in stdout
    with h5py.File(out, "r") as h5:
        assert h5["a.png/keypoints"][()].tolist() == [[1.0, 2.0]]  # kept, not recomputed
        assert len(h5["sub/b.png/keypoints"]) > 10

    # without --resume, a stale partial file is discarded and everything is extracted
    with h5py.File(out.with_name("f.h5.partial"), "w") as h5:
        write_features(h5, "a.png", _sentinel())
    code, stdout, err = run(capsys, "extract", images, "--out", out, "--quiet")
    assert code == 0, err
    assert "2 images written, 0 already done" in stdout
    with h5py.File(out, "r") as h5:
        assert len(h5["a.png/keypoints"]) > 10


def test_extract_odd_file_names_get_safe_keys(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    images = tmp_path / "images"
    photo = _photo()[:120, :160]
    names = {
        "..\\evil.png": "%2E%2E/evil.png",
        "we ird #1 é%.png": "we ird #1 é%.png",
        ".hidden.png": ".hidden.png",
        "sub/b.png": "sub/b.png",
    }
    for name in names:
        _write_png(images / name, photo)
    non_utf8 = os.fsencode(images) + b"/caf\xe9.png"
    try:
        with open(non_utf8, "wb") as f:
            f.write((images / ".hidden.png").read_bytes())
        names[os.fsdecode(b"caf\xe9.png")] = "caf%E9.png"
    except OSError:  # a file system that insists on UTF-8 names
        pass
    _write_png(images / "sub\\b.png", photo)  # same key as sub/b.png: reported, not overwritten
    out = tmp_path / "f.h5"
    code, stdout, err = run(capsys, "extract", images, "--out", out, "--quiet")
    assert code == 0, err
    assert f"{len(names)} images written" in stdout
    assert "same feature key 'sub/b.png'" in stdout
    with h5py.File(out, "r") as h5:
        assert set(_groups(h5)) == set(names.values())
        for key in names.values():
            assert safe_key_parts_ok(key)


def safe_key_parts_ok(key: str) -> bool:
    return all(part not in ("", ".", "..") for part in key.split("/"))


@pytest.mark.parametrize(
    ("relative", "key"),
    [
        ("graf/img1.png", "graf/img1.png"),
        ("../up.png", "%2E%2E/up.png"),
        ("a/./b.png", "a/%2E/b.png"),
        ("/abs.png", "%2F/abs.png"),
        ("a//b.png", "a/%2F/b.png"),
        ("..\\..\\x.png", "%2E%2E/%2E%2E/x.png"),
        ("..png", "..png"),
        ("sp ace#%é.png", "sp ace#%é.png"),
        ("caf\udce9.png", "caf%E9.png"),
        ("nul\x00.png", "nul%00.png"),
    ],
)
def test_safe_key_examples(relative: str, key: str) -> None:
    assert safe_key(relative) == key


KEY_CHARS = st.one_of(
    st.sampled_from(["/", ".", "\\", "\x00", "%", " "]),  # separators and escapes
    st.characters(categories=["Cs"]),  # surrogates: non-UTF-8 bytes of a file name
    st.characters(codec=None, exclude_categories=()),
)


@settings(max_examples=50, deadline=None)
@given(st.text(alphabet=KEY_CHARS, max_size=12))
def test_safe_key_is_always_a_storable_group_name(relative: str) -> None:
    key = safe_key(relative)
    assert safe_key_parts_ok(key)
    with h5py.File("mem.h5", "w", driver="core", backing_store=False) as h5:
        write_features(h5, key, _sentinel())
        assert h5[key]["keypoints"].shape == (1, 2)
    assert safe_key(relative) == key  # deterministic


# ---------------------------------------------------------------------------------------------
# train and demo


def test_train_unknown_config_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "bad.yaml"
    config.write_text("train:\n  no_such_key: 1\n")
    code, _, err = run(capsys, "train", config)
    assert_one_error(code, err, "train.no_such_key")

    shipped = Path(keypointlab.__file__).parent / "configs" / "kp2d.yaml"
    code, _, err = run(capsys, "train", shipped, "model.bogus_width=3")
    assert_one_error(code, err, "model.bogus_width")
    assert list(tmp_path.iterdir()) == [config]  # nothing was started


def test_demo_small(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import keypointlab.demo as demo

    # build_sample_benchmark binds SAMPLE_PHOTOS as a default argument: patch the call instead
    monkeypatch.setattr(
        demo,
        "build_sample_benchmark",
        functools.partial(demo.build_sample_benchmark, photos=("astronaut",)),
    )
    monkeypatch.setattr(demo, "DEMO_CONFIGS", (((240, 320), 300),))
    monkeypatch.setattr(demo, "MATCH_PAIRS", (("v_astronaut", 4), ("i_astronaut", 5)))
    out = tmp_path / "demo"
    code, stdout, err = run(capsys, "demo", "--out", out, "--features", "sift", "--quiet")
    assert code == 0, err
    assert re.search(r"^\| sift \| 240x320 \| 300 \|", stdout, re.M), stdout
    res = _results(out)
    assert [(r["method"], r["size"]) for r in res["runs"]] == [("sift", "240x320")]
    assert res["summary"]["pairs"] == 10
    assert set(res["splits"]) == {"illumination", "viewpoint"}
    md = (out / "report.md").read_text()
    for name in ("sift_v_astronaut_1-4.png", "sift_i_astronaut_1-5.png"):
        assert cv2.imread(str(out / "matches" / name)) is not None
        assert f"(matches/{name})" in md


def test_train_overrides_may_follow_resume(capsys: pytest.CaptureFixture[str]) -> None:
    """`train CONFIG --resume key=value` reads the override (here a misspelt key, which the
    config then names) instead of rejecting it as an unrecognized argument."""
    config = Path(keypointlab.__file__).parent / "configs" / "kp2d.yaml"
    code, _, err = run(capsys, "train", config, "--resume", "train.max_minuts=60")
    assert_one_error(code, err, "train.max_minuts")
    with pytest.raises(SystemExit) as exc:
        main(["train", str(config), "--resume", "--no-such-flag"])
    assert exc.value.code == 2
    assert "--no-such-flag" in capsys.readouterr().err
