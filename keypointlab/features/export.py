"""Extract a folder of images into an HDF5 feature file (hloc layout), resumably.

Work goes into ``<out>.partial`` (flushed after every image) and is renamed to ``<out>``
only when the folder is done, so a crash never leaves a file that looks complete, and
``resume=True`` continues from the partial file. The run holds ``<out>``'s lock throughout
(a second run on the same file is refused at once), and the file records which extractor
and settings wrote it: resuming with another extractor is refused.

Under ``torchrun``, :func:`extract_folder_distributed` splits the folder over the ranks
and merges their shard files into the file one process would write
(:mod:`keypointlab.io.distributed`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from tqdm import tqdm

from keypointlab.data.images import list_images, read_images
from keypointlab.errors import OutputError
from keypointlab.features.base import Extractor, Features
from keypointlab.features.h5 import (
    FeatureFileError,
    check_record,
    extractor_record,
    write_features,
    write_record,
)
from keypointlab.io.distributed import (
    World,
    reuse_shard,
    run_sharded,
    shard,
    shard_record,
    write_shard_record,
)
from keypointlab.io.h5 import descriptor_sizes, partial_h5, partial_path, safe_key, write_matches
from keypointlab.io.outputs import atomic_output, check_output_dir, check_output_file, output_lock

logger = logging.getLogger(__name__)


@dataclass
class ExtractReport:
    """What :func:`extract_folder` did."""

    written: int = 0
    reused: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)


def image_keys(
    folder: Path, paths: Sequence[Path]
) -> tuple[list[tuple[str, Path]], list[tuple[str, str]]]:
    """``(key, path)`` of each of ``paths`` (images below ``folder``), in order, and the
    ``(path, reason)`` of those left out because an earlier one has the same key (e.g.
    ``a\\b.png`` beside ``a/b.png``: never overwritten silently)."""
    keyed: list[tuple[str, Path]] = []
    skipped: list[tuple[str, str]] = []
    owner: dict[str, Path] = {}
    for p in paths:
        key = safe_key(p.relative_to(folder).as_posix())
        if key in owner:
            skipped.append((str(p), f"same feature key {key!r} as {owner[key]}"))
            continue
        owner[key] = p
        keyed.append((key, p))
    return keyed, skipped


def extract_folder(
    extractor: Extractor,
    folder: str | Path,
    out: str | Path,
    max_keypoints: int | None = None,
    resume: bool = False,
    progress: bool = True,
    shard_of: tuple[int, int] | None = None,
) -> ExtractReport:
    """Extract every image below ``folder`` into ``out``; unreadable files are reported and
    skipped.

    ``shard_of=(rank, world)``: extract only that rank's share of the images (see
    :func:`~keypointlab.io.distributed.shard`) and record it in ``out`` (a shard file
    for :func:`extract_folder_distributed`).

    Raises:
        FileNotFoundError: ``folder`` is missing or has no image files.
        OutputError: before any work: ``out`` is one of the images, a folder, not
            writable, or in use by another run; with ``resume``, the partial file was
            begun by another extractor or with other settings.
    """
    folder, out = Path(folder), Path(out)
    paths = list_images(folder)
    if not paths:
        raise FileNotFoundError(f"{folder}: no image files found")
    check_output_file(out, inputs=paths)
    record = extractor_record(extractor, max_keypoints=max_keypoints)
    keyed, collisions = image_keys(folder, paths)
    report = ExtractReport()
    if shard_of is not None:
        keyed = shard(keyed, *shard_of)
        collisions = collisions if shard_of[0] == 0 else []  # reported once
    report.skipped.extend(collisions)
    with partial_h5(out, resume=resume) as h5:
        check_record(h5, record, partial_path(out))
        write_record(h5, record)
        if shard_of is not None:
            write_shard_record(h5, shard_record([k for k, _ in keyed], *shard_of))
        h5.flush()
        sizes = set(descriptor_sizes(h5))  # of a partial file that recorded no extractor
        todo = []
        for key, p in keyed:
            if key in h5 and "descriptors" in h5[key]:
                report.reused += 1
            else:
                todo.append(p)
        for path, image, error in tqdm(
            read_images(todo), total=len(todo), desc="extract", disable=not progress
        ):
            if image is None:
                report.skipped.append((str(path), error or "unreadable"))
                continue
            try:
                feats = extractor.extract(image).top_k(max_keypoints)
            except ValueError as exc:  # e.g. an image smaller than the network stride
                report.skipped.append((str(path), str(exc)))
                continue
            dim = feats.descriptors.shape[1]
            if sizes and dim not in sizes:
                raise OutputError(
                    f"{partial_path(out)}: holds descriptors of {sorted(sizes)} values, "
                    f"{extractor.name} makes {dim}: start over without --resume"
                )
            write_features(h5, safe_key(path.relative_to(folder).as_posix()), feats)
            h5.flush()
            report.written += 1
    return report


def extract_folder_distributed(
    extractor: Extractor,
    folder: str | Path,
    out: str | Path,
    world: World,
    max_keypoints: int | None = None,
    resume: bool = False,
    progress: bool = True,
) -> ExtractReport:
    """:func:`extract_folder` on every rank of ``world`` (inside its process group), each
    on its share of the images into its shard file; rank 0 then merges the shards into
    ``out`` (the same groups and arrays one process writes) and removes them.

    With ``resume`` a rank reuses its whole shard file as it is, and continues its partial
    one. Rank 0 holds ``out``'s lock for the whole run. Every rank returns the report of
    the whole run (the sum of the ranks').

    Raises:
        As :func:`extract_folder`, on every rank when one fails (the others raise
        :class:`~keypointlab.io.distributed.DistributedError` naming it);
        FeatureFileError: with ``resume``, a shard file is not a readable HDF5 file.
    """
    if world.size == 1:
        return extract_folder(extractor, folder, out, max_keypoints, resume, progress)
    folder, out = Path(folder), Path(out)
    record = extractor_record(extractor, max_keypoints=max_keypoints)

    def prepare() -> list[str]:
        paths = list_images(folder)
        if not paths:
            raise FileNotFoundError(f"{folder}: no image files found")
        check_output_file(out, inputs=paths)
        return [k for k, _ in image_keys(folder, paths)[0]]

    def run_shard(path: Path, mine: list[str]) -> ExtractReport:
        expected = shard_record(mine, world.rank, world.size)
        if resume and reuse_shard(path, expected, lambda h5: check_record(h5, record, path)):
            with h5py.File(path, "r") as h5:
                reused = sum(1 for k in mine if k in h5)
            logger.info("%s: whole, reused", path)
            return ExtractReport(reused=reused)
        return extract_folder(
            extractor,
            folder,
            path,
            max_keypoints,
            resume,
            progress and world.is_main,
            shard_of=(world.rank, world.size),
        )

    reports = run_sharded(world, out, folder, prepare, run_shard)
    total = ExtractReport()
    for r in reports:
        total.written += r.written
        total.reused += r.reused
        total.skipped.extend(r.skipped)
    return total


FEATURES_FILE, MATCHES_FILE = "features.h5", "matches.h5"
EXPORT_HINT = "use the same --features and settings, or export to another folder"


def check_pair_export(
    folder: str | Path, record: dict[str, Any], inputs: Iterable[str | Path] = ()
) -> tuple[Path, Path]:
    """Check, before any work, that :func:`export_pair` can write into ``folder``.

    Returns:
        The paths of ``features.h5`` and ``matches.h5`` in ``folder``.

    Raises:
        OutputError: ``folder`` or one of the files cannot be written, is an input, or
            ``features.h5`` already holds features of another extractor or settings.
        FeatureFileError: ``features.h5`` exists but is not a readable HDF5 file.
    """
    inputs = list(inputs)
    folder = check_output_dir(folder, inputs)
    paths = [
        check_output_file(Path(folder) / name, inputs) for name in (FEATURES_FILE, MATCHES_FILE)
    ]
    for path in paths:
        if path.is_file():
            with _open_h5(path, "r") as h5:
                if path.name == FEATURES_FILE:
                    check_record(h5, record, path, EXPORT_HINT)
    return paths[0], paths[1]


def _open_h5(path: Path, mode: str) -> h5py.File:
    try:
        return h5py.File(path, mode)
    except OSError as exc:
        raise FeatureFileError(f"{path}: not a readable HDF5 file ({exc})") from exc


def export_pair(
    folder: str | Path,
    names: tuple[str, str],
    features: tuple[Features, Features],
    matches: np.ndarray,
    record: dict[str, Any],
) -> tuple[Path, Path]:
    """Add two images' features and their matches to ``features.h5`` and ``matches.h5``
    in ``folder`` (hloc's layout, groups named by :func:`~keypointlab.io.h5.safe_key` of
    ``names``); ``matches`` are ``(M, 2)`` index pairs.

    Both files are updated through copies of their own and renamed into place (under the
    folder's lock, waiting for another writer): a failure leaves them as they were.

    Returns:
        The paths of ``features.h5`` and ``matches.h5``.

    Raises:
        OutputError, FeatureFileError: as :func:`check_pair_export`.
    """
    feats_path, matches_path = check_pair_export(folder, record)
    key0, key1 = safe_key(names[0]), safe_key(names[1])
    matches = np.asarray(matches, dtype=np.int64).reshape(-1, 2)
    matches0 = np.full(len(features[0]), -1, dtype=np.int32)
    matches0[matches[:, 0]] = matches[:, 1]
    with (
        output_lock(feats_path, wait=True),
        atomic_output(feats_path, copy_existing=True) as feats_tmp,
        atomic_output(matches_path, copy_existing=True) as matches_tmp,
    ):
        with _open_h5(feats_tmp, "a") as h5:
            check_record(h5, record, feats_path, EXPORT_HINT)  # again, under the lock
            sizes, dim = descriptor_sizes(h5), features[0].descriptors.shape[1]
            if sizes and dim not in sizes:  # a file that recorded no extractor
                raise OutputError(
                    f"{feats_path}: holds descriptors of {sorted(sizes)} values, these have "
                    f"{dim}: export to another folder"
                )
            write_record(h5, record)
            write_features(h5, key0, features[0])
            write_features(h5, key1, features[1])
        with _open_h5(matches_tmp, "a") as h5:
            write_matches(h5, key0, key1, matches0)
    return feats_path, matches_path
