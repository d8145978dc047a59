"""HDF5 feature and match files in hloc's layout, read back."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from keypointlab.features.base import Features
from keypointlab.features.h5 import read_features, write_features
from keypointlab.io.h5 import FeatureFileError, pair_key, read_matches, write_matches


def test_features_round_trip_with_nested_names(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    f = Features(rng.uniform(0, 50, (7, 2)), rng.random(7), rng.random((7, 16)), (60, 80))
    with h5py.File(tmp_path / "f.h5", "w") as h5:
        write_features(h5, "seq/a.png", f)
        write_features(h5, "seq/a.png", f.select(np.arange(3)))  # replacing works
    with h5py.File(tmp_path / "f.h5", "r") as h5:
        assert list(h5["seq"]) == ["a.png"]
        assert tuple(h5["seq/a.png/image_size"][()]) == (60, 80)
        g = read_features(h5, "seq/a.png", (60, 80))
        with pytest.raises(FeatureFileError, match="b.png"):
            read_features(h5, "seq/b.png", (60, 80))
    np.testing.assert_allclose(g.keypoints, f.keypoints[:3], atol=1e-4)
    np.testing.assert_allclose(g.descriptors, f.descriptors[:3], atol=1e-6)


def test_matches_round_trip(tmp_path: Path) -> None:
    assert pair_key("a/b.png", "c/d.png") == "a-b.png/c-d.png"
    matches0 = np.array([2, -1, 0, -1])
    with h5py.File(tmp_path / "m.h5", "w") as h5:
        write_matches(h5, "a/b.png", "c/d.png", matches0)
    with h5py.File(tmp_path / "m.h5", "r") as h5:
        grp = h5["a-b.png"]["c-d.png"]
        assert grp["matches0"].dtype == np.int32
        assert list(grp["matching_scores0"][()]) == [1, 0, 1, 0]
        np.testing.assert_array_equal(read_matches(h5, "a/b.png", "c/d.png"), [[0, 2], [2, 0]])
        with pytest.raises(FeatureFileError, match="no matches"):
            read_matches(h5, "c/d.png", "a/b.png")
