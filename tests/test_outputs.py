"""Output files and the features-file reader under hostile use (issue 22, part C).

- concurrent runs on one output: the second is refused at once, naming the holder's pid;
- the extractor that wrote a features file is recorded and checked on ``extract --resume``;
- output paths are checked before any work (an input, a folder, under a file, unwritable);
- no file is left on a failure path that looks whole and is not;
- a features file of any layout, dtype or shape gives an ``InputError`` naming the file,
  the group and the dataset, never another exception (with a hypothesis fuzz test).

Each refusal is checked through the API (its exception type) and through
``keypointlab.cli.main`` (exit status 2, one ``keypointlab: error:`` line, no traceback).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keypointlab.cli import main
from keypointlab.errors import InputError, OutputError
from keypointlab.evaluation.report import write_atomic
from keypointlab.features import Features, get_extractor
from keypointlab.features.export import extract_folder
from keypointlab.features.h5 import (
    FeatureFileExtractor,
    check_record,
    extractor_record,
    read_record,
    write_features,
    write_record,
)
from keypointlab.features.learned import LearnedExtractor
from keypointlab.io.h5 import (
    EXTRACTOR_ATTR,
    MAX_DATASET_VALUES,
    FeatureFileError,
    read_keypoint_group,
)
from keypointlab.io.outputs import (
    atomic_output,
    check_output_dir,
    check_output_file,
    lock_path,
    output_lock,
    temporary_path,
)
from keypointlab.models.kp2d import KeyPointNet

H_IMG, W_IMG = 96, 128
ROOT = Path(__file__).resolve().parents[1]  # the checkout, for subprocesses


# ---------------------------------------------------------------------------- helpers


def run(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_error(code: int, err: str, *needles: str) -> str:
    """Exit status 2 and exactly one ``keypointlab: error:`` line holding every needle."""
    assert code == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.strip().splitlines() if not line.startswith("WARNING")]
    assert len(lines) == 1, err
    assert lines[0].startswith("keypointlab: error: "), err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def _texture(seed: int = 0) -> np.ndarray:
    """A textured RGB image SIFT finds keypoints in."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (H_IMG // 8, W_IMG // 8, 3), dtype=np.uint8)
    return cv2.GaussianBlur(cv2.resize(small, (W_IMG, H_IMG), interpolation=cv2.INTER_NEAREST),
                            (3, 3), 0)  # fmt: skip


def _write_png(path: Path, rgb: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return path


@pytest.fixture
def images(tmp_path: Path) -> Path:
    folder = tmp_path / "images"
    _write_png(folder / "a.png", _texture(0))
    _write_png(folder / "sub" / "b.png", _texture(1))
    return folder


def _sentinel(dim: int = 128) -> Features:
    return Features(np.array([[1.0, 2.0]]), np.array([9.0]), np.ones((1, dim)), (H_IMG, W_IMG))


def _leftovers(folder: Path) -> list[str]:
    """Temporary, partial and lock files in ``folder`` (none should survive a run)."""
    return sorted(
        p.name for p in folder.iterdir() if p.name.endswith((".tmp", ".partial", ".lock"))
    )


def _tiny_net(seed: int) -> KeyPointNet:
    torch.manual_seed(seed)
    return KeyPointNet(
        {
            "channels": [4, 4, 8, 8],
            "descriptor_dim": 8,
            "stem_stride": 2,
            "shared_head": True,
            "upsample_width": 4,
        }
    )


def _forbid(monkeypatch: pytest.MonkeyPatch, target: str) -> None:
    """Make ``target`` (module.attr) fail the test if called: the work must not start."""

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"{target} was called: the output was not checked first")

    monkeypatch.setattr(target, forbidden)


# ---------------------------------------------------------------------------- locking


def test_extract_refused_while_the_output_is_locked(
    images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "f.h5"
    with output_lock(out) as lock:
        assert lock.read_text().strip() == str(os.getpid())
        with pytest.raises(OutputError, match=f"pid {os.getpid()}"):
            extract_folder(get_extractor("sift"), images, out, progress=False)
        code, _, err = run(capsys, "extract", images, "--out", out, "--quiet")
        assert_one_error(code, err, str(out), f"pid {os.getpid()}", "in use by another run")
        assert not out.exists() and not out.with_name("f.h5.partial").exists()
    assert not lock.exists()  # removed on release
    code, stdout, err = run(capsys, "extract", images, "--out", out, "--quiet")
    assert code == 0, err
    assert "2 images written" in stdout
    assert _leftovers(tmp_path) == []


HOLD_LOCK = """
import sys
from keypointlab.io.outputs import output_lock
with output_lock(sys.argv[1]):
    print("locked", flush=True)
    sys.stdin.read()  # until the test closes our stdin
"""


def test_a_second_process_is_refused_while_the_first_holds_the_output(
    images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "f.h5"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(out)],
        stdin=subprocess.PIPE,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        code, _, err = run(capsys, "extract", images, "--out", out, "--quiet")
        assert_one_error(code, err, str(out), f"pid {holder.pid}")
        assert not out.exists()
    finally:
        holder.communicate("")  # closes stdin: the holder releases and exits
    assert holder.returncode == 0
    code, _, err = run(capsys, "extract", images, "--out", out, "--quiet")
    assert code == 0, err


def test_lock_of_a_killed_holder_is_free(tmp_path: Path) -> None:
    """flock dies with its process: a run killed by -9 never blocks the next one."""
    out = tmp_path / "f.h5"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(out)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=ROOT,
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == b"locked"
    holder.kill()
    holder.wait()
    assert lock_path(out).exists()  # left by the killed process...
    with output_lock(out):  # ...but not held
        pass


def test_evaluate_refused_while_its_output_folder_is_locked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _forbid(monkeypatch, "keypointlab.data.sequences.load_dataset")
    out = tmp_path / "report"
    with output_lock(out):
        code, _, err = run(capsys, "evaluate", "--features", "sift", "--data", tmp_path,
                           "--out", out)  # fmt: skip
    assert_one_error(code, err, str(out), f"pid {os.getpid()}")


def test_temporary_names_are_unique_per_writer(tmp_path: Path) -> None:
    target = tmp_path / "results.json"
    a, b = temporary_path(target), temporary_path(target)
    assert a != b and a.parent == b.parent == tmp_path
    assert str(os.getpid()) in a.name and a.name.endswith(".tmp")
    # two writers interleaved on one file: each writes its own temporary file, the last
    # rename wins, and the file is always one writer's whole content
    with atomic_output(target) as first, atomic_output(target) as second:
        assert first != second
        first.write_text("A" * 1000)
        second.write_text("B" * 10)
    assert target.read_text() == "A" * 1000
    assert _leftovers(tmp_path) == []


def test_write_atomic_leaves_nothing_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "report.md"
    target.write_text("old")
    with pytest.raises(TypeError):
        write_atomic(target, None)  # type: ignore[arg-type]
    assert target.read_text() == "old"
    (tmp_path / "folder.md").mkdir()
    with pytest.raises(OutputError, match="is a folder"):
        write_atomic(tmp_path / "folder.md", "text")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder.md", "report.md"]


# ---------------------------------------------------------------------------- identity


def _partial_by(path: Path, extractor: object, max_keypoints: int | None) -> None:
    """A partial file as an interrupted ``extract`` run of ``extractor`` leaves it."""
    with h5py.File(path, "w") as h5:
        write_record(h5, extractor_record(extractor, max_keypoints=max_keypoints))
        write_features(h5, "a.png", _sentinel())


def test_extract_records_the_extractor(
    images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "f.h5"
    code, _, err = run(capsys, "extract", images, "--out", out, "--max-keypoints", "150",
                       "--quiet")  # fmt: skip
    assert code == 0, err
    with h5py.File(out, "r") as h5:
        record = json.loads(h5.attrs[EXTRACTOR_ATTR])
        assert record == read_record(h5)
    assert record["extractor"]["name"] == "sift"
    assert record["extractor"]["max_keypoints"] == 2000
    assert record["max_keypoints"] == 150


@pytest.mark.parametrize(
    ("options", "needles"),
    [
        (["--features", "orb"], ['extractor.name "sift" there, "orb" now']),
        (["--max-keypoints", "99"], ["max_keypoints 2000 there, 99 now"]),
    ],
)
def test_extract_resume_with_another_extractor_is_refused(
    options: list[str],
    needles: list[str],
    images: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "f.h5"
    partial = out.with_name("f.h5.partial")
    _partial_by(partial, get_extractor("sift"), 2000)
    before = partial.read_bytes()
    code, _, err = run(capsys, "extract", images, "--out", out, "--resume", "--quiet", *options)
    assert_one_error(code, err, str(partial), "--resume", *needles)
    assert partial.read_bytes() == before  # the other run's work is kept for its resume
    assert not out.exists()
    assert _leftovers(tmp_path) == ["f.h5.partial"]
    # the same extractor and settings resume it
    code, stdout, err = run(capsys, "extract", images, "--out", out, "--resume", "--quiet",
                            "--max-keypoints", "2000")  # fmt: skip
    assert code == 0, err
    assert "1 images written, 1 already done" in stdout
    with h5py.File(out, "r") as h5:
        assert h5["a.png/keypoints"][()].tolist() == [[1.0, 2.0]]


def test_learned_identity_holds_settings_and_a_hash_of_the_weights() -> None:
    a, same, other = _tiny_net(0), _tiny_net(0), _tiny_net(1)
    ida = LearnedExtractor(a, "tiny").identity()
    assert ida == LearnedExtractor(same, "tiny").identity()
    idb = LearnedExtractor(other, "tiny").identity()
    assert {k for k in ida if ida[k] != idb[k]} == {"weights_sha256"}
    idc = LearnedExtractor(a, "tiny", scales=(1.0, 0.5), rotations=2).identity()
    assert idc["scales"] == [1.0, 0.5] and idc["rotations"] == 2
    assert idc["weights_sha256"] == ida["weights_sha256"]

    with h5py.File("mem.h5", "w", driver="core", backing_store=False) as h5:
        write_record(h5, extractor_record(LearnedExtractor(a, "tiny")))
        check_record(h5, extractor_record(LearnedExtractor(same, "tiny")), "f.h5")
        with pytest.raises(OutputError, match="weights_sha256"):
            check_record(h5, extractor_record(LearnedExtractor(other, "tiny")), "f.h5")


def test_resume_of_an_unrecorded_partial_checks_descriptor_sizes(
    images: Path, tmp_path: Path
) -> None:
    """A partial file from before records existed: another descriptor size is refused."""
    out = tmp_path / "f.h5"
    with h5py.File(out.with_name("f.h5.partial"), "w") as h5:
        write_features(h5, "a.png", _sentinel(dim=64))
    with pytest.raises(OutputError, match=r"\[64\] values, sift makes 128"):
        extract_folder(get_extractor("sift"), images, out, resume=True, progress=False)
    assert not out.exists()


# ---------------------------------------------------------------------------- paths


def test_extract_out_naming_an_input_image_is_refused(
    images: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = images / "a.png"
    before = target.read_bytes()
    with pytest.raises(OutputError, match="is an input file"):
        extract_folder(get_extractor("sift"), images, target, progress=False)
    code, _, err = run(capsys, "extract", images, "--out", target, "--quiet")
    assert_one_error(code, err, str(target), "is an input file")
    assert target.read_bytes() == before
    assert _leftovers(images) == []


def test_extract_out_folder_is_refused_before_the_work(
    images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    _forbid(monkeypatch, "keypointlab.features.export.read_images")
    folder = tmp_path / "existing"
    folder.mkdir()
    code, _, err = run(capsys, "extract", images, "--out", folder, "--quiet")
    assert_one_error(code, err, str(folder), "is a folder")
    assert _leftovers(tmp_path) == []


def test_extract_out_under_a_file_is_refused_before_the_work(
    images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    _forbid(monkeypatch, "keypointlab.features.export.read_images")
    (tmp_path / "notes.txt").write_text("x")
    out = tmp_path / "notes.txt" / "f.h5"
    code, _, err = run(capsys, "extract", images, "--out", out, "--quiet")
    assert_one_error(code, err, str(out), "is a file, not a folder")


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write in any folder")
def test_unwritable_output_folder_is_refused(tmp_path: Path) -> None:
    locked = tmp_path / "ro"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(OutputError, match="not writable"):
            check_output_file(locked / "f.h5")
        with pytest.raises(OutputError, match="not writable"):
            check_output_dir(locked)
    finally:
        locked.chmod(0o700)


def test_evaluate_out_file_is_refused_before_the_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _forbid(monkeypatch, "keypointlab.data.sequences.load_dataset")
    out = tmp_path / "report.txt"
    out.write_text("keep me")
    code, _, err = run(capsys, "evaluate", "--features", "sift", "--data", tmp_path,
                       "--out", out)  # fmt: skip
    assert_one_error(code, err, str(out), "is a file")
    assert out.read_text() == "keep me"
    code, _, err = run(capsys, "evaluate", "--features", "sift", "--data", tmp_path,
                       "--out", tmp_path)  # fmt: skip
    assert_one_error(code, err, str(tmp_path), "is an input folder")


@pytest.mark.parametrize("case", ["folder", "input", "format"])
def test_match_out_is_checked_before_the_work(
    case: str, images: Path, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    _forbid(monkeypatch, "keypointlab.api.load_extractor")
    a, b = images / "a.png", images / "sub" / "b.png"
    out, needle = {
        "folder": (images / "sub", "is a folder"),
        "input": (a, "is an input file"),
        "format": (images / "m.h5", "cannot write a figure as 'h5'"),
    }[case]
    before = a.read_bytes()
    code, _, err = run(capsys, "match", a, b, "--out", out)
    assert_one_error(code, err, str(out), needle)
    assert a.read_bytes() == before
    assert _leftovers(images) == [] and _leftovers(images / "sub") == []


def test_export_onnx_out_folder_is_refused_before_loading(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _forbid(monkeypatch, "keypointlab.features.get_extractor")
    folder = tmp_path / "models"
    folder.mkdir()
    code, _, err = run(capsys, "export-onnx", "kp2d", "--out", folder)
    assert_one_error(code, err, str(folder), "is a folder")
    assert _leftovers(tmp_path) == []


# ---------------------------------------------------------------------------- leftovers


def test_failed_onnx_export_leaves_nothing(tmp_path: Path, monkeypatch) -> None:
    from keypointlab.features.onnx import export_onnx

    def half_written(model: object, args: object, f: str, **kwargs: object) -> None:
        Path(f).write_bytes(b"\x08\x01 half an onnx file")
        raise RuntimeError("exporter crashed")

    monkeypatch.setattr(torch.onnx, "export", half_written)
    with pytest.raises(RuntimeError, match="exporter crashed"):
        export_onnx(LearnedExtractor(_tiny_net(0), "tiny"), tmp_path / "t.onnx", size=(64, 96))
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(OutputError, match="is a folder"):
        export_onnx(LearnedExtractor(_tiny_net(0), "tiny"), tmp_path, size=(64, 96))
    assert list(tmp_path.iterdir()) == []


def test_failed_figure_leaves_nothing(tmp_path: Path, monkeypatch) -> None:
    from matplotlib.figure import Figure

    from keypointlab.viz import save_figure

    def half_written(self: Figure, fname: object, **kwargs: object) -> None:
        Path(str(fname)).write_bytes(b"\x89PNG half")
        raise OSError("disk full")

    fig = Figure()
    monkeypatch.setattr(Figure, "savefig", half_written)
    with pytest.raises(OSError, match="disk full"):
        save_figure(fig, tmp_path / "m.png")
    assert list(tmp_path.iterdir()) == []


def _non_utf8_image(folder: Path) -> Path:
    raw = os.fsencode(folder) + b"/caf\xe9.png"
    try:
        with open(raw, "wb") as f:
            f.write((folder / "a.png").read_bytes())
    except OSError:
        pytest.skip("this file system insists on UTF-8 names")
    return Path(os.fsdecode(raw))


def test_match_export_with_a_non_utf8_name(
    images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image0 = _non_utf8_image(images)
    export = tmp_path / "hloc"
    code, _, err = run(capsys, "match", image0, images / "sub" / "b.png",
                       "--out", tmp_path / "m.png", "--export", export)  # fmt: skip
    assert code == 0, err
    with h5py.File(export / "features.h5", "r") as h5:
        assert set(h5) == {"caf%E9.png", "b.png"}
        assert len(h5["caf%E9.png/keypoints"]) > 0
        assert read_record(h5)["extractor"]["name"] == "sift"
    with h5py.File(export / "matches.h5", "r") as h5:
        assert "caf%E9.png/b.png" in h5
    assert _leftovers(export) == [] and _leftovers(tmp_path) == []


def test_match_export_into_another_extractors_file_is_refused(
    images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a, b = images / "a.png", images / "sub" / "b.png"
    export = tmp_path / "hloc"
    code, _, err = run(capsys, "match", a, b, "--out", tmp_path / "m.png", "--export", export)
    assert code == 0, err
    before = (export / "features.h5").read_bytes()
    (tmp_path / "m.png").unlink()
    code, _, err = run(capsys, "match", a, b, "--features", "orb", "--out", tmp_path / "m.png",
                       "--export", export)  # fmt: skip
    assert_one_error(code, err, str(export / "features.h5"), '"sift" there, "orb" now')
    assert (export / "features.h5").read_bytes() == before
    assert not (tmp_path / "m.png").exists()  # refused before the work


def test_failed_match_export_keeps_the_files_as_they_were(
    images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise ValueError("cannot write matches")

    monkeypatch.setattr("keypointlab.features.export.write_matches", broken)
    export = tmp_path / "hloc"
    code, _, err = run(capsys, "match", images / "a.png", images / "sub" / "b.png",
                       "--out", tmp_path / "m.png", "--export", export)  # fmt: skip
    assert_one_error(code, err, "cannot write matches")
    assert list(export.iterdir()) == []  # no features.h5 without its matches.h5


# ---------------------------------------------------------------------------- reader


def _features_file(path: Path, build) -> Path:
    with h5py.File(path, "w") as h5:
        build(h5)
    return path


def _group(h5: h5py.File, key: str, n: int = 3, dim: int = 8, **replace: object) -> None:
    g = h5.create_group(key)
    arrays = {
        "keypoints": np.arange(2 * n, dtype=np.float32).reshape(n, 2),
        "scores": np.ones(n, np.float32),
        "descriptors": np.ones((n, dim), np.float32),
    }
    arrays.update(replace)
    for name, value in arrays.items():
        if value is not None:
            g.create_dataset(name, data=value)


STR = h5py.string_dtype()
BAD_GROUPS = {
    "string keypoints": (
        {"keypoints": np.array([["1", "2"]] * 3, dtype=object).astype(STR)},
        "keypoints",
        "string values",
    ),
    "keypoints (N, 3)": ({"keypoints": np.zeros((3, 3), np.float32)}, "keypoints", "(N, 2)"),
    "NaN keypoint": (
        {"keypoints": np.array([[0, 1], [np.nan, 2], [3, 4]], np.float32)},
        "keypoints",
        "NaN",
    ),
    "NaN descriptor": (
        {"descriptors": np.full((3, 8), np.nan, np.float32)},
        "descriptors",
        "NaN",
    ),
    "inf score": ({"scores": np.array([1, np.inf, 2], np.float32)}, "scores", "infinite"),
    "no scores": ({"scores": None}, "scores", "has no dataset"),
    "no descriptors": ({"descriptors": None}, "descriptors", "has no dataset"),
    "transposed descriptors": (
        {"descriptors": np.ones((8, 3), np.float32)},
        "descriptors",
        "transposed",
    ),
    "too few scores": ({"scores": np.ones(2, np.float32)}, "scores", "for 3 keypoints"),
    "complex scores": ({"scores": np.ones(3, np.complex64)}, "scores", "not numbers"),
    "bad image_size": ({"image_size": np.array([0, 5])}, "image_size", "(height, width)"),
}


@pytest.mark.parametrize("case", list(BAD_GROUPS))
def test_malformed_group_names_file_group_and_dataset(case: str, tmp_path: Path) -> None:
    replace, dataset, needle = BAD_GROUPS[case]
    path = _features_file(tmp_path / "f.h5", lambda h5: _group(h5, "seq/1.png", **replace))
    reader = FeatureFileExtractor(path)
    with pytest.raises(InputError) as info:
        reader.lookup("seq/1.png", (H_IMG, W_IMG))
    assert isinstance(info.value, FeatureFileError)
    message = str(info.value)
    for part in (str(path), "group 'seq/1.png'", needle):
        assert part in message, (part, message)
    assert dataset in message


def test_structure_errors(tmp_path: Path) -> None:
    def build(h5: h5py.File) -> None:
        _group(h5, "ok.png")
        h5.create_dataset("flat.png", data=np.zeros(3))  # a dataset where a group belongs
        g = h5.create_group("nested.png")
        g.create_group("keypoints")  # a group where a dataset belongs
        g["scores"] = h5py.SoftLink("/nowhere")  # a dangling link
        huge = h5.create_group("huge.png")  # a shape claiming more than the limit
        huge.create_dataset("keypoints", shape=(MAX_DATASET_VALUES, 2), dtype="f4", chunks=True)

    path = _features_file(tmp_path / "f.h5", build)
    reader = FeatureFileExtractor(path)
    assert len(reader.lookup("ok.png", (H_IMG, W_IMG))) == 3
    cases = {
        "flat.png": "not a group",
        "nested.png": "dataset 'keypoints' is a Group",
        "huge.png": "the limit",
        "missing.png": "no group 'missing.png'",
    }
    for key, needle in cases.items():
        with pytest.raises(FeatureFileError, match=needle) as info:
            reader.lookup(key, (H_IMG, W_IMG))
        assert str(path) in str(info.value)


def test_descriptor_sizes_differing_between_images(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def build(h5: h5py.File) -> None:
        _group(h5, "seq/1.png", dim=128)
        _group(h5, "seq/2.png", dim=64)

    path = _features_file(tmp_path / "mixed.h5", build)
    with pytest.raises(InputError, match="group 'seq/2.png', dataset 'descriptors' has 64"):
        FeatureFileExtractor(path)
    code, _, err = run(capsys, "evaluate", "--features-file", path, "--data", tmp_path,
                       "--out", tmp_path / "report")  # fmt: skip
    assert_one_error(code, err, str(path), "seq/2.png", "'descriptors'", "64", "128")


def test_evaluate_with_broken_groups_reports_each_and_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    seq = tmp_path / "data" / "v_tex"
    _write_png(seq / "1.png", _texture(0))
    _write_png(seq / "2.png", _texture(0))
    np.savetxt(seq / "H_1_2", np.eye(3))

    def build(h5: h5py.File) -> None:
        _group(h5, "v_tex/1.png", keypoints=np.array([["a", "b"]] * 3, dtype=object).astype(STR))
        _group(h5, "v_tex/2.png", descriptors=np.full((3, 8), np.nan, np.float32))

    path = _features_file(tmp_path / "broken.h5", build)
    code, stdout, err = run(capsys, "evaluate", "--features-file", path, "--data",
                            tmp_path / "data", "--size", "original", "--out",
                            tmp_path / "report", "--quiet")  # fmt: skip
    assert_one_error(code, err, "no pair could be evaluated")
    assert "group 'v_tex/1.png', dataset 'keypoints' holds string values" in stdout
    assert not (tmp_path / "report").exists()  # no report of zeros that reads as a result


def test_a_method_without_evaluated_pairs_shows_no_zeros_in_the_table() -> None:
    """Beside a method that was evaluated, one whose pairs were all skipped gets n/a, not a
    row of zeros that reads as a result."""
    from keypointlab.evaluation.benchmark import BenchmarkResult
    from keypointlab.evaluation.report import markdown_table

    table = markdown_table([BenchmarkResult("none", "240x320", 300)]).splitlines()
    cells = [c.strip() for c in table[2].strip("|").split("|")]
    assert cells[:3] == ["none", "240x320", "300"]
    assert cells[3:11] == ["n/a"] * 8 and cells[11:13] == ["0", "0"]


# ---------------------------------------------------------------------------- fuzz

DTYPES = st.sampled_from(
    ["f4", "f8", "f2", "i4", "u1", "i8", "bool", "c8", "str", "bytes", "compound"]
)
SHAPES = st.lists(st.integers(0, 4), min_size=0, max_size=3).map(tuple)
NAMES = st.sampled_from(
    ["keypoints", "scores", "descriptors", "scales", "orientations", "image_size", "other"]
)


def _values(draw: st.DrawFn, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    n = int(np.prod(shape)) if shape else 1
    if dtype == "str":
        return np.array([str(i) for i in range(n)], dtype=object).astype(STR).reshape(shape)
    if dtype == "bytes":
        return np.array([b"x%d" % i for i in range(n)]).reshape(shape)
    if dtype == "compound":
        return np.zeros(shape, dtype=[("a", "f4"), ("b", "i4")])
    specials = st.sampled_from([0.0, 1.0, -3.5, 1e30, float("nan"), float("inf")])
    raw = np.array(draw(st.lists(specials, min_size=n, max_size=n)), dtype=np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        if dtype in ("i4", "u1", "i8", "bool"):
            raw = np.nan_to_num(raw, nan=0, posinf=1, neginf=0).clip(0, 100)
        return raw.astype(dtype).reshape(shape)


@st.composite
def layouts(draw: st.DrawFn) -> list[tuple[str, str, object]]:
    """(group, dataset, values or 'group') entries of a random features file: per group,
    random datasets, or a valid group (n keypoints, descriptor size d) with some of its
    datasets replaced by random ones."""
    entries: list[tuple[str, str, object]] = []
    for group in draw(st.lists(st.sampled_from(["a.png", "s/b.png"]), min_size=1, max_size=2,
                               unique=True)):  # fmt: skip
        datasets: dict[str, object] = {}
        if draw(st.booleans()):
            n, d = draw(st.integers(0, 4)), draw(st.sampled_from([0, 1, 8]))
            datasets = {
                "keypoints": np.full((n, 2), 1.5, np.float32),
                "scores": np.ones(n, np.float64),
                "descriptors": np.ones((n, d), np.float32),
            }
        for name in draw(st.lists(NAMES, max_size=3 if datasets else 6, unique=True)):
            if draw(st.integers(0, 9)) == 0:
                datasets[name] = "group"
            else:
                datasets[name] = _values(draw, draw(DTYPES), draw(SHAPES))
        entries += [(group, name, value) for name, value in datasets.items()]
    return entries


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(layout=layouts(), as_dataset=st.booleans())
def test_fuzz_features_file_reader(
    tmp_path_factory: pytest.TempPathFactory,
    layout: list[tuple[str, str, object]],
    as_dataset: bool,
) -> None:
    path = tmp_path_factory.getbasetemp() / "fuzz.h5"
    with h5py.File(path, "w") as h5:
        for group, name, value in layout:
            g = h5.require_group(group)
            if isinstance(value, str):
                g.create_group(name)
            else:
                g.create_dataset(name, data=value)
        if as_dataset:
            h5.create_dataset("c.png", data=np.zeros((2, 2)))
    try:
        reader = FeatureFileExtractor(path)
    except FeatureFileError:
        return
    try:
        for key in ("a.png", "s/b.png", "c.png", "missing.png"):
            try:
                feats = reader.lookup(key, (H_IMG, W_IMG))
            except FeatureFileError as exc:
                assert str(path) in str(exc)
                continue
            n = len(feats)
            assert feats.keypoints.shape == (n, 2) and np.isfinite(feats.keypoints).all()
            assert feats.scores.shape == (n,) and np.isfinite(feats.scores).all()
            assert feats.descriptors.ndim == 2 and len(feats.descriptors) == n
            assert np.isfinite(feats.descriptors).all()
            # the lenient read (training labels) accepts whatever the strict one does
            assert "keypoints" in read_keypoint_group(reader._h5, key, required=("keypoints",))
    finally:
        reader.close()
