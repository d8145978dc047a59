"""Writing output files safely: checked before the work, locked while it runs, and
renamed into place only when whole.

- :func:`check_output_file` / :func:`check_output_dir` refuse, before any work, an output
  that is one of the inputs, a folder where a file is expected (or the reverse), or sits
  under a file or in a folder that cannot be written.
- :func:`output_lock` holds an exclusive ``flock`` on ``.<name>.lock`` beside the output
  for a whole run; a second run on the same output fails at once, naming the holder's pid.
- :func:`atomic_output` hands out a temporary name unique to the writer (pid + random)
  beside the target and renames it over the target at the end; on any failure the
  temporary file is removed, so no file is ever left that looks whole and is not.
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from keypointlab.errors import OutputError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no advisory locks, runs are not guarded
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "atomic_output",
    "check_output_dir",
    "check_output_file",
    "lock_path",
    "output_lock",
    "temporary_path",
]


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet)
        return os.path.abspath(a) == os.path.abspath(b)


def _check_parent(path: Path) -> None:
    """The nearest existing ancestor of ``path`` must be a folder we may write in."""
    parent = path.absolute().parent
    while not parent.exists():
        if parent.is_symlink():  # a dangling link: mkdir would fail later
            raise OutputError(f"{path}: {parent} is a broken symbolic link")
        parent = parent.parent
    if not parent.is_dir():
        raise OutputError(f"{path}: cannot write there, {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"{path}: cannot write there, folder {parent} is not writable")


def check_output_file(path: str | Path, inputs: Iterable[str | Path] = ()) -> Path:
    """Refuse ``path`` as an output file, before any work, when it cannot be written safely.

    Raises:
        OutputError: ``path`` is an existing folder, is one of ``inputs`` (it would be
            overwritten), or its folder is under a file or not writable.
    """
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{path}: is a folder; give the name of a file to write")
    for item in inputs if path.exists() else ():  # a new file cannot be an input
        if _same_file(path, Path(item)):
            raise OutputError(
                f"{path}: is an input file and would be overwritten; choose another output name"
            )
    _check_parent(path)
    return path


def check_output_dir(path: str | Path, inputs: Iterable[str | Path] = ()) -> Path:
    """Refuse ``path`` as an output folder, before any work, when it cannot be written safely.

    Raises:
        OutputError: ``path`` is an existing file, is one of ``inputs``, or its parent is
            under a file or not writable.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{path}: is a file; give the name of a folder to write into")
    for item in inputs:
        if _same_file(path, Path(item)):
            raise OutputError(f"{path}: is an input folder; choose another output folder")
    if path.is_dir():
        if not os.access(path, os.W_OK | os.X_OK):
            raise OutputError(f"{path}: folder is not writable")
    else:
        _check_parent(path)
    return path


def lock_path(path: str | Path) -> Path:
    """``.<name>.lock`` beside ``path`` (a file or a folder): the lock of :func:`output_lock`."""
    path = Path(path)
    return path.with_name(f".{path.name}.lock")


def _holder(fd: int) -> str:
    os.lseek(fd, 0, os.SEEK_SET)
    text = os.read(fd, 64).decode(errors="replace").strip()
    return f"pid {text}" if text.isdigit() else "another process"


@contextmanager
def output_lock(path: str | Path, wait: bool = False) -> Iterator[Path]:
    """Hold an exclusive lock on output ``path`` for the duration of the block.

    The lock is an ``flock`` on :func:`lock_path` (which holds the holder's pid and is
    removed on release); the kernel releases it when the process dies, even by ``kill -9``.
    Yields the lock file's path. ``wait``: wait for another holder to finish instead
    of failing (for short writes).

    Raises:
        OutputError: another run holds the lock (the message names its pid).
    """
    path = Path(path)
    lock = lock_path(path)
    if fcntl is None:  # pragma: no cover
        yield lock
        return
    lock.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise OutputError(
                f"{path}: in use by another run ({holder}, lock {lock}); wait for it to "
                "finish or choose another output"
            ) from None
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(lock))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the holder removed the file we locked as it released it: retry
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield lock
    finally:
        lock.unlink(missing_ok=True)  # while still held, so no one locks a removed file
        os.close(fd)


def temporary_path(path: str | Path) -> Path:
    """``.<name>.<pid>.<random>.tmp`` beside ``path``: a name no other writer uses."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


@contextmanager
def atomic_output(path: str | Path, copy_existing: bool = False) -> Iterator[Path]:
    """Yield a temporary path to write; it replaces ``path`` when the block succeeds and is
    removed when it fails (including when ``path`` turns out to be a folder).

    ``copy_existing`` starts the temporary file as a copy of ``path`` (to add to a file
    without ever exposing a half-updated one).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(path)
    try:
        if copy_existing and path.is_file():
            shutil.copyfile(path, tmp)
        yield tmp
        if path.is_dir():
            raise OutputError(f"{path}: is a folder; give the name of a file to write")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
