"""Running folder-level work on several processes (``torchrun``): shards, collectives, merge.

A run launched by ``torchrun`` (environment ``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``) is
described by a :class:`World`. Its items (images, image pairs), in one agreed order, are
split by :func:`shard`: rank ``r`` of ``n`` takes items ``i`` with ``i % n == r``. Every
rank writes its own shard file (:func:`shard_path`, ``<out>.rank{r}-of-{n}``) the way a
single process writes ``<out>``: through a partial file renamed when whole, and recording
(:data:`SHARD_ATTR`) which items it holds. Rank 0 then copies the groups of all shards,
in the items' order, into ``<out>`` (:func:`merge_shards`), so the merged file holds the
same groups and arrays as the file one process writes, and removes the shards.

Nothing here knows what a group holds; :mod:`keypointlab.features.export` and
:mod:`keypointlab.matching.pairs` run their work through it.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import h5py
import torch
import torch.distributed as dist

from keypointlab.errors import KeypointLabError
from keypointlab.io.h5 import FeatureFileError, partial_path
from keypointlab.io.outputs import atomic_output, output_lock

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: root attribute of a shard file: JSON ``{"rank", "world", "items", "digest"}``
SHARD_ATTR = "keypointlab_shard"

#: how long a rank waits for the others at a collective step (the slowest shard's time
#: beyond the fastest one's); the default of torch (30 min) is too short for large folders
COLLECTIVE_TIMEOUT = datetime.timedelta(hours=24)


class DistributedError(KeypointLabError):
    """Another rank of the run failed; the message names the rank and its error."""


@dataclass(frozen=True)
class World:
    """This process's place in a multi-process run (``rank`` of ``size``; ``local_rank``
    on its node). ``World()`` is a single process."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> World:
        """The world ``torchrun`` describes in ``WORLD_SIZE`` / ``RANK`` / ``LOCAL_RANK``
        (a single process when they are not set).

        Raises:
            KeypointLabError: the variables are not integers, or ``RANK`` is outside
                ``[0, WORLD_SIZE)``.
        """
        try:
            size = int(os.environ.get("WORLD_SIZE", "1"))
            rank = int(os.environ.get("RANK", "0"))
            local = int(os.environ.get("LOCAL_RANK", "0"))
        except ValueError as exc:
            raise KeypointLabError(f"WORLD_SIZE/RANK/LOCAL_RANK are not integers ({exc})") from None
        if size < 1 or not 0 <= rank < size:
            raise KeypointLabError(f"RANK={rank} is not in [0, WORLD_SIZE={size})")
        return cls(rank=rank, size=size, local_rank=local)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device(self, requested: str) -> str:
        """The device this rank uses for ``requested``: ``cuda`` without an index becomes
        ``cuda:LOCAL_RANK`` when several processes run; any other choice is kept."""
        if self.size > 1 and requested == "cuda":
            return f"cuda:{self.local_rank}"
        return requested


def backend_for(device: str) -> str:
    """``nccl`` for a CUDA device (when torch has it), ``gloo`` otherwise."""
    cuda = torch.device(device).type == "cuda"
    return "nccl" if cuda and dist.is_nccl_available() else "gloo"


@contextmanager
def process_group(world: World, device: str = "cpu") -> Iterator[World]:
    """Join the process group of ``world`` for the block (only when ``world.size > 1``
    and no group exists yet; it is destroyed at the end if this call made it)."""
    made = False
    if world.size > 1 and not dist.is_initialized():
        backend = backend_for(device)
        if backend == "nccl":
            torch.cuda.set_device(torch.device(device))
        dist.init_process_group(backend=backend, timeout=COLLECTIVE_TIMEOUT)
        made = True
    try:
        yield world
    finally:
        if made:
            dist.destroy_process_group()


def shard(items: Sequence[T], rank: int, world: int) -> list[T]:
    """The items of rank ``rank`` of ``world``: every ``world``-th one from ``rank``
    (items ``i`` with ``i % world == rank``). Over all ranks, each item exactly once."""
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"rank {rank} is not in [0, {world})")
    return list(items[rank::world])


def shard_path(out: str | Path, rank: int, world: int) -> Path:
    """``<out>.rank{rank}-of-{world}``: the file rank ``rank`` writes."""
    out = Path(out)
    return out.with_name(f"{out.name}.rank{rank}-of-{world}")


def items_digest(keys: Sequence[str]) -> str:
    """SHA-256 of the group names ``keys``, in order."""
    return hashlib.sha256("\n".join(keys).encode("utf-8", "surrogatepass")).hexdigest()


def shard_record(keys: Sequence[str], rank: int, world: int) -> dict[str, Any]:
    """What a shard file records (:data:`SHARD_ATTR`): its place and a digest of the group
    names it was written for, so a whole shard of another item list is never reused."""
    return {"rank": rank, "world": world, "items": len(keys), "digest": items_digest(keys)}


def check_same_items(world: World, digests: Sequence[str], source: str | Path) -> None:
    """Refuse to go on when the ranks listed different items (``digests`` of every rank,
    from :func:`exchange`), e.g. a folder that changed while they started or that is not
    the same on every node.

    Raises:
        DistributedError: the ranks disagree (the message names ``source``).
    """
    differ = [r for r, d in enumerate(digests) if d != digests[0]]
    if differ:
        raise DistributedError(
            f"{source}: rank {differ[0]} of {world.size} sees other items than rank 0; "
            "every rank must see the same files (a shared file system, not changing)"
        )


def write_shard_record(h5: h5py.File, record: dict[str, Any]) -> None:
    h5.attrs[SHARD_ATTR] = json.dumps(record, sort_keys=True)


def _read_shard_record(h5: h5py.File) -> dict[str, Any] | None:
    raw = h5.attrs.get(SHARD_ATTR)
    if raw is None:
        return None
    try:
        return json.loads(raw.decode() if isinstance(raw, bytes) else str(raw))
    except (ValueError, UnicodeDecodeError):
        return None


def open_shard(path: Path) -> h5py.File:
    """``path`` opened for reading.

    Raises:
        FeatureFileError: it is not a readable HDF5 file (the message names it and says
            to delete it).
    """
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise FeatureFileError(
            f"{path}: shard file is not a readable HDF5 file ({exc}); delete it to "
            "extract its part again"
        ) from exc


def reuse_shard(path: Path, expected: dict[str, Any], check: Callable[[h5py.File], None]) -> bool:
    """Whether the whole shard file ``path`` can be reused as it is (``--resume``).

    True when it exists, passes ``check`` (e.g. the extractor record) and was written for
    ``expected`` (:func:`shard_record`). A shard written for another item list is moved
    back to its partial file (returns False), where resuming keeps the groups it has. A
    partial shard (``<shard>.partial``) is never taken for a whole one.

    Raises:
        FeatureFileError: the file is not a readable HDF5 file.
        OutputError: (from ``check``) it was written by another extractor or settings.
    """
    if not path.is_file():
        return False
    with open_shard(path) as h5:
        check(h5)
        found = _read_shard_record(h5)
    if found == expected:
        return True
    logger.info("%s was written for other items; resuming from its groups", path)
    os.replace(path, partial_path(path))
    return False


def exchange(world: World, work: Callable[[], T], gather: bool = True) -> list[T]:
    """Run ``work`` on every rank and give every rank all the results, in rank order
    (``gather=False``: only its own, the others as None; nothing large is sent).

    A failure on one rank fails all: the failing rank raises its own exception, the
    others :class:`DistributedError` naming the rank and its message, so no rank waits
    for one that will never come.
    """
    own: Exception | None = None
    try:
        value = work()
        outcome: tuple[bool, Any] = (True, value if gather else None)
    except Exception as exc:
        if world.size == 1:
            raise
        own, outcome = exc, (False, f"{type(exc).__name__}: {exc}")
    if world.size == 1:
        return [value]
    gathered: list[Any] = [None] * world.size
    dist.all_gather_object(gathered, outcome)
    if own is not None:
        raise own
    for rank, (ok, message) in enumerate(gathered):
        if not ok:
            raise DistributedError(f"rank {rank} of {world.size} failed: {message}")
    values = [v for _, v in gathered]
    if not gather:
        values[world.rank] = value
    return values


def merge_shards(
    out: Path, shards: Sequence[Path], keys: Sequence[str], required: bool = False
) -> int:
    """Copy group ``keys[i]`` of ``shards[i % len(shards)]`` into ``out``, in order, with
    the root attributes of the shards (but :data:`SHARD_ATTR`); ``out`` is written to a
    temporary file and renamed into place when whole. The caller holds ``out``'s lock.

    ``required``: every key must be in its shard (otherwise a missing one, e.g. an image
    that could not be read, is left out).

    Returns:
        The number of groups copied.

    Raises:
        FeatureFileError: a shard is unreadable, lacks a required group, or its root
            attributes differ from the first shard's (the message names the shard).
    """
    files: list[h5py.File] = []
    try:
        files.extend(open_shard(p) for p in shards)
        attrs = {k: v for k, v in files[0].attrs.items() if k != SHARD_ATTR}
        for path, h5 in zip(shards[1:], files[1:], strict=True):
            other = {k: v for k, v in h5.attrs.items() if k != SHARD_ATTR}
            if other.keys() != attrs.keys() or any(other[k] != attrs[k] for k in attrs):
                raise FeatureFileError(
                    f"{path}: records another writer than {shards[0]}; run again without --resume"
                )
        copied = 0
        with atomic_output(out) as tmp, h5py.File(tmp, "w") as dst:
            for name, value in attrs.items():
                dst.attrs[name] = value
            for i, key in enumerate(keys):
                n = i % len(files)
                copied += _copy_group(files[n], shards[n], key, dst, required)
        return copied
    finally:
        for h5 in files:
            h5.close()


def _copy_group(src: h5py.File, where: Path, key: str, dst: h5py.File, required: bool) -> bool:
    """Copy group ``key`` of ``src`` (the file ``where``) to the same name in ``dst``."""
    try:
        group = src.get(key)
        if group is None:
            if required:
                raise FeatureFileError(f"{where}: shard file has no group {key!r}")
            return False
        parent, _, leaf = key.rpartition("/")
        src.copy(group, dst.require_group(parent) if parent else dst, name=leaf)
    except (KeyError, ValueError, OSError, RuntimeError) as exc:
        if isinstance(exc, FeatureFileError):
            raise
        raise FeatureFileError(f"{where}: group {key!r} cannot be read ({exc})") from exc
    return True


def remove_shards(shards: Sequence[Path]) -> None:
    for path in shards:
        path.unlink(missing_ok=True)


def run_sharded(
    world: World,
    out: Path,
    source: str | Path,
    prepare: Callable[[], list[str]],
    run_shard: Callable[[Path, list[str]], T],
    required: bool = False,
) -> list[T]:
    """The whole sharded run, on every rank of ``world`` (inside its process group).

    1. ``prepare()`` on every rank, with rank 0 holding ``out``'s lock: it checks the
       inputs and returns the items' keys in their agreed order. The ranks must agree on
       them (:func:`check_same_items`, naming ``source``).
    2. ``run_shard(path, keys)`` on every rank: its shard file and its share of the keys
       (:func:`shard`), returning the rank's report.
    3. Rank 0 merges the shards into ``out`` (:func:`merge_shards`, ``required``) and
       removes them; the lock is released.

    Returns:
        Every rank's report, in rank order, on every rank.
    """
    shards = [shard_path(out, r, world.size) for r in range(world.size)]
    keys: list[str] = []
    with ExitStack() as stack:

        def agree() -> str:
            if world.is_main:
                stack.enter_context(output_lock(out))
            keys.extend(prepare())
            return items_digest(keys)

        def merge() -> None:
            if world.is_main:
                merge_shards(out, shards, keys, required=required)
                remove_shards(shards)

        check_same_items(world, exchange(world, agree), source)
        reports = exchange(
            world, lambda: run_shard(shards[world.rank], shard(keys, world.rank, world.size))
        )
        exchange(world, merge, gather=False)
    return reports

