"""Checkpoints: written atomically, loaded without running code from the file.

``torch.load(..., weights_only=True)`` refuses pickled objects other than tensors and
plain containers, so a crafted checkpoint cannot execute code. What loads is then checked
entry by entry (``model`` a mapping of tensors, ``config`` a mapping bounded like a config
file, ``step`` an integer...), so a foreign or hand-edited file is a
:class:`CheckpointError` naming it, never a traceback further on. A checkpoint that fails
to load (truncated by a crash, corrupt) is reported and the previous one is used; when
none loads, :func:`load_latest` raises, listing each and why.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from keypointlab.config import check_config_tree
from keypointlab.errors import InputError

logger = logging.getLogger(__name__)

_PATTERN = re.compile(r"ckpt_(\d+)\.pt$")

# the entries a checkpoint may hold and their types ("method" and "model" it must hold)
ENTRY_TYPES: dict[str, tuple[type, ...]] = {
    "method": (str,),
    "method_module": (str, type(None)),
    "config": (dict,),
    "model": (dict,),
    "optimizer": (dict,),
    "stage": (int,),
    "best_validation": (int, float, type(None)),
    "step": (int,),
    "train_seconds": (int, float),
    "torch_rng": (torch.Tensor,),
}
# the entries ``train --resume`` needs (the trainer writes them all)
RESUME_ENTRIES = ("config", "optimizer", "step", "train_seconds", "torch_rng")


class CheckpointError(InputError):
    """A checkpoint that cannot be loaded or used (an ``InputError``, so a ``ValueError``)."""


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


def _type_names(types: tuple[type, ...]) -> str:
    return " or ".join("None" if t is type(None) else t.__name__ for t in types)


def check_state(path: str | Path, state: Any) -> dict[str, Any]:
    """``state`` when it is a KeypointLab checkpoint: a mapping holding ``method`` and
    ``model``, each entry of :data:`ENTRY_TYPES` it holds of that type, ``model`` a mapping
    of names to tensors and ``config`` (with its ``model`` section) a bounded mapping.

    Raises:
        CheckpointError: the first entry that is not; the message names ``path`` and it.
    """
    if not isinstance(state, dict) or "model" not in state or "method" not in state:
        raise CheckpointError(f"{path}: not a KeypointLab checkpoint (no model/method entries)")
    for key, types in ENTRY_TYPES.items():
        value = state.get(key)
        if key in state and (
            not isinstance(value, types) or (isinstance(value, bool) and bool not in types)
        ):
            raise CheckpointError(
                f"{path}: not a usable checkpoint: entry {key!r} is a {type(value).__name__}, "
                f"expected {_type_names(types)}"
            )
    for name, tensor in state["model"].items():
        if not isinstance(name, str) or not isinstance(tensor, torch.Tensor):
            raise CheckpointError(
                f"{path}: not a usable checkpoint: entry 'model' maps {name!r} to a "
                f"{type(tensor).__name__}, expected names and tensors"
            )
    if "step" in state and state["step"] < 0:
        raise CheckpointError(f"{path}: not a usable checkpoint: step {state['step']} < 0")
    if "config" in state:
        try:
            check_config_tree(state["config"], f"{path}: config")
        except InputError as exc:
            raise CheckpointError(f"{exc} (not a usable checkpoint)") from exc
        model_conf = state["config"].get("model", {})
        if not isinstance(model_conf, dict):
            raise CheckpointError(
                f"{path}: not a usable checkpoint: config.model is a "
                f"{type(model_conf).__name__}, expected a mapping"
            )
    return state


def load_checkpoint(path: str | Path, expected_method: str | None = None) -> dict[str, Any]:
    """Load a checkpoint safely (no code execution) and check its entries
    (:func:`check_state`).

    Raises:
        CheckpointError: unreadable, not a KeypointLab checkpoint, an entry of the wrong
            type, or (:class:`CheckpointMismatchError`) of another method.
    """
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, pickle refused, not a torch file...
        raise CheckpointError(
            f"{path}: cannot load checkpoint ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''})"
        ) from exc
    check_state(path, state)
    if expected_method is not None and state["method"] != expected_method:
        raise CheckpointMismatchError(
            f"{path}: checkpoint of method {state['method']!r}, expected {expected_method!r}"
        )
    return state


def load_latest(
    folder: str | Path, expected_method: str | None = None
) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint in ``folder`` that loads; newer ones that do not (truncated
    by a crash, corrupt, foreign) are skipped with a warning. ``None`` when the folder holds
    no checkpoint at all.

    Raises:
        CheckpointMismatchError: a checkpoint of another method.
        CheckpointError: the folder holds checkpoints but none loads; the message lists
            each and why.
    """
    refused: list[tuple[Path, CheckpointError]] = []
    for path in checkpoints(folder):
        try:
            state = load_checkpoint(path, expected_method)
        except CheckpointMismatchError:
            raise
        except CheckpointError as exc:
            refused.append((path, exc))
            continue
        for _, exc in refused:
            logger.warning("%s; falling back to the previous checkpoint, %s", exc, path.name)
        return path, state
    if not refused:
        return None
    reasons = [f"{p.name}: {str(exc).removeprefix(f'{p}: ')}" for p, exc in refused[:5]]
    more = f" (and {len(refused) - 5} more)" if len(refused) > 5 else ""
    raise CheckpointError(
        f"{folder}: none of its {len(refused)} checkpoints can be used: "
        + "; ".join(reasons)
        + more
    )


def state_dict_problems(
    target: Mapping[str, torch.Tensor], weights: Mapping[str, torch.Tensor]
) -> list[str]:
    """Why ``weights`` (a checkpoint's ``model``) do not fit a model whose state dict is
    ``target``: shape mismatches first (naming the key and both shapes), then keys of the
    checkpoint the model lacks, then keys of the model the checkpoint lacks. ``[]``: fits."""
    shapes = [
        f"{k!r} has shape {tuple(v.shape)} in the checkpoint, {tuple(target[k].shape)} in the model"
        for k, v in weights.items()
        if k in target and tuple(v.shape) != tuple(target[k].shape)
    ]
    extra = [f"{k!r} is in the checkpoint, not in the model" for k in weights if k not in target]
    missing = [f"the model's {k!r} is not in the checkpoint" for k in target if k not in weights]
    return shapes + extra + missing
