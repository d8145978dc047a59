"""Feature files as :class:`Features`: the layout itself is :mod:`keypointlab.io.h5`'s."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from keypointlab.features.base import Extractor, Features
from keypointlab.io.h5 import (
    FeatureFileError,
    read_keypoint_group,
    write_keypoint_group,
)

__all__ = ["FeatureFileError", "FeatureFileExtractor", "read_features", "write_features"]


def read_features(h5: h5py.File, key: str, image_size: tuple[int, int]) -> Features:
    """Read the features of image ``key`` from an open file (see :mod:`keypointlab.io.h5`).

    Raises:
        FeatureFileError: the group or one of its datasets is missing or malformed.
    """
    arrays = read_keypoint_group(h5, key)
    try:
        return Features(
            arrays["keypoints"],
            arrays["scores"],
            arrays["descriptors"],
            image_size,
            scales=arrays.get("scales"),
            orientations=arrays.get("orientations"),
        )
    except ValueError as exc:
        raise FeatureFileError(f"{h5.filename}: group {key!r}: {exc}") from exc


def write_features(h5: h5py.File, key: str, features: Features) -> None:
    """Write (or replace) the features of image ``key`` in an open file."""
    write_keypoint_group(h5, key, features.arrays(), features.image_size)


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
