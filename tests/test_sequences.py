"""Tests of keypointlab.data.sequences: HPatches and Oxford layouts, splits, bad input."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from keypointlab.data.sequences import Sequence, load_dataset, read_homography
from keypointlab.geometry import InvalidHomographyError


def _h(n: int) -> np.ndarray:
    """A distinct, valid homography per pair index."""
    return np.array([[1.0 + 0.01 * n, 0.02, n], [-0.01, 1.0, 2.0 * n], [1e-5 * n, 0.0, 1.0]])


def _write_h(path: Path, H: np.ndarray) -> None:
    path.write_text("\n".join(" ".join(f"{v:.10g}" for v in row) for row in H) + "\n")


def make_sequence(
    folder: Path,
    layout: str = "hpatches",
    ext: str = "ppm",
    n_images: int = 6,
    homographies: tuple[int, ...] = (2, 3, 4, 5, 6),
) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    img = np.zeros((8, 10, 3), np.uint8)
    for i in range(1, n_images + 1):
        img[:] = 20 * i
        name = f"{i}.{ext}" if layout == "hpatches" else f"img{i}.{ext}"
        assert cv2.imwrite(str(folder / name), img)
    for n in homographies:
        name = f"H_1_{n}" if layout == "hpatches" else f"H1to{n}p"
        _write_h(folder / name, _h(n))
    return folder


def test_hpatches_layout(tmp_path):
    make_sequence(tmp_path / "i_ajuntament")
    make_sequence(tmp_path / "v_boat", ext="png")
    make_sequence(tmp_path / "wall", ext="jpg")
    seqs, skipped = load_dataset(tmp_path)
    assert skipped == []
    assert [s.name for s in seqs] == ["i_ajuntament", "v_boat", "wall"]
    assert [s.split for s in seqs] == ["illumination", "viewpoint", "other"]
    s = seqs[0]
    assert s.root == tmp_path
    assert sorted(s.images) == [1, 2, 3, 4, 5, 6]
    assert s.pairs() == [(1, 2), (1, 3), (1, 4), (1, 5), (1, 6)]
    for n in range(2, 7):
        np.testing.assert_allclose(s.homographies[n], _h(n))
        assert s.homographies[n].dtype == np.float64
    assert s.relative(1) == "i_ajuntament/1.ppm"
    assert seqs[1].relative(6) == "v_boat/6.png"
    assert seqs[2].relative(3) == "wall/3.jpg"


def test_oxford_layout_nested(tmp_path):
    make_sequence(tmp_path / "oxford" / "graf", layout="oxford", ext="png")
    make_sequence(tmp_path / "oxford" / "bikes", layout="oxford", ext="ppm")
    make_sequence(tmp_path / "hpatches" / "v_x", layout="hpatches")
    seqs, skipped = load_dataset(tmp_path)
    assert skipped == []
    assert [s.name for s in seqs] == ["hpatches/v_x", "oxford/bikes", "oxford/graf"]
    # the split comes from the folder's own name, not the path
    assert [s.split for s in seqs] == ["viewpoint", "other", "other"]
    graf = seqs[2]
    assert graf.relative(1) == "oxford/graf/img1.png"
    np.testing.assert_allclose(graf.homographies[4], _h(4))
    # loading the sub-dataset gives names and feature keys relative to it
    seqs, _ = load_dataset(tmp_path / "oxford")
    assert [s.name for s in seqs] == ["bikes", "graf"]
    assert seqs[1].relative(1) == "graf/img1.png"
    assert seqs[1].relative(6) == "graf/img6.png"
    assert seqs[0].relative(2) == "bikes/img2.ppm"


def test_split_from_name():
    def split(name: str) -> str:
        return Sequence(name=name, root=Path("."), images={}).split

    assert split("i_dome") == "illumination"
    assert split("v_wall") == "viewpoint"
    assert split("hpatches/i_dome") == "illumination"
    assert split("i_folder/v_wall") == "viewpoint"
    assert split("graf") == "other"
    assert split("iv_x") == "other"
    assert split("I_upper") == "other"


def test_root_that_is_a_sequence(tmp_path):
    seq = make_sequence(tmp_path / "v_single")
    seqs, skipped = load_dataset(seq)
    assert skipped == []
    assert len(seqs) == 1
    assert seqs[0].name == "v_single"
    assert seqs[0].split == "viewpoint"
    assert seqs[0].relative(2) == "2.ppm"


def test_missing_root(tmp_path):
    missing = tmp_path / "does_not_exist"
    with pytest.raises(FileNotFoundError) as info:
        load_dataset(missing)
    assert str(missing) in str(info.value)


def test_root_without_sequences(tmp_path):
    (tmp_path / "empty_sub").mkdir()
    (tmp_path / "readme.txt").write_text("nothing here")
    with pytest.raises(FileNotFoundError) as info:
        load_dataset(tmp_path)
    assert str(tmp_path) in str(info.value)


def test_sequence_without_homographies_is_skipped(tmp_path):
    make_sequence(tmp_path / "i_good")
    make_sequence(tmp_path / "v_no_h", homographies=())
    seqs, skipped = load_dataset(tmp_path)
    assert [s.name for s in seqs] == ["i_good"]
    reasons = [s.reason for s in skipped if s.item.startswith("v_no_h")]
    # one message for the sequence, naming the files it looked for
    assert len(reasons) == 1, skipped
    assert "H_1_N" in reasons[0] and "H1toNp" in reasons[0]
    assert [s.item for s in skipped] == ["v_no_h"]


def test_missing_single_homography_skips_only_that_pair(tmp_path):
    make_sequence(tmp_path / "v_partial", homographies=(2, 3, 5, 6))
    seqs, skipped = load_dataset(tmp_path)
    assert seqs[0].pairs() == [(1, 2), (1, 3), (1, 5), (1, 6)]
    assert len(skipped) == 1
    assert skipped[0].item == "v_partial 1-4"
    assert "H_1_4" in skipped[0].reason


@pytest.mark.parametrize(
    "content, words",
    [
        ("1 0 0\n0 nan 0\n0 0 1\n", "non-finite"),
        ("1 2 3\n2 4 6\n0 0 1\n", "singular"),
        ("1 0 0\n0 1 0\n0 0\n", "9 numbers"),
        ("1 0 0\n0 1 0\n0 0 1 1\n", "9 numbers"),
        ("1 0 0\n0 one 0\n0 0 1\n", "cannot parse"),
        ("", "9 numbers"),
    ],
)
def test_bad_homography_file_is_skipped_and_named(tmp_path, content, words):
    make_sequence(tmp_path / "v_ok")
    bad = make_sequence(tmp_path / "v_bad")
    (bad / "H_1_3").write_text(content)
    seqs, skipped = load_dataset(tmp_path)
    assert [s.name for s in seqs] == ["v_bad", "v_ok"]
    assert seqs[0].pairs() == [(1, 2), (1, 4), (1, 5), (1, 6)]
    assert seqs[1].pairs() == [(1, 2), (1, 3), (1, 4), (1, 5), (1, 6)]
    assert len(skipped) == 1
    assert skipped[0].item == "v_bad 1-3"
    assert str(bad / "H_1_3") in skipped[0].reason
    assert words in skipped[0].reason
    with pytest.raises(InvalidHomographyError, match="H_1_3"):
        read_homography(bad / "H_1_3")


def test_all_homographies_bad_skips_sequence(tmp_path):
    make_sequence(tmp_path / "i_ok", layout="oxford")
    bad = make_sequence(tmp_path / "i_bad", layout="oxford")
    for n in range(2, 7):
        (bad / f"H1to{n}p").write_text("nan " * 9)
    seqs, skipped = load_dataset(tmp_path)
    assert [s.name for s in seqs] == ["i_ok"]
    assert sum(s.item.startswith("i_bad 1-") for s in skipped) == 5
    assert all("H1to" in s.reason for s in skipped if s.item.startswith("i_bad 1-"))


def test_missing_image_skips_its_pair(tmp_path):
    make_sequence(tmp_path / "v_five", n_images=5)  # no 6.ppm, although H_1_6 exists
    seqs, _ = load_dataset(tmp_path)
    assert seqs[0].pairs() == [(1, 2), (1, 3), (1, 4), (1, 5)]
    assert 6 not in seqs[0].images
