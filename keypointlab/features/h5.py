"""Feature files in the layout hloc uses: one HDF5 group per image, named by its path.

A group ``graf/img1.png`` (nested groups ``graf`` / ``img1.png``) holds the datasets
``keypoints`` (N, 2) xy pixels, ``scores`` (N,), ``descriptors`` (N, D) and, when known,
``image_size`` (height, width).
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from keypointlab.features.base import Extractor, Features


class FeatureFileError(KeyError):
    """A feature file that lacks an image or a dataset, or holds inconsistent arrays."""

    def __str__(self) -> str:  # KeyError quotes its message; show it plainly
        return str(self.args[0])


def read_features(h5: h5py.File, key: str, image_size: tuple[int, int]) -> Features:
    """Read the features of image ``key`` from an open file.

    Raises:
        FeatureFileError: the group or one of its datasets is missing or malformed.
    """
    if key not in h5:
        raise FeatureFileError(f"{h5.filename}: no group {key!r}")
    group = h5[key]
    arrays = {}
    for name in ("keypoints", "scores", "descriptors"):
        if name not in group:
            raise FeatureFileError(f"{h5.filename}: group {key!r} has no dataset {name!r}")
        arrays[name] = np.asarray(group[name])
    kp = arrays["keypoints"]
    if kp.ndim != 2 or kp.shape[1] != 2:
        raise FeatureFileError(f"{h5.filename}: {key}/keypoints has shape {kp.shape}, not (N, 2)")
    if not np.all(np.isfinite(kp)):
        raise FeatureFileError(f"{h5.filename}: {key}/keypoints has non-finite values")
    try:
        return Features(kp, arrays["scores"], arrays["descriptors"], image_size)
    except ValueError as exc:
        raise FeatureFileError(f"{h5.filename}: group {key!r}: {exc}") from exc


def write_features(h5: h5py.File, key: str, features: Features) -> None:
    """Write (or replace) the features of image ``key`` in an open file."""
    if key in h5:
        del h5[key]
    group = h5.create_group(key)
    group.create_dataset("keypoints", data=features.keypoints.astype(np.float32))
    group.create_dataset("scores", data=features.scores.astype(np.float32))
    group.create_dataset("descriptors", data=features.descriptors)
    group.create_dataset("image_size", data=np.asarray(features.image_size, dtype=np.int64))


class FeatureFileExtractor(Extractor):
    """Serves precomputed features from an HDF5 file, looked up by relative image path."""

    name = "features-file"

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: no such features file")
        try:
            self._h5 = h5py.File(self.path, "r")
        except OSError as exc:
            raise FeatureFileError(f"{self.path}: not a readable HDF5 file ({exc})") from exc
        self.name = self.path.stem

    def lookup(self, key: str, image_size: tuple[int, int]) -> Features:
        """Features stored for ``key`` (keypoints in that image's own pixels)."""
        return read_features(self._h5, key, image_size)

    def _extract(self, image: np.ndarray) -> Features:
        raise TypeError("a features file is looked up by image path, not computed from pixels")

    def close(self) -> None:
        self._h5.close()


def pair_key(name0: str, name1: str) -> str:
    """hloc's match-group name for a pair: ``a-b.png/c-d.png`` for ``a/b.png`` and ``c/d.png``."""
    return "/".join((name0.replace("/", "-"), name1.replace("/", "-")))


def write_matches(
    h5: h5py.File, name0: str, name1: str, matches0: np.ndarray, scores0: np.ndarray | None = None
) -> None:
    """Write matches of a pair in hloc's layout: ``matches0`` (N0,) int32 index into image 1
    or -1, and ``matching_scores0`` (N0,) float16."""
    key = pair_key(name0, name1)
    if key in h5:
        del h5[key]
    group = h5.create_group(key)
    m = np.asarray(matches0, dtype=np.int32)
    group.create_dataset("matches0", data=m)
    s = np.asarray(scores0 if scores0 is not None else (m >= 0), dtype=np.float16)
    group.create_dataset("matching_scores0", data=s)


def read_matches(h5: h5py.File, name0: str, name1: str) -> np.ndarray:
    """``(M, 2)`` index pairs of the stored matches of a pair.

    Raises:
        FeatureFileError: the pair is not in the file.
    """
    key = pair_key(name0, name1)
    if key not in h5 or "matches0" not in h5[key]:
        raise FeatureFileError(f"{h5.filename}: no matches for pair {name0!r} {name1!r}")
    m = np.asarray(h5[key]["matches0"])
    idx = np.flatnonzero(m >= 0)
    return np.stack([idx, m[idx]], axis=1)
