"""The one HDF5 module: features, matches and keypoint labels in the layout hloc uses.

Features (and the pseudo-ground-truth labels of ``keypointlab adapt``) are one group per
image, named by the image's path relative to its folder (:func:`safe_key`): a group
``graf/img1.png`` (nested groups ``graf`` / ``img1.png``) holds ``keypoints`` ``(N, 2)`` xy
pixels, ``scores`` ``(N,)``, ``descriptors`` ``(N, D)`` (labels have none) and, when known,
``scales`` ``(N,)`` (keypoint size in pixels), ``orientations`` ``(N,)`` (radians) and
``image_size`` ``(height, width)``. Matches are one group per pair (:func:`pair_key`) with
``matches0`` ``(N0,)`` int32 (index into image 1, ``-1`` unmatched) and
``matching_scores0``. The file's root attribute :data:`EXTRACTOR_ATTR` records (as JSON)
which extractor and settings wrote its features.

Reading checks every dataset before its values are read (type, shape, size, finite
values) and raises :class:`FeatureFileError` naming the file, the group and the dataset.

This module works on plain arrays; :mod:`keypointlab.features.h5` turns them into
:class:`~keypointlab.features.Features`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import h5py
import numpy as np

from keypointlab.errors import InputError, OutputError
from keypointlab.io.outputs import check_output_file, output_lock

#: datasets of a feature group, in writing order; the last three are optional
FEATURE_FIELDS = ("keypoints", "scores", "descriptors", "scales", "orientations")
OPTIONAL_FIELDS = ("descriptors", "scales", "orientations")


#: most values a dataset may hold before it is read (a dataset's shape is only metadata:
#: a few bytes on disk can claim terabytes)
MAX_DATASET_VALUES = 2**27

#: root attribute of a features file: JSON of the extractor and settings that wrote it
EXTRACTOR_ATTR = "keypointlab_extractor"


class FeatureFileError(InputError, KeyError):
    """A feature file that lacks an image or a dataset, or holds arrays of the wrong type,
    shape or size, or non-finite values. An :class:`~keypointlab.errors.InputError` (and a
    ``KeyError``, as it always was); the message names the file, the group and the dataset.
    """

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


def _member(parent: h5py.Group, name: str, where: str) -> object | None:
    """``parent[name]``, or None when there is no such member (a dangling link included)."""
    try:
        return parent.get(name)
    except (KeyError, ValueError, TypeError, OSError, RuntimeError) as exc:
        raise FeatureFileError(f"{where} cannot be opened ({exc})") from exc


def _dtype_name(dtype: np.dtype) -> str:
    if h5py.check_string_dtype(dtype) is not None:
        return "string"
    return f"compound ({', '.join(dtype.names)})" if dtype.names else str(dtype)


def _read_dataset(h5: h5py.File, key: str, group: h5py.Group, name: str) -> np.ndarray | None:
    """The values of dataset ``name`` of ``group`` (None when absent), checked to be a
    finite numeric array of at most :data:`MAX_DATASET_VALUES` values before it is read."""
    where = f"{h5.filename}: group {key!r}, dataset {name!r}"
    obj = _member(group, name, where)
    if obj is None:
        return None
    if not isinstance(obj, h5py.Dataset):
        raise FeatureFileError(f"{where} is a {type(obj).__name__}, not a dataset")
    if obj.shape is None:
        raise FeatureFileError(f"{where} holds no array (an empty dataspace)")
    if obj.dtype.kind not in "iuf":
        raise FeatureFileError(f"{where} holds {_dtype_name(obj.dtype)} values, not numbers")
    if math.prod(obj.shape) > MAX_DATASET_VALUES:
        raise FeatureFileError(
            f"{where} has shape {obj.shape}: more than {MAX_DATASET_VALUES} values, the "
            "limit of a features dataset"
        )
    try:
        values = np.asarray(obj[()])
    except (OSError, ValueError, TypeError, RuntimeError) as exc:
        raise FeatureFileError(f"{where} cannot be read ({exc})") from exc
    if values.dtype.kind == "f" and not np.isfinite(values).all():
        raise FeatureFileError(f"{where} has NaN or infinite values")
    return values


def _check_shapes(h5: h5py.File, key: str, out: dict[str, np.ndarray]) -> None:
    """Keypoints ``(N, 2)``, descriptors ``(N, D)``, one value per keypoint in the others,
    ``image_size`` two positive integers."""

    def where(name: str) -> str:
        return f"{h5.filename}: group {key!r}, dataset {name!r}"

    kp = out.get("keypoints")
    if kp is not None:
        if kp.ndim != 2 or kp.shape[1] != 2:
            raise FeatureFileError(f"{where('keypoints')} has shape {kp.shape}, not (N, 2)")
        n = len(kp)
        for name in ("scores", "scales", "orientations"):
            if name in out and (out[name].ndim > 2 or out[name].size != n):
                raise FeatureFileError(
                    f"{where(name)} has shape {out[name].shape} for {n} keypoints, not ({n},)"
                )
        desc = out.get("descriptors")
        if desc is not None and (desc.ndim != 2 or desc.shape[0] != n):
            transposed = desc.ndim == 2 and desc.shape[1] == n
            hint = " (transposed? this layout is (N, D))" if transposed else ""
            raise FeatureFileError(
                f"{where('descriptors')} has shape {desc.shape} for {n} keypoints, not "
                f"({n}, D){hint}"
            )
    size = out.get("image_size")
    if size is not None and (
        size.shape != (2,) or not np.all(size > 0) or not np.all(size == np.round(size))
    ):
        raise FeatureFileError(
            f"{where('image_size')} is {size.tolist()}, not (height, width) in pixels"
        )


def read_keypoint_group(
    h5: h5py.File, key: str, required: tuple[str, ...] = ("keypoints", "scores", "descriptors")
) -> dict[str, np.ndarray]:
    """The arrays of image ``key``'s group: ``required`` ones and the optional ones
    present, plus ``image_size`` when stored.

    Raises:
        FeatureFileError: the group or a required dataset is missing; a dataset is not a
            finite numeric array; keypoints are not ``(N, 2)``, descriptors not ``(N, D)``,
            a per-keypoint array has another length or ``image_size`` is not two positive
            integers. The message names the file, the group and the dataset.
    """
    group = _member(h5, key, f"{h5.filename}: group {key!r}")
    if group is None:
        raise FeatureFileError(f"{h5.filename}: no group {key!r}")
    if not isinstance(group, h5py.Group):
        raise FeatureFileError(f"{h5.filename}: {key!r} is a {type(group).__name__}, not a group")
    out: dict[str, np.ndarray] = {}
    for name in (*FEATURE_FIELDS, "image_size"):
        values = _read_dataset(h5, key, group, name)
        if values is not None:
            out[name] = values
        elif name in required:
            raise FeatureFileError(f"{h5.filename}: group {key!r} has no dataset {name!r}")
    _check_shapes(h5, key, out)
    return out


def descriptor_sizes(h5: h5py.File) -> dict[int, str]:
    """Descriptor size -> the first group holding descriptors of that size, from the
    datasets' shapes (no values are read). More than one entry: the file mixes extractors."""
    sizes: dict[int, str] = {}

    def visit(name: str, obj: object) -> None:
        if name.rsplit("/", 1)[-1] == "descriptors" and isinstance(obj, h5py.Dataset):
            shape = obj.shape
            if shape is not None and len(shape) == 2:
                sizes.setdefault(int(shape[1]), name.rsplit("/", 1)[0] if "/" in name else "/")

    try:
        h5.visititems(visit)
    except (KeyError, ValueError, TypeError, OSError, RuntimeError) as exc:
        raise FeatureFileError(f"{h5.filename}: cannot list its groups ({exc})") from exc
    return sizes


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
        FeatureFileError: the pair is not in the file, or its ``matches0`` is not a 1-D
            integer array of indices (or -1).
    """
    key = pair_key(name0, name1)
    group = _member(h5, key, f"{h5.filename}: group {key!r}")
    if not isinstance(group, h5py.Group) or "matches0" not in group:
        raise FeatureFileError(f"{h5.filename}: no matches for pair {name0!r} {name1!r}")
    m = _read_dataset(h5, key, group, "matches0")
    if m is None or m.ndim != 1 or m.dtype.kind not in "iu" or (m.size and m.min() < -1):
        raise FeatureFileError(
            f"{h5.filename}: group {key!r}, dataset 'matches0' is not a 1-D array of indices "
            "(-1: unmatched)"
        )
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
    looks complete; after an error the partial file stays for ``resume``.

    The whole block holds the output's lock (:func:`~keypointlab.io.outputs.output_lock`):
    a second run on the same ``out`` is refused at once instead of writing into this one's
    partial file.

    Raises:
        OutputError: ``out`` is a folder or cannot be written, or another run holds it.
    """
    out = check_output_file(out)
    partial = partial_path(out)
    with output_lock(out):
        if partial.is_dir():
            raise OutputError(f"{out}: its partial file {partial} is a folder")
        if not resume:
            partial.unlink(missing_ok=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        with h5py.File(partial, "a") as h5:
            yield h5
        os.replace(partial, out)
