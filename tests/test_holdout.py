"""Tests of keypointlab.data.holdout: the fixed held-out split and its validation pairs."""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import pytest

from keypointlab.data import holdout
from keypointlab.data.holdout import (
    build_validation_benchmark,
    holdout_paths,
    is_held_out,
    split_holdout,
)
from keypointlab.data.images import list_images, read_image
from keypointlab.data.sequences import load_dataset

TRAIN_ROOT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "train"
TRAIN_SUBFOLDERS = (
    "affnet_examples",
    "bsds500",
    "kodak24",
    "mcmaster",
    "tum",
    "webui_sacre_coeur",
)
SIZE = (48, 64)


def _texture(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A blurred random colour texture (something for features to find)."""
    img = rng.integers(0, 256, (h // 4, w // 4, 3)).astype(np.uint8)
    img = cv2.resize(img, (w, h), interpolation=cv2.INTER_CUBIC)
    return cv2.GaussianBlur(img, (3, 3), 0)


def _make_images(root: Path, n: int, seed: int = 0, start: int = 0) -> list[Path]:
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(start, start + n):
        folder = root / ("a" if i % 2 else "b/c")
        folder.mkdir(parents=True, exist_ok=True)
        h, w = (60 + 7 * (i % 3), 90 + 5 * (i % 4))
        path = folder / f"img{i:03d}.png"
        assert cv2.imwrite(str(path), _texture(rng, h, w))
        paths.append(path)
    return paths


def _fake_paths(root: Path, n: int, start: int = 0) -> list[Path]:
    """Paths that need not exist: the split only looks at their names."""
    return [root / f"d{i % 7}" / f"p{i:05d}.jpg" for i in range(start, start + n)]


def _files(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()
    }


# ---------------------------------------------------------------------------- split


def test_split_is_deterministic_disjoint_and_covers_all(tmp_path: Path) -> None:
    paths = _fake_paths(tmp_path, 500)
    train, held = split_holdout(paths, tmp_path, 0.2, seed=3)
    assert (train, held) == split_holdout(list(paths), tmp_path, 0.2, seed=3)
    assert not set(train) & set(held)
    assert set(train) | set(held) == set(paths)
    assert len(train) + len(held) == len(paths)
    # input order is kept on both sides
    assert train == [p for p in paths if p in set(train)]
    assert 60 <= len(held) <= 140  # about 20% of 500
    # another seed gives another split
    assert split_holdout(paths, tmp_path, 0.2, seed=4)[1] != held


def test_split_does_not_depend_on_order(tmp_path: Path) -> None:
    paths = _fake_paths(tmp_path, 200)
    train, held = split_holdout(paths, tmp_path, 0.3)
    rtrain, rheld = split_holdout(paths[::-1], tmp_path, 0.3)
    assert set(rtrain) == set(train) and set(rheld) == set(held)


def test_split_is_stable_when_files_are_added(tmp_path: Path) -> None:
    old = _fake_paths(tmp_path, 150)
    new = old + _fake_paths(tmp_path, 100, start=150)
    _, held_old = split_holdout(old, tmp_path, 0.25, seed=1)
    _, held_new = split_holdout(new, tmp_path, 0.25, seed=1)
    assert [p for p in held_new if p in set(old)] == held_old
    # and it is a function of the relative path alone, also for another root spelling
    moved = tmp_path / "elsewhere"
    _, held_moved = split_holdout([moved / p.relative_to(tmp_path) for p in old], moved, 0.25, 1)
    assert [p.relative_to(moved) for p in held_moved] == [p.relative_to(tmp_path) for p in held_old]
    for p in old:
        assert (p in set(held_old)) == is_held_out(p.relative_to(tmp_path).as_posix(), 0.25, 1)


def test_split_on_real_files_is_stable_when_images_are_added(tmp_path: Path) -> None:
    _make_images(tmp_path, 12)
    train_old, held_old = holdout_paths(tmp_path, 0.3)
    _make_images(tmp_path, 10, seed=1, start=12)
    train_new, held_new = holdout_paths(tmp_path, 0.3)
    assert set(train_old) <= set(train_new)
    assert set(held_old) <= set(held_new)
    assert len(train_new) + len(held_new) == 22


def test_fraction_zero_holds_none(tmp_path: Path) -> None:
    paths = _fake_paths(tmp_path, 50)
    train, held = split_holdout(paths, tmp_path, 0.0)
    assert held == [] and train == paths


@pytest.mark.parametrize("fraction", [-0.1, 1.0, 1.5, float("nan"), "0.1", None, True])
def test_bad_fractions_error(tmp_path: Path, fraction: object) -> None:
    with pytest.raises(ValueError, match="fraction"):
        split_holdout(_fake_paths(tmp_path, 5), tmp_path, fraction)  # type: ignore[arg-type]


def test_split_keeps_a_training_image(tmp_path: Path) -> None:
    paths = _fake_paths(tmp_path, 40)
    # a single path that a high fraction holds out
    lone = next(p for p in paths if is_held_out(p.relative_to(tmp_path).as_posix(), 0.9))
    with pytest.raises(ValueError, match="at least one training image"):
        split_holdout([lone], tmp_path, 0.9)
    with pytest.raises(ValueError, match="no image paths"):
        split_holdout([], tmp_path, 0.1)


def test_split_rejects_paths_outside_root(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not below the image root"):
        split_holdout([tmp_path / "x.png"], tmp_path / "other", 0.1)


def test_exclude_leaves_out_subfolders_and_keeps_the_split(tmp_path: Path) -> None:
    paths = _make_images(tmp_path, 12)  # odd ones in a/, even ones in b/c/
    train_all, held_all = holdout_paths(tmp_path, 0.3, seed=1)
    train, held = holdout_paths(tmp_path, 0.3, seed=1, exclude=["b"])
    assert set(train) | set(held) == {p for p in paths if p.parent.name == "a"}
    assert set(train) <= set(train_all) and set(held) <= set(held_all)  # no image moves
    assert holdout_paths(tmp_path, 0.3, seed=1, exclude=["b/c/"]) == (train, held)
    assert holdout_paths(tmp_path, 0.3, seed=1, exclude=["c"]) == (train_all, held_all)
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        holdout_paths(tmp_path, 0.3, exclude=["a", "b"])


def test_holdout_paths_errors_name_the_folder(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("not an image")
    with pytest.raises(FileNotFoundError, match="empty"):
        holdout_paths(empty, 0.1)
    with pytest.raises(FileNotFoundError, match="missing"):
        holdout_paths(tmp_path / "missing", 0.1)


# ------------------------------------------------------------------------ benchmark


@pytest.fixture()
def images(tmp_path: Path) -> tuple[Path, list[Path]]:
    root = tmp_path / "train"
    return root, _make_images(root, 6)


def test_benchmark_loads_with_the_requested_pairs(
    images: tuple[Path, list[Path]], tmp_path: Path
) -> None:
    root, paths = images
    out = build_validation_benchmark(
        paths, root, tmp_path / "val", size=SIZE, pairs_per_image=2, seed=5
    )
    assert out == tmp_path / "val"
    sequences, skipped = load_dataset(out)
    assert skipped == []
    assert len(sequences) == len(paths)
    assert sum(len(s.pairs()) for s in sequences) == 2 * len(paths)
    assert all(s.split == "viewpoint" and s.name.startswith("v_") for s in sequences)
    assert {s.name for s in sequences} == {
        "v_" + p.relative_to(root).with_suffix("").as_posix().replace("/", "_") for p in paths
    }
    for seq in sequences:
        assert sorted(seq.images) == [1, 2, 3]
        for index in seq.images:
            assert read_image(seq.images[index]).shape == (*SIZE, 3)
        for H in seq.homographies.values():
            assert H.shape == (3, 3) and np.all(np.isfinite(H))
            assert not np.allclose(H, np.eye(3))
    # no temporary folder is left beside the benchmark
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train", "val"]


def test_benchmark_is_deterministic_for_a_seed(
    images: tuple[Path, list[Path]], tmp_path: Path
) -> None:
    root, paths = images
    a = build_validation_benchmark(paths, root, tmp_path / "a", size=SIZE, seed=2)
    b = build_validation_benchmark(paths[::-1], root, tmp_path / "b", size=SIZE, seed=2)
    c = build_validation_benchmark(paths, root, tmp_path / "c", size=SIZE, seed=3)
    assert _files(a) == _files(b)
    h_a = {k: v for k, v in _files(a).items() if "/H_1_" in k}
    h_c = {k: v for k, v in _files(c).items() if "/H_1_" in k}
    assert h_a.keys() == h_c.keys() and h_a != h_c


def test_benchmark_is_reused_when_complete(
    images: tuple[Path, list[Path]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, paths = images
    out = build_validation_benchmark(paths, root, tmp_path / "val", size=SIZE)
    before = _files(out)
    markers = [n for n in before if n.startswith(holdout.MARKER_PREFIX)]
    assert len(markers) == 1 and "seed0" in markers[0] and "48x64" in markers[0]

    def fail(path: Path) -> None:
        raise AssertionError(f"{path} read although the benchmark is complete")

    monkeypatch.setattr(holdout, "read_image", fail)
    assert build_validation_benchmark(paths, root, tmp_path / "val", size=SIZE) == out
    assert _files(out) == before


def test_benchmark_with_other_settings_replaces_an_old_one(
    images: tuple[Path, list[Path]], tmp_path: Path
) -> None:
    root, paths = images
    out = tmp_path / "val"
    build_validation_benchmark(paths, root, out, size=SIZE, pairs_per_image=1)
    build_validation_benchmark(paths, root, out, size=SIZE, pairs_per_image=3)
    sequences, _ = load_dataset(out)
    assert all(len(s.pairs()) == 3 for s in sequences)
    assert len([p for p in out.iterdir() if p.name.startswith(holdout.MARKER_PREFIX)]) == 1


def test_benchmark_refuses_to_replace_foreign_folder(
    images: tuple[Path, list[Path]], tmp_path: Path
) -> None:
    root, paths = images
    out = tmp_path / "precious"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="refusing"):
        build_validation_benchmark(paths, root, out, size=SIZE)
    assert (out / "notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["precious", "train"]


def test_benchmark_bounds_images_and_skips_unreadable(
    images: tuple[Path, list[Path]], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root, paths = images
    bad = root / "a" / "broken.png"
    bad.write_bytes(b"not a png at all")
    with caplog.at_level(logging.WARNING, logger="keypointlab.data.holdout"):
        out = build_validation_benchmark(
            [*paths, bad], root, tmp_path / "val", size=SIZE, max_images=100
        )
    assert "broken.png" in caplog.text
    sequences, _ = load_dataset(out)
    assert len(sequences) == len(paths)
    assert "v_a_broken" not in {s.name for s in sequences}

    small = build_validation_benchmark(paths, root, tmp_path / "small", size=SIZE, max_images=4)
    assert len(load_dataset(small)[0]) == 4


def test_benchmark_argument_errors(images: tuple[Path, list[Path]], tmp_path: Path) -> None:
    root, paths = images
    with pytest.raises(ValueError, match="no held-out images"):
        build_validation_benchmark([], root, tmp_path / "v")
    with pytest.raises(ValueError, match="pairs_per_image"):
        build_validation_benchmark(paths, root, tmp_path / "v", pairs_per_image=6)
    with pytest.raises(ValueError, match="max_images"):
        build_validation_benchmark(paths, root, tmp_path / "v", max_images=0)
    with pytest.raises(ValueError, match="16 pixels"):
        build_validation_benchmark(paths, root, tmp_path / "v", size=(8, 8))
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"junk")
    with pytest.raises(FileNotFoundError, match="none of the 1 held-out images"):
        build_validation_benchmark([bad], tmp_path, tmp_path / "v", size=SIZE)
    assert not (tmp_path / "v").exists()


def test_protocol_runs_on_the_benchmark(images: tuple[Path, list[Path]], tmp_path: Path) -> None:
    from keypointlab.evaluation.benchmark import evaluate_features
    from keypointlab.features.classical import OpenCVExtractor

    root, paths = images
    out = build_validation_benchmark(paths[:3], root, tmp_path / "val", size=(96, 128))
    sequences, skipped = load_dataset(out)
    result = evaluate_features(
        OpenCVExtractor("sift", 300), sequences, (96, 128), 300, skipped, progress=False
    )
    summary = result.summary()
    assert summary["pairs"] == 3
    assert np.isfinite(summary["repeatability"])


# ------------------------------------------------------------------ real train set


def test_real_training_images_split() -> None:
    if not TRAIN_ROOT.is_dir():
        pytest.skip(f"training images not found at {TRAIN_ROOT}")
    listing = list_images(TRAIN_ROOT)
    train, held = holdout_paths(TRAIN_ROOT, 0.1, seed=0)
    assert (train, held) == holdout_paths(TRAIN_ROOT, 0.1, seed=0)
    assert len(train) + len(held) == len(listing)
    assert set(train) | set(held) == set(listing) and not set(train) & set(held)
    assert 35 <= len(held) <= 85, f"{len(held)} of {len(listing)} held out"
    # each subfolder's own listing splits exactly as it does within the whole set
    held_set = set(held)
    for name in TRAIN_SUBFOLDERS:
        sub = list_images(TRAIN_ROOT / name)
        assert sub, f"{TRAIN_ROOT / name} has no images"
        sub_train, sub_held = split_holdout(sub, TRAIN_ROOT, 0.1, seed=0)
        assert sub_held == [p for p in sub if p in held_set]
        assert sub_train == [p for p in sub if p not in held_set]
