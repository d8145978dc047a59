"""The one HDF5 module: features, matches and keypoint labels in the layout hloc uses.

Features (and the pseudo-ground-truth labels of ``keypointlab adapt``) are one group per
image, named by the image's path relative to its folder (:func:`safe_key`): a group
``graf/img1.png`` (nested groups ``graf`` / ``img1.png``) holds ``keypoints`` ``(N, 2)`` xy
pixels, ``scores`` ``(N,)``, ``descriptors`` ``(N, D)`` (labels have none) and, when known,
``scales`` ``(N,)`` (keypoint size in pixels), ``orientations`` ``(N,)`` (radians) and
``image_size`` ``(height, width)``. Matches are one group per pair (:func:`pair_key`) with
``matches0`` ``(N0,)`` int32 (index into image 1, ``-1`` unmatched) and
``matching_scores0``.

This module works on plain arrays; :mod:`keypointlab.features.h5` turns them into
:class:`~keypointlab.features.Features`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import h5py
import numpy as np

#: datasets of a feature group, in writing order; the last three are optional
FEATURE_FIELDS = ("keypoints", "scores", "descriptors", "scales", "orientations")
OPTIONAL_FIELDS = ("descriptors", "scales", "orientations")


class FeatureFileError(KeyError):
    """A feature file that lacks an image or a dataset, or holds inconsistent arrays."""

    def __str__(self) -> str:  # KeyError quotes its message; show it plainly
        return str(self.args[0])


def safe_key(relative: str) -> str:
    """An HDF5 group name for an image path relative to the folder.

    Path components that HDF5 or a reader could misinterpret (``.``, ``..``, empty) are
    escaped, so a name can never point outside the file's intended layout.
    """
    parts = []
    for part in relative.replace("\\", "/").split("/"):
        if part in ("", ".", ".."):
            part = part.replace(".", "%2E") or "%2F"
        parts.append("".join(_escape_char(c) for c in part))
    return "/".join(parts)


def _escape_char(c: str) -> str:
    """``c``, or a ``%`` escape when HDF5 cannot store it (NUL; a surrogate, which is how
    Python spells a file name's bytes that are not UTF-8, e.g. Latin-1 ``caf\\xe9.png``)."""
    code = ord(c)
    if code == 0:
        return "%00"
    if 0xDC80 <= code <= 0xDCFF:  # os.fsdecode's surrogateescape of byte code - 0xDC00
        return f"%{code - 0xDC00:02X}"
    if 0xD800 <= code <= 0xDFFF:
        return f"%u{code:04X}"
    return c


def write_keypoint_group(
    h5: h5py.File, key: str, arrays: dict[str, np.ndarray], image_size: tuple[int, int]
) -> None:
    """Write (or replace) the group of image ``key``: the :data:`FEATURE_FIELDS` present
    in ``arrays`` (keypoints and scores as float32) and ``image_size``."""
    if key in h5:
        del h5[key]
    group = h5.create_group(key)
    for name in FEATURE_FIELDS:
        value = arrays.get(name)
        if value is None:
            continue
        value = np.asarray(value)
        if name != "descriptors":
            value = value.astype(np.float32)
        group.create_dataset(name, data=value)
    group.create_dataset("image_size", data=np.asarray(image_size, dtype=np.int64))


def read_keypoint_group(
    h5: h5py.File, key: str, required: tuple[str, ...] = ("keypoints", "scores", "descriptors")
) -> dict[str, np.ndarray]:
    """The arrays of image ``key``'s group: ``required`` ones and the optional ones
    present, plus ``image_size`` when stored.

    Raises:
        FeatureFileError: the group or a required dataset is missing, keypoints are not
            ``(N, 2)`` finite values, or a per-keypoint array has another length.
    """
    if key not in h5:
        raise FeatureFileError(f"{h5.filename}: no group {key!r}")
    group = h5[key]
    out: dict[str, np.ndarray] = {}
    for name in FEATURE_FIELDS:
        if name in group:
            out[name] = np.asarray(group[name])
        elif name in required:
            raise FeatureFileError(f"{h5.filename}: group {key!r} has no dataset {name!r}")
    kp = out.get("keypoints")
    if kp is not None:
        if kp.ndim != 2 or kp.shape[1] != 2:
            raise FeatureFileError(
                f"{h5.filename}: {key}/keypoints has shape {kp.shape}, not (N, 2)"
            )
        if not np.all(np.isfinite(kp)):
            raise FeatureFileError(f"{h5.filename}: {key}/keypoints has non-finite values")
        for name in ("scores", "scales", "orientations"):
            if name in out and out[name].reshape(-1).shape[0] != len(kp):
                raise FeatureFileError(
                    f"{h5.filename}: {key}/{name} has {out[name].size} values for "
                    f"{len(kp)} keypoints"
                )
    if "image_size" in group:
        out["image_size"] = np.asarray(group["image_size"])
    return out


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


def partial_path(out: str | Path) -> Path:
    """``<out>.partial``: where a file is written until it is complete."""
    out = Path(out)
    return out.with_name(out.name + ".partial")


@contextmanager
def partial_h5(out: str | Path, resume: bool = False) -> Iterator[h5py.File]:
    """Open ``<out>.partial`` for writing (appending when ``resume``) and rename it to
    ``out`` when the block ends without an error, so a crash never leaves a file that
    looks complete; after an error the partial file stays for ``resume``."""
    out = Path(out)
    partial = partial_path(out)
    if not resume:
        partial.unlink(missing_ok=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(partial, "a") as h5:
        yield h5
    os.replace(partial, out)
