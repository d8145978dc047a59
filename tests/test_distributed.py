"""Extraction and pair matching over several processes (torchrun): shards, merge, resume."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest
import torch

from keypointlab.cli import main
from keypointlab.errors import InputError
from keypointlab.features import get_extractor
from keypointlab.features.export import extract_folder
from keypointlab.io.distributed import (
    World,
    exchange,
    merge_shards,
    reuse_shard,
    shard,
    shard_path,
    shard_record,
    write_shard_record,
)
from keypointlab.io.h5 import FeatureFileError, partial_path, read_matches
from keypointlab.matching.nearest import match_nn, matches_to_pairs
from keypointlab.matching.pairs import (
    exhaustive_pairs,
    feature_names,
    match_pairs,
    read_pairs,
    unique_pairs,
)


def _arrays(path: Path) -> tuple[dict[str, np.ndarray | None], dict[str, object]]:
    """Every group and dataset of a file (datasets' values) and its root attributes."""
    out: dict[str, np.ndarray | None] = {}
    with h5py.File(path, "r") as h5:
        h5.visititems(
            lambda n, o: out.__setitem__(n, o[()] if isinstance(o, h5py.Dataset) else None)
        )
        return out, dict(h5.attrs)


def assert_same_file(a: Path, b: Path) -> None:
    (da, aa), (db, ab) = _arrays(a), _arrays(b)
    assert sorted(da) == sorted(db)
    assert aa == ab
    for key, value in da.items():
        if value is None:
            assert db[key] is None, key
        else:
            assert value.dtype == db[key].dtype and np.array_equal(value, db[key]), key


def torchrun(*args: str, nproc: int = 2) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc)]
    cmd += ["--standalone", "-m", "keypointlab.cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)


def _ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six small textured images, two of them in a subfolder (nested feature keys)."""
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    base = cv2.GaussianBlur(rng.integers(0, 256, (120, 160, 3), dtype=np.uint8), (5, 5), 1.5)
    (folder / "sub").mkdir()
    for i in range(6):
        name = f"sub/im{i}.png" if i % 3 == 0 else f"im{i}.png"
        cv2.imwrite(str(folder / name), np.roll(base, 5 * i, axis=1))
    return folder


@pytest.fixture(scope="module")
def single(images: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("single") / "feats.h5"
    assert main(["extract", str(images), "--features", "sift", "--out", str(out), "--quiet"]) == 0
    return out


def _extract_args(images: Path, out: Path, *extra: str) -> list[str]:
    return ["extract", str(images), "--features", "sift", "--out", str(out), "--quiet", *extra]


# --- sharding -----------------------------------------------------------------------------


@pytest.mark.parametrize("n", [0, 1, 5, 6, 7, 40])
@pytest.mark.parametrize("world", [1, 2, 3, 8])
def test_shards_cover_every_item_once_and_are_deterministic(n: int, world: int) -> None:
    items = [f"img{i:03d}.png" for i in range(n)]
    parts = [shard(items, r, world) for r in range(world)]
    assert sorted(x for part in parts for x in part) == items
    assert parts == [shard(items, r, world) for r in range(world)]
    assert all(shard(items, r, world) == items[r::world] for r in range(world))
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1


def test_shard_rejects_a_rank_outside_the_world() -> None:
    with pytest.raises(ValueError, match="rank 2"):
        shard([1, 2, 3], 2, 2)


def test_shard_path_names_rank_and_world(tmp_path: Path) -> None:
    assert shard_path(tmp_path / "feats.h5", 1, 4) == tmp_path / "feats.h5.rank1-of-4"


def test_world_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert World.from_env() == World()
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    world = World.from_env()
    assert (world.rank, world.size, world.local_rank, world.is_main) == (3, 4, 1, False)
    assert world.device("cuda") == "cuda:1"
    assert world.device("cpu") == "cpu" and world.device("cuda:0") == "cuda:0"


def test_exchange_on_one_process_returns_the_result_and_raises_its_error() -> None:
    assert exchange(World(), lambda: 3) == [3]
    with pytest.raises(ZeroDivisionError):
        exchange(World(), lambda: 1 / 0)


# --- extract under torchrun ---------------------------------------------------------------


def test_torchrun_extract_equals_single_process(images: Path, single: Path, tmp_path: Path):
    out = tmp_path / "feats.h5"
    stdout = _ok(torchrun(*_extract_args(images, out)))
    assert "6 images written, 0 already done, 0 skipped" in stdout
    assert_same_file(single, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["feats.h5"]  # shards removed


def test_torchrun_resume_reuses_a_whole_shard(images: Path, single: Path, tmp_path: Path):
    out = tmp_path / "feats.h5"
    extractor = get_extractor("sift")
    done = extract_folder(
        extractor, images, shard_path(out, 1, 2), 2000, progress=False, shard_of=(1, 2)
    )
    assert done.written == 3
    stdout = _ok(torchrun(*_extract_args(images, out, "--resume")))
    assert "3 images written, 3 already done" in stdout
    assert_same_file(single, out)


def test_torchrun_resume_continues_a_partial_shard(images: Path, single: Path, tmp_path: Path):
    out = tmp_path / "feats.h5"
    shard1 = shard_path(out, 1, 2)
    extract_folder(get_extractor("sift"), images, shard1, 2000, progress=False, shard_of=(1, 2))
    with h5py.File(shard1, "a") as h5:  # as if interrupted after its first image
        del h5["im5.png"]
    os.replace(shard1, partial_path(shard1))
    stdout = _ok(torchrun(*_extract_args(images, out, "--resume")))
    assert "4 images written, 2 already done" in stdout
    assert_same_file(single, out)


def test_torchrun_reports_a_corrupt_shard_by_name(images: Path, tmp_path: Path) -> None:
    out = tmp_path / "feats.h5"
    bad = shard_path(out, 1, 2)
    bad.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 100)  # an HDF5 signature, then nothing
    result = torchrun(*_extract_args(images, out, "--resume"))
    assert result.returncode != 0
    assert f"{bad}: shard file is not a readable HDF5 file" in result.stderr
    assert "rank 1 of 2 failed" in result.stderr  # what rank 0 says
    assert not out.exists()


def test_a_shard_of_other_items_is_not_taken_for_whole(tmp_path: Path) -> None:
    path = tmp_path / "feats.h5.rank0-of-2"
    with h5py.File(path, "w") as h5:
        write_shard_record(h5, shard_record(["a.png", "c.png"], 0, 2))
    expected = shard_record(["a.png", "c.png", "e.png"], 0, 2)
    assert not reuse_shard(path, expected, lambda h5: None)
    assert not path.exists() and partial_path(path).is_file()  # resumed from its groups
    assert not reuse_shard(path, expected, lambda h5: None)  # a partial one: never whole


def test_merge_names_a_corrupt_or_incomplete_shard(tmp_path: Path) -> None:
    good, bad = tmp_path / "x.rank0-of-2", tmp_path / "x.rank1-of-2"
    with h5py.File(good, "w") as h5:
        h5.create_group("a").create_dataset("v", data=[1])
    bad.write_bytes(b"not hdf5")
    with pytest.raises(FeatureFileError, match="x.rank1-of-2: shard file is not a readable"):
        merge_shards(tmp_path / "x", [good, bad], ["a", "b"])
    with h5py.File(bad, "w") as h5:
        pass
    with pytest.raises(FeatureFileError, match="x.rank1-of-2: shard file has no group 'b'"):
        merge_shards(tmp_path / "x", [good, bad], ["a", "b"], required=True)
    assert not (tmp_path / "x").exists()
    assert merge_shards(tmp_path / "x", [good, bad], ["a", "b"]) == 1


# --- pair matching ------------------------------------------------------------------------


def test_exhaustive_and_unique_pairs() -> None:
    assert exhaustive_pairs(["c", "a", "b", "a"]) == [("a", "b"), ("a", "c"), ("b", "c")]
    assert len(exhaustive_pairs(str(i) for i in range(10))) == 45
    assert unique_pairs([("a", "b"), ("b", "a"), ("a", "c"), ("a", "b")]) == [
        ("a", "b"),
        ("a", "c"),
    ]
    with pytest.raises(InputError, match="itself"):
        unique_pairs([("a", "a")])
    with pytest.raises(InputError, match="same group|both be stored"):
        unique_pairs([("x/a", "b"), ("x-a", "b")])


def test_read_pairs_names_a_bad_line(tmp_path: Path) -> None:
    path = tmp_path / "pairs.txt"
    path.write_text("# comment\na.png b.png\n\nsub/c.png a.png\n")
    assert read_pairs(path) == [("a.png", "b.png"), ("sub/c.png", "a.png")]
    path.write_text("a.png b.png\na.png\n")
    with pytest.raises(InputError, match=r"pairs.txt:2: 1 names"):
        read_pairs(path)


def test_match_pairs_stores_mutual_nearest_neighbours(single: Path, tmp_path: Path) -> None:
    names = feature_names(single)
    assert names == ["im1.png", "im2.png", "im4.png", "im5.png", "sub/im0.png", "sub/im3.png"]
    out = tmp_path / "matches.h5"
    report = match_pairs(single, [("sub/im0.png", "im1.png")], out)
    assert (report.written, report.reused) == (1, 0)
    with h5py.File(single, "r") as f:
        d0, d1 = f["sub/im0.png/descriptors"][()], f["im1.png/descriptors"][()]
    expected = matches_to_pairs(match_nn(torch.from_numpy(d0), torch.from_numpy(d1)))
    with h5py.File(out, "r") as h5:
        group = h5["sub-im0.png/im1.png"]
        assert group["matches"].dtype == np.int32
        np.testing.assert_array_equal(group["matches"][()], expected)
        dist = np.linalg.norm(d0[expected[:, 0]] - d1[expected[:, 1]], axis=1)
        np.testing.assert_allclose(group["distances"][()], dist, rtol=1e-5, atol=1e-4)
        np.testing.assert_array_equal(read_matches(h5, "sub/im0.png", "im1.png"), expected)
    assert len(expected) > 20
    again = match_pairs(single, [("sub/im0.png", "im1.png")], out)
    assert again.written == 1  # without resume: a new file


def test_match_pairs_refuses_an_unknown_image_before_any_work(single: Path, tmp_path: Path):
    out = tmp_path / "matches.h5"
    with pytest.raises(FeatureFileError, match="no descriptors of image 'nope.png'"):
        match_pairs(single, [("im1.png", "nope.png")], out)
    assert not out.exists() and not partial_path(out).exists()


def test_match_pairs_resume_keeps_done_pairs_and_refuses_other_settings(
    single: Path, tmp_path: Path
) -> None:
    out = tmp_path / "matches.h5"
    pairs = exhaustive_pairs(feature_names(single))
    match_pairs(single, pairs[:4], out)
    os.replace(out, partial_path(out))  # as if interrupted after four pairs
    report = match_pairs(single, pairs, out, resume=True)
    assert (report.written, report.reused) == (11, 4)
    whole = tmp_path / "whole.h5"
    match_pairs(single, pairs, whole)
    assert_same_file(whole, out)
    match_pairs(single, pairs[:2], out)
    os.replace(out, partial_path(out))
    with pytest.raises(OSError, match="another matcher"):
        match_pairs(single, pairs, out, ratio=0.8, resume=True)


def test_torchrun_match_pairs_equals_single_process(single: Path, tmp_path: Path) -> None:
    one, two = tmp_path / "one.h5", tmp_path / "two.h5"
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("im1.png im2.png\nsub/im0.png im5.png\nim2.png im1.png\nim4.png sub/im3.png\n")
    args = [str(single), "--pairs", str(pairs), "--quiet"]
    assert main(["match-pairs", *args, "--out", str(one)]) == 0
    stdout = _ok(torchrun("match-pairs", *args, "--out", str(two)))
    assert "3 pairs matched, 0 already done" in stdout
    assert_same_file(one, two)
    assert not list(tmp_path.glob("*.rank*"))


def test_torchrun_match_pairs_exhaustive(single: Path, tmp_path: Path) -> None:
    exhaustive = tmp_path / "exhaustive.h5"
    stdout = _ok(
        torchrun("match-pairs", str(single), "--pairs", "exhaustive", "--out", str(exhaustive))
    )
    assert "15 pairs matched" in stdout
    with h5py.File(exhaustive, "r") as h5:
        assert len(h5["im1.png"]) == 5 and "sub-im0.png/sub-im3.png" in h5
    one = tmp_path / "one.h5"
    match_pairs(single, exhaustive_pairs(feature_names(single)), one)
    assert_same_file(one, exhaustive)
