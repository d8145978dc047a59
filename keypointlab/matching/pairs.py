"""Matching image pairs of a collection from a features file, into a matches file (hloc).

:func:`match_pairs` reads the descriptors of each pair's images from a features file (as
``keypointlab extract`` writes it) and writes, per pair, one group named
:func:`~keypointlab.io.h5.pair_key` holding

- ``matches`` ``(M, 2)`` int32: index pairs ``(i, j)`` into the keypoints of image 0 and 1;
- ``distances`` ``(M,)`` float32: the descriptor distance of each match;
- ``matches0`` ``(N0,)`` int32 and ``matching_scores0`` ``(N0,)`` float16: the same
  matches in hloc's layout (:func:`~keypointlab.io.h5.read_matches` reads them).

The file is written like a features file: into ``<out>.partial``, renamed when whole,
resumable, under ``<out>``'s lock, and its root attribute :data:`MATCHER_ATTR` records the
matcher, its settings and the features' extractor (resuming with others is refused).
:func:`match_pairs_distributed` splits the pairs over the ranks of a ``torchrun`` run.
"""

from __future__ import annotations

import json
import logging
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from tqdm import tqdm

from keypointlab.errors import InputError, OutputError
from keypointlab.io.distributed import (
    World,
    reuse_shard,
    run_sharded,
    shard,
    shard_record,
    write_shard_record,
)
from keypointlab.io.h5 import (
    EXTRACTOR_ATTR,
    FeatureFileError,
    pair_key,
    partial_h5,
    partial_path,
    read_keypoint_group,
    safe_key,
    write_matches,
)
from keypointlab.io.outputs import check_output_file
from keypointlab.matching.nearest import match_nn

logger = logging.getLogger(__name__)

__all__ = [
    "MATCHER_ATTR",
    "MATCHERS",
    "MatchReport",
    "exhaustive_pairs",
    "feature_names",
    "match_pairs",
    "match_pairs_distributed",
    "read_pairs",
    "unique_pairs",
]

#: root attribute of a matches file: JSON of the matcher, its settings and the extractor
MATCHER_ATTR = "keypointlab_matcher"
#: matcher name -> mutual nearest neighbours only
MATCHERS = {"mnn": True, "nn": False}
#: descriptor sets kept in memory while matching (exhaustive pairs reuse image 0)
CACHE_SIZE = 64


@dataclass
class MatchReport:
    """What :func:`match_pairs` did: pairs matched now, and pairs already in the
    partial (or shard) file."""

    written: int = 0
    reused: int = 0


def exhaustive_pairs(names: Iterable[str]) -> list[tuple[str, str]]:
    """Every pair ``(a, b)`` of ``names`` with ``a`` before ``b`` in sorted order
    (``n (n - 1) / 2`` pairs; duplicates in ``names`` are ignored)."""
    ordered = sorted(set(names))
    return [(a, b) for i, a in enumerate(ordered) for b in ordered[i + 1 :]]


def read_pairs(path: str | Path) -> list[tuple[str, str]]:
    """Pairs of a text file in hloc's format: one ``name0 name1`` per line (image paths
    relative to the extracted folder, as the features file names them); blank lines and
    lines starting with ``#`` are ignored.

    Raises:
        FileNotFoundError: no such file.
        InputError: a line does not hold exactly two names (the message names the line).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such pairs file")
    pairs = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        parts = text.split()
        if len(parts) != 2:
            raise InputError(
                f"{path}:{number}: {len(parts)} names, not 2 ('name0 name1'; names with "
                "spaces are not supported)"
            )
        pairs.append((parts[0], parts[1]))
    return pairs


def unique_pairs(pairs: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """``pairs`` without repeats, in order: a pair seen before, either way round
    (``(b, a)`` after ``(a, b)``), is dropped, as hloc does.

    Raises:
        InputError: a pair of an image with itself, or two pairs that would be stored
            under the same group name (hloc's names turn ``/`` into ``-``).
    """
    seen: set[frozenset[str]] = set()
    groups: dict[str, tuple[str, str]] = {}
    out = []
    for a, b in pairs:
        if a == b:
            raise InputError(f"pair {a!r} {a!r}: an image is not matched with itself")
        if frozenset((a, b)) in seen:
            continue
        seen.add(frozenset((a, b)))
        key = pair_key(safe_key(a), safe_key(b))
        if key in groups:
            raise InputError(
                f"pairs {groups[key]} and {(a, b)} would both be stored as group {key!r}; "
                "rename one of the images"
            )
        groups[key] = (a, b)
        out.append((a, b))
    return out


def feature_names(features_h5: str | Path) -> list[str]:
    """Sorted names of the images in a features file (the groups that hold keypoints).

    Raises:
        FileNotFoundError: no such file.
        FeatureFileError: not a readable HDF5 file.
    """
    names: list[str] = []

    def visit(name: str, obj: object) -> None:
        if isinstance(obj, h5py.Group) and isinstance(obj.get("keypoints"), h5py.Dataset):
            names.append(name)

    with _open_features(Path(features_h5)) as h5:
        h5.visititems(visit)
    return sorted(names)


def _open_features(path: Path) -> h5py.File:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such features file")
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise FeatureFileError(f"{path}: not a readable HDF5 file ({exc})") from exc


def matcher_record(
    features: h5py.File, matcher: str, ratio: float | None, max_distance: float | None
) -> dict[str, Any]:
    """What a matches file records about its writer: the matcher, its settings and the
    record of the features file's extractor (None when it records none)."""
    raw = features.attrs.get(EXTRACTOR_ATTR)
    extractor = json.loads(raw.decode() if isinstance(raw, bytes) else raw) if raw else None
    record = {"matcher": matcher, "ratio": ratio, "max_distance": max_distance}
    return json.loads(json.dumps({**record, "features": extractor}, sort_keys=True))


def _check_matcher_record(h5: h5py.File, record: dict[str, Any], path: Path) -> None:
    raw = h5.attrs.get(MATCHER_ATTR)
    if raw is None:
        return
    stored = json.loads(raw.decode() if isinstance(raw, bytes) else raw)
    if stored != record:
        diffs = [k for k in sorted(set(stored) | set(record)) if stored.get(k) != record.get(k)]
        raise OutputError(
            f"{path}: holds matches of another matcher, settings or extractor "
            f"({', '.join(diffs)} differ); resume with the same settings, or start over "
            "without --resume"
        )


class _Descriptors:
    """Descriptors of the features file by image name, the last :data:`CACHE_SIZE` kept."""

    def __init__(self, h5: h5py.File, device: str) -> None:
        self.h5, self.device = h5, torch.device(device)
        self.cache: OrderedDict[str, torch.Tensor] = OrderedDict()

    def __call__(self, name: str) -> torch.Tensor:
        if name in self.cache:
            self.cache.move_to_end(name)
            return self.cache[name]
        arrays = read_keypoint_group(self.h5, safe_key(name), ("keypoints", "descriptors"))
        desc = torch.from_numpy(np.ascontiguousarray(arrays["descriptors"], dtype=np.float32))
        self.cache[name] = desc.to(self.device)
        if len(self.cache) > CACHE_SIZE:
            self.cache.popitem(last=False)
        return self.cache[name]


def _write_pair(h5: h5py.File, a: str, b: str, d0: torch.Tensor, d1: torch.Tensor, **kw) -> None:
    matches0 = match_nn(d0, d1, **kw)
    idx0 = torch.nonzero(matches0 >= 0).flatten()
    idx1 = matches0[idx0]
    dist = torch.linalg.vector_norm(d0[idx0] - d1[idx1], dim=-1)
    key0, key1 = safe_key(a), safe_key(b)
    write_matches(h5, key0, key1, matches0.cpu().numpy())
    group = h5[pair_key(key0, key1)]
    pairs = torch.stack([idx0, idx1], dim=1).cpu().numpy().astype(np.int32)
    group.create_dataset("matches", data=pairs.reshape(-1, 2))
    group.create_dataset("distances", data=dist.cpu().numpy().astype(np.float32))


def match_pairs(
    features_h5: str | Path,
    pairs: Sequence[tuple[str, str]],
    out_h5: str | Path,
    matcher: str = "mnn",
    ratio: float | None = None,
    max_distance: float | None = None,
    resume: bool = False,
    device: str = "cpu",
    progress: bool = False,
    shard_of: tuple[int, int] | None = None,
) -> MatchReport:
    """Match the descriptors of every pair of images and write the matches to ``out_h5``.

    Args:
        features_h5: features file (one group per image, e.g. from ``keypointlab extract``).
        pairs: ``(name0, name1)`` image names as the features file has them (e.g.
            ``"kodak/kodim01.png"``; :func:`exhaustive_pairs` of :func:`feature_names`
            for all pairs). Repeats are dropped (:func:`unique_pairs`).
        out_h5: matches file to write (layout in this module's docstring).
        matcher: ``"mnn"`` (mutual nearest neighbours) or ``"nn"`` (nearest neighbour of
            each descriptor of image 0).
        ratio: Lowe's ratio test on top (e.g. 0.8); ``max_distance``: largest descriptor
            distance kept.
        resume: keep the pairs already in ``<out_h5>.partial`` from an interrupted run.
        device: torch device of the distance computations.
        progress: show a progress bar.
        shard_of: ``(rank, world)``: match only that rank's share of the pairs (a shard
            file for :func:`match_pairs_distributed`).

    Returns:
        How many pairs were matched and how many were kept from the partial file.

    Raises:
        FileNotFoundError: no features file.
        FeatureFileError: it is unreadable, or a pair names an image it does not hold
            (checked before any work) or whose datasets are malformed.
        InputError: an unknown ``matcher``, a bad ``ratio`` or pair (see
            :func:`unique_pairs`).
        OutputError: ``out_h5`` cannot be written or is in use; with ``resume``, its
            partial file was begun with another matcher, settings or extractor.
    """
    if matcher not in MATCHERS:
        raise InputError(f"matcher {matcher!r}: known matchers are {', '.join(MATCHERS)}")
    features_h5, out_h5 = Path(features_h5), Path(out_h5)
    todo = unique_pairs(pairs)
    if shard_of is not None:
        todo = shard(todo, *shard_of)
    check_output_file(out_h5, inputs=[features_h5])
    options = {"mutual": MATCHERS[matcher], "ratio": ratio, "max_distance": max_distance}
    report = MatchReport()
    with _open_features(features_h5) as feats:
        _check_names(feats, todo)
        record = matcher_record(feats, matcher, ratio, max_distance)
        descriptors = _Descriptors(feats, device)
        with partial_h5(out_h5, resume=resume) as h5:
            _check_matcher_record(h5, record, partial_path(out_h5))
            h5.attrs[MATCHER_ATTR] = json.dumps(record, sort_keys=True)
            if shard_of is not None:
                keys = [pair_key(safe_key(a), safe_key(b)) for a, b in todo]
                write_shard_record(h5, shard_record(keys, *shard_of))
            for a, b in tqdm(todo, desc="match", disable=not progress):
                key = pair_key(safe_key(a), safe_key(b))
                if key in h5 and "matches" in h5[key]:
                    report.reused += 1
                    continue
                _write_pair(h5, a, b, descriptors(a), descriptors(b), **options)
                h5.flush()
                report.written += 1
    return report


def _check_names(feats: h5py.File, pairs: Sequence[tuple[str, str]]) -> None:
    for name in dict.fromkeys(n for pair in pairs for n in pair):
        group = feats.get(safe_key(name))
        if not isinstance(group, h5py.Group) or "descriptors" not in group:
            raise FeatureFileError(
                f"{feats.filename}: no descriptors of image {name!r} (in a pair); names are "
                "paths relative to the extracted folder"
            )


def match_pairs_distributed(
    features_h5: str | Path,
    pairs: Sequence[tuple[str, str]],
    out_h5: str | Path,
    world: World,
    matcher: str = "mnn",
    ratio: float | None = None,
    max_distance: float | None = None,
    resume: bool = False,
    device: str = "cpu",
    progress: bool = False,
) -> MatchReport:
    """:func:`match_pairs` on every rank of ``world`` (inside its process group), each on
    its share of the pairs into its shard file; rank 0 merges the shards into ``out_h5``
    (the same groups and arrays one process writes) and removes them. With ``resume`` a
    rank reuses its whole shard file. Every rank returns the report of the whole run.

    Raises:
        As :func:`match_pairs`, on every rank when one fails (the others raise
        :class:`~keypointlab.io.distributed.DistributedError` naming it).
    """
    args = (matcher, ratio, max_distance)
    if world.size == 1:
        return match_pairs(features_h5, pairs, out_h5, *args, resume, device, progress)
    features_h5, out_h5 = Path(features_h5), Path(out_h5)

    def prepare() -> list[str]:
        check_output_file(out_h5, inputs=[features_h5])
        return [pair_key(safe_key(a), safe_key(b)) for a, b in unique_pairs(pairs)]

    def run_shard(path: Path, mine: list[str]) -> MatchReport:
        with _open_features(features_h5) as feats:
            record = matcher_record(feats, *args)
        expected = shard_record(mine, world.rank, world.size)
        if resume and reuse_shard(
            path, expected, lambda h5: _check_matcher_record(h5, record, path)
        ):
            logger.info("%s: whole, reused", path)
            return MatchReport(reused=len(mine))
        return match_pairs(
            features_h5,
            pairs,
            path,
            *args,
            resume,
            device,
            progress and world.is_main,
            shard_of=(world.rank, world.size),
        )

    reports = run_sharded(world, out_h5, "pairs", prepare, run_shard, required=True)
    return MatchReport(
        written=sum(r.written for r in reports), reused=sum(r.reused for r in reports)
    )
