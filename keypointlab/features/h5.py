"""Feature files as :class:`Features`: the layout itself is :mod:`keypointlab.io.h5`'s.

A file written here records which extractor wrote it (:func:`extractor_record`, stored in
the root attribute :data:`~keypointlab.io.h5.EXTRACTOR_ATTR`); :func:`check_record`
refuses to add to a file made by another extractor or with other settings.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from keypointlab.errors import OutputError
from keypointlab.features.base import Extractor, Features
from keypointlab.io.h5 import (
    EXTRACTOR_ATTR,
    FeatureFileError,
    descriptor_sizes,
    read_keypoint_group,
    write_keypoint_group,
)

logger = logging.getLogger(__name__)

__all__ = [
    "FeatureFileError",
    "FeatureFileExtractor",
    "check_record",
    "extractor_record",
    "read_features",
    "read_record",
    "write_features",
    "write_record",
]


def read_features(h5: h5py.File, key: str, image_size: tuple[int, int]) -> Features:
    """Read the features of image ``key`` from an open file (see :mod:`keypointlab.io.h5`).

    Raises:
        FeatureFileError: the group or one of its datasets is missing or malformed.
    """
    arrays = read_keypoint_group(h5, key)
    try:
        feats = Features(
            arrays["keypoints"],
            arrays["scores"],
            arrays["descriptors"],
            image_size,
            scales=arrays.get("scales"),
            orientations=arrays.get("orientations"),
        )
    except ValueError as exc:
        raise FeatureFileError(f"{h5.filename}: group {key!r}: {exc}") from exc
    if not np.isfinite(feats.descriptors).all():  # finite as stored, not as float32
        raise FeatureFileError(
            f"{h5.filename}: group {key!r}, dataset 'descriptors' has values too large for float32"
        )
    return feats


def write_features(h5: h5py.File, key: str, features: Features) -> None:
    """Write (or replace) the features of image ``key`` in an open file."""
    write_keypoint_group(h5, key, features.arrays(), features.image_size)


def extractor_record(extractor: Extractor, **settings: Any) -> dict[str, Any]:
    """What a features file records about its writer: ``extractor.identity()`` and the
    run's own ``settings`` (e.g. ``max_keypoints``), as JSON would give them back."""
    record = {"extractor": extractor.identity(), **settings}
    return json.loads(json.dumps(record, sort_keys=True, default=str))


def read_record(h5: h5py.File) -> dict[str, Any] | None:
    """The record of the extractor that wrote ``h5`` (None: the file records none).

    Raises:
        FeatureFileError: the record is not a JSON object.
    """
    raw = h5.attrs.get(EXTRACTOR_ATTR)
    if raw is None:
        return None
    try:
        record = json.loads(raw.decode() if isinstance(raw, bytes) else str(raw))
    except (ValueError, UnicodeDecodeError) as exc:
        raise FeatureFileError(f"{h5.filename}: attribute {EXTRACTOR_ATTR!r} is not JSON") from exc
    if not isinstance(record, dict):
        raise FeatureFileError(f"{h5.filename}: attribute {EXTRACTOR_ATTR!r} is not a mapping")
    return record


def write_record(h5: h5py.File, record: dict[str, Any]) -> None:
    """Store ``record`` (from :func:`extractor_record`) as the file's writer."""
    h5.attrs[EXTRACTOR_ATTR] = json.dumps(record, sort_keys=True)


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): value}


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 24 else text[:12] + "..."


def _importance(key: str) -> tuple[bool, bool, str]:
    """Order of the differences in a message: the name, settings, then model details."""
    return key != "extractor.name", key.startswith(("extractor.model", "extractor.class")), key


RESUME_HINT = "resume with the same --features and settings, or start over without --resume"


def check_record(
    h5: h5py.File, record: dict[str, Any], path: str | Path, hint: str = RESUME_HINT
) -> None:
    """Refuse to add features made as ``record`` says to a file made otherwise.

    A file that records no writer (one made by hand or by an older version) is accepted
    with a warning; the caller should then compare descriptor sizes
    (:func:`~keypointlab.io.h5.descriptor_sizes`) before writing.

    Raises:
        OutputError: ``h5`` was written by another extractor or with other settings (the
            message lists what differs).
    """
    stored = read_record(h5)
    if stored is None:
        if descriptor_sizes(h5):
            logger.warning(
                "%s records no extractor; assuming its features are %s's",
                path,
                record.get("extractor", {}).get("name"),
            )
        return
    if stored == record:
        return
    there, now = _flat(stored), _flat(record)
    diffs = [
        f"{k} {_short(there.get(k))} there, {_short(now.get(k))} now"
        for k in sorted(set(there) | set(now), key=_importance)
        if there.get(k) != now.get(k)
    ]
    more = f" and {len(diffs) - 2} more" if len(diffs) > 2 else ""
    raise OutputError(
        f"{path}: holds features of another extractor or other settings "
        f"({'; '.join(diffs[:2])}{more}); {hint}"
    )


class FeatureFileExtractor(Extractor):
    """Serves precomputed features from an HDF5 file, looked up by relative image path.

    Raises (on opening):
        FileNotFoundError: no such file.
        FeatureFileError: not an HDF5 file, or its groups hold descriptors of different
            sizes (features of two extractors), which could never be matched.
    """

    name = "features-file"

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: no such features file")
        try:
            self._h5 = h5py.File(self.path, "r")
        except OSError as exc:
            raise FeatureFileError(f"{self.path}: not a readable HDF5 file ({exc})") from exc
        try:
            sizes = descriptor_sizes(self._h5)
        except FeatureFileError:
            self._h5.close()
            raise
        if len(sizes) > 1:
            self._h5.close()
            (d0, g0), (d1, g1) = list(sizes.items())[:2]
            raise FeatureFileError(
                f"{self.path}: group {g1!r}, dataset 'descriptors' has {d1} values per "
                f"keypoint, but group {g0!r} has {d0}: the file mixes the features of "
                "different extractors"
            )
        self.descriptor_size = next(iter(sizes), None)
        self.name = self.path.stem

    def lookup(self, key: str, image_size: tuple[int, int]) -> Features:
        """Features stored for ``key`` (keypoints in that image's own pixels).

        Raises:
            FeatureFileError: no group ``key``, or it is malformed (the message names the
                file, the group and the dataset).
        """
        feats = read_features(self._h5, key, image_size)
        dim = feats.descriptors.shape[1]
        if self.descriptor_size is not None and dim != self.descriptor_size:
            raise FeatureFileError(
                f"{self.path}: group {key!r}, dataset 'descriptors' has {dim} values per "
                f"keypoint, not {self.descriptor_size} as the other groups"
            )
        return feats

    def _extract(self, image: np.ndarray) -> Features:
        raise TypeError("a features file is looked up by image path, not computed from pixels")

    def close(self) -> None:
        self._h5.close()
