"""Retrieval: metrics on hand-computed rankings, index + query on a tiny folder whose
answer is known, index files, distractors, global descriptors and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("faiss", reason="retrieval needs faiss-cpu (the retrieval extra)")

from keypointlab.cli import main  # noqa: E402
from keypointlab.data.samples import sample_photo  # noqa: E402
from keypointlab.errors import InputError  # noqa: E402
from keypointlab.evaluation.retrieval import (  # noqa: E402
    average_precision,
    evaluate_retrieval,
    load_retrieval_data,
    precision_at,
)
from keypointlab.features import get_extractor  # noqa: E402
from keypointlab.features.base import Extractor  # noqa: E402
from keypointlab.geometry import sample_homography, warp_image  # noqa: E402
from keypointlab.retrieval import (  # noqa: E402
    GlobalExtractor,
    build_index,
    load_index,
    query,
    rank,
)
from keypointlab.retrieval.distractors import make_distractors  # noqa: E402

PHOTOS = ("astronaut", "coffee", "chelsea")
SIZE = (240, 320)
SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three groups, each three homographic views of one photograph."""
    root = tmp_path_factory.mktemp("db")
    rng = np.random.default_rng(0)
    for name in PHOTOS:
        (root / name).mkdir()
        base = sample_photo(name, SIZE)
        for k in range(3):
            view = base if k == 0 else warp_image(base, sample_homography(SIZE, rng), SIZE)
            cv2.imwrite(str(root / name / f"{k}.png"), cv2.cvtColor(view, cv2.COLOR_RGB2BGR))
    return root


@pytest.fixture(scope="module")
def sift() -> Extractor:
    return get_extractor("sift", max_keypoints=300)


def test_average_precision_by_hand() -> None:
    # relevant at ranks 1 and 3 of 5: (1/1 + 2/3) / 2
    assert average_precision([1, 0, 1, 0, 0]) == pytest.approx((1 + 2 / 3) / 2)
    # a third positive never retrieved counts as precision 0
    assert average_precision([1, 0, 1, 0, 0], positives=3) == pytest.approx((1 + 2 / 3) / 3)
    assert average_precision([0, 0, 1]) == pytest.approx(1 / 3)
    assert average_precision([0, 0, 0]) == 0.0
    assert precision_at([1, 0, 1, 0, 0], 1) == 1.0
    assert precision_at([1, 0, 1, 0, 0], 5) == pytest.approx(0.4)
    assert precision_at([1, 1], 10) == pytest.approx(0.2)  # missing entries count as misses


def test_index_and_query_find_the_group(folder: Path, sift: Extractor) -> None:
    index = build_index(folder, sift, max_side=320, progress=False)
    assert index.images == 9 and sorted(set(index.groups)) == sorted(PHOTOS)
    feats = [sift.extract(str(folder / p)) for p in index.paths]
    for i, f in enumerate(feats):
        ranking = rank(index, f, exclude=i)
        assert i not in ranking.images and len(ranking.images) == 8  # complete, without i
        top2 = [index.groups[j] for j in ranking.images[:2]]
        assert top2 == [index.groups[i]] * 2, (index.paths[i], top2)
        # verification: the two views of the same photo have far more inliers than the rest
        assert ranking.inliers[1] > 3 * max(ranking.inliers[2], 1)
        votes = rank(index, f, votes_only=True, exclude=i)
        assert (votes.inliers == -1).all() and np.all(np.diff(votes.votes) <= 0)


def test_query_an_image_file(folder: Path, sift: Extractor) -> None:
    """The Python entry point: a query photo not in the database, by path, finds its group."""
    index = build_index(folder, sift, max_side=320, progress=False)
    rng = np.random.default_rng(5)
    view = warp_image(sample_photo("coffee", SIZE), sample_homography(SIZE, rng), SIZE)
    results = query(index, sift, view)
    assert len(results) == 9 and [r["group"] for r in results[:3]] == ["coffee"] * 3
    assert results[0]["inliers"] > 3 * max(results[3]["inliers"], 1)
    assert set(results[0]) == {"image", "group", "inliers", "votes", "score"}
    with pytest.raises(InputError, match="'sift'"):
        query(index, get_extractor("orb"), view)


def test_index_round_trip_and_errors(folder: Path, sift: Extractor, tmp_path: Path) -> None:
    index = build_index(folder, sift, max_side=320, progress=False)
    out = index.save(tmp_path / "idx")
    back = load_index(out)
    assert back.paths == index.paths and back.feature == "sift"
    q = sift.extract(str(folder / "coffee" / "1.png"))
    a, b = rank(index, q), rank(back, q)
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.inliers, b.inliers)
    assert back.nbytes() > 0
    index.save(out)  # replacing an index is fine; replacing anything else is not
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x.txt").write_text("mine")
    with pytest.raises(OSError, match="not a retrieval index"):
        index.save(tmp_path / "other")
    with pytest.raises(FileNotFoundError, match="no such index folder"):
        load_index(tmp_path / "missing")
    (out / "arrays.npz").write_bytes(b"garbage")
    with pytest.raises(InputError, match="arrays.npz"):
        load_index(out)
    (out / "index.faiss").unlink()
    with pytest.raises(FileNotFoundError, match="index.faiss"):
        load_index(out)
    with pytest.raises(InputError, match="128-D"):
        rank(index, get_extractor("orb", max_keypoints=50).extract(str(folder / "coffee/0.png")))


def test_evaluation_rows_and_distractors(folder: Path, sift: Extractor, tmp_path: Path) -> None:
    train = tmp_path / "train"
    (train / "keep").mkdir(parents=True)
    (train / "skip").mkdir()
    cv2.imwrite(str(train / "keep" / "a.png"), sample_photo("rocket", (200, 300))[:, :, ::-1])
    cv2.imwrite(str(train / "skip" / "b.png"), sample_photo("coffee", (200, 300))[:, :, ::-1])
    d1 = make_distractors(train, tmp_path / "d1", 3, seed=1, exclude=["skip"], size=(96, 128))
    d2 = make_distractors(train, tmp_path / "d2", 3, seed=1, exclude=["skip"], size=(96, 128))
    assert [p.read_bytes() for p in d1] == [p.read_bytes() for p in d2]  # deterministic
    data = load_retrieval_data(folder, tmp_path / "d1")
    assert len(data.paths) == 12 and len(data.queries) == 9
    rows = evaluate_retrieval(sift, data, max_side=320, progress=False)
    assert [r.method for r in rows] == ["sift", "sift+votes"]
    s = rows[0].summary
    assert s["queries"] == 9 and s["database_images"] == 12
    assert s["map"] == pytest.approx(1.0) and s["precision_at_1"] == 1.0
    assert s["precision_at_5"] == pytest.approx(2 / 5)  # two positives per query
    assert all(not q["query"].startswith("d1") for q in rows[0].queries)
    assert s["index_type"] == "IndexFlatL2" and 0 < s["search_seconds_per_query"]
    assert s["search_seconds_per_query"] <= s["seconds_per_query"]
    ivf = evaluate_retrieval(sift, data, max_side=320, progress=False, kind="ivf")[0].summary
    assert ivf["index_type"] == "IndexIVFFlat" and ivf["map"] > 0.9  # approximate search


class _MeanColour(nn.Module):
    """A stand-in network whose global descriptor is the image's mean colour."""

    def forward(self, x):  # pragma: no cover - unused
        return x

    def global_descriptor(self, image: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(image.mean(dim=(0, 2, 3)) - 0.4, dim=0)


class _Holder(Extractor):
    name = "colour"

    def __init__(self, net: nn.Module | None) -> None:
        self.net = net

    def _extract(self, image):  # pragma: no cover - unused
        raise NotImplementedError


def test_global_extractor_ranks_by_cosine(folder: Path) -> None:
    with pytest.raises(InputError, match="no global descriptor"):
        GlobalExtractor(_Holder(nn.Linear(1, 1)))
    ex = GlobalExtractor(_Holder(_MeanColour()))
    assert ex.name == "colour-global"
    f = ex.extract(sample_photo("coffee", (60, 80)))
    assert len(f) == 1 and np.linalg.norm(f.descriptors) == pytest.approx(1.0, abs=1e-5)
    rows = evaluate_retrieval(ex, load_retrieval_data(folder), max_side=160, progress=False)
    assert [r.method for r in rows] == ["colour-global"]
    assert rows[0].summary["index_descriptors"] == 9
    assert rows[0].summary["precision_at_1"] >= 2 / 3  # mean colour tells these photos apart


def test_load_retrieval_data_errors(tmp_path: Path) -> None:
    (tmp_path / "g").mkdir()
    cv2.imwrite(str(tmp_path / "g" / "a.png"), np.zeros((20, 20, 3), np.uint8))
    with pytest.raises(ValueError, match="single image"):
        load_retrieval_data(tmp_path)
    cv2.imwrite(str(tmp_path / "loose.png"), np.zeros((20, 20, 3), np.uint8))
    with pytest.raises(ValueError, match="group folder"):
        load_retrieval_data(tmp_path)


def test_cli_index_query_evaluate(folder: Path, tmp_path: Path, capsys) -> None:
    idx = tmp_path / "idx"
    assert main(["index", str(folder), "--features", "sift", "--out", str(idx), "--quiet"]) == 0
    out = tmp_path / "q.json"
    q = str(folder / "chelsea" / "2.png")
    assert main(["query", q, "--index", str(idx), "--top", "3", "--json", str(out)]) == 0
    results = json.loads(out.read_text())["results"]
    assert [r["group"] for r in results] == ["chelsea"] * 3  # itself, then its two views
    assert main(["query", q, "--index", str(tmp_path / "nope")]) == 2
    assert "no such index folder" in capsys.readouterr().err
    report = tmp_path / "rep"
    argv = ["evaluate", "--task", "retrieval", "--data", str(folder), "--features", "sift"]
    assert main([*argv, "--out", str(report), "--quiet", "--max-side", "320"]) == 0
    doc = json.loads((report / "results.json").read_text())
    assert doc["results"][0]["summary"]["map"] == pytest.approx(1.0)
    assert (report / "top5.png").stat().st_size > 0 and (report / "report.md").is_file()


@pytest.mark.skipif(not (SHARED / "retrieval").is_dir(), reason="../shared/data/retrieval absent")
def test_real_retrieval_folder_loads() -> None:
    data = load_retrieval_data(SHARED / "retrieval")
    assert len(data.queries) == 46
    assert len({g for g in data.groups}) == 5
