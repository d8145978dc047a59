"""Checkpoints: written atomically, loaded without running code from the file.

``torch.load(..., weights_only=True)`` refuses pickled objects other than tensors and
plain containers, so a crafted checkpoint cannot execute code. A checkpoint that fails
to load (truncated by a crash, corrupt) is reported and the previous one is used.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)

_PATTERN = re.compile(r"ckpt_(\d+)\.pt$")


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded."""


class CheckpointMismatchError(CheckpointError):
    """A valid checkpoint of another method."""


def checkpoints(folder: str | Path) -> list[Path]:
    """Checkpoint files in ``folder``, newest (highest step) first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _PATTERN.search(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


def save_checkpoint(
    state: dict[str, Any], folder: str | Path, step: int, keep: int = 3, name: str | None = None
) -> Path:
    """Write ``ckpt_<step>.pt`` (or ``name``) atomically and delete all but the newest
    ``keep`` numbered checkpoints (none when ``name`` is given)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / (name or f"ckpt_{step:08d}.pt")
    tmp = folder / f".{path.name}.tmp"
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    if name:
        return path
    for old in checkpoints(folder)[max(keep, 1) :]:
        old.unlink(missing_ok=True)
    return path


def load_checkpoint(path: str | Path, expected_method: str | None = None) -> dict[str, Any]:
    """Load a checkpoint safely (no code execution).

    Raises:
        CheckpointError: unreadable, not a KeypointLab checkpoint, or of another method.
    """
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, pickle refused, not a torch file...
        raise CheckpointError(
            f"{path}: cannot load checkpoint ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''})"
        ) from exc
    if not isinstance(state, dict) or "model" not in state or "method" not in state:
        raise CheckpointError(f"{path}: not a KeypointLab checkpoint (no model/method entries)")
    if expected_method is not None and state["method"] != expected_method:
        raise CheckpointMismatchError(
            f"{path}: checkpoint of method {state['method']!r}, expected {expected_method!r}"
        )
    return state


def load_latest(
    folder: str | Path, expected_method: str | None = None
) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint in ``folder`` that loads; corrupt newer ones are skipped with
    a warning. ``None`` when there is none. A checkpoint of another method is an error."""
    for path in checkpoints(folder):
        try:
            return path, load_checkpoint(path, expected_method)
        except CheckpointMismatchError:
            raise
        except CheckpointError as exc:
            logger.warning("%s; falling back to the previous checkpoint", exc)
    return None
