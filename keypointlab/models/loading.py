"""The one loader of trained models: shipped weights by name, checkpoints by path.

Shipped weights are ``keypointlab/weights/<name>.safetensors`` (tensors only) with
``<name>.json`` (method, model config, default extraction options; ``weights``: another
shipped model's tensors, for a second set of options) and a model card ``<name>.md``;
checkpoints are the trainer's ``ckpt_<step>.pt`` files, read with
``torch.load(weights_only=True)``. Neither can run code when loaded.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from keypointlab.devices import check_device
from keypointlab.errors import InputError
from keypointlab.io.checkpoint import CheckpointError, load_checkpoint, load_latest
from keypointlab.models.base import BaseModel, build_model

WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "weights"


@dataclass
class LoadedModel:
    """A trained model and where it came from.

    Attributes:
        model: the model in eval mode on the requested device.
        method: its method name.
        name: a short name for results (the shipped name or the checkpoint's stem).
        options: default extraction options stored with shipped weights (``scales``).
        state: the checkpoint dict (``None`` for shipped weights).
        path: the checkpoint file (``None`` for shipped weights).
    """

    model: BaseModel
    method: str
    name: str
    options: dict[str, Any] = field(default_factory=dict)
    state: dict[str, Any] | None = None
    path: Path | None = None


def shipped_models() -> list[str]:
    """Names of the trained models shipped inside the package."""
    if not WEIGHTS_DIR.is_dir():
        return []
    return sorted(p.stem for p in WEIGHTS_DIR.glob("*.json") if _weights_file(p).is_file())


def _weights_file(meta_path: Path) -> Path:
    """The tensors of a shipped model: ``<name>.safetensors``, or those of the model its
    ``.json`` names under ``weights`` (one set of weights run with other options, e.g.
    ``d2net_ms``: ``d2net``'s weights at the paper's image pyramid)."""
    try:
        weights = json.loads(meta_path.read_text()).get("weights", meta_path.stem)
    except (OSError, ValueError, AttributeError):
        return meta_path.with_suffix(".missing")
    return meta_path.with_name(f"{Path(str(weights)).name}.safetensors")


def _fit(model: BaseModel, weights: Any, source: str, method: str) -> None:
    """Load ``weights`` into ``model``; an :class:`InputError` naming ``source`` when they
    are not a mapping of tensors or were saved from another architecture (how many
    tensors are of another shape, missing or unexpected, with the first of each)."""
    if not isinstance(weights, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in weights.items()
    ):
        raise InputError(
            f"{source}: weights must be a mapping of names to tensors, got "
            f"{type(weights).__name__}"
        )
    own = model.state_dict()
    reshaped = [k for k in own if k in weights and weights[k].shape != own[k].shape]
    missing = [k for k in own if k not in weights]
    unexpected = [k for k in weights if k not in own]
    problems = []
    if reshaped:
        k = reshaped[0]
        problems.append(
            f"{len(reshaped)} of another shape (e.g. {k}: {tuple(weights[k].shape)} in the "
            f"file, {tuple(own[k].shape)} in the model)"
        )
    if missing:
        problems.append(f"{len(missing)} missing (e.g. {missing[0]})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
    if problems:
        raise InputError(
            f"{source}: weights do not fit model {method!r} ({len(own)} tensors): "
            + ", ".join(problems)
        )
    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:  # anything the checks above did not foresee
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"{source}: weights do not fit model {method!r}: {first}") from exc


def _positive_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0


def _read_meta(meta_path: Path) -> dict[str, Any]:
    """A shipped model's ``.json``, checked: a mapping with ``method`` and ``model``."""
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InputError(f"{meta_path}: cannot read ({exc.strerror or exc})") from exc
    except (UnicodeError, ValueError) as exc:  # JSONDecodeError is a ValueError
        raise InputError(f"{meta_path}: not valid JSON ({exc})") from exc
    if not isinstance(meta, dict):
        raise InputError(f"{meta_path}: expected a JSON object, got {type(meta).__name__}")
    if not isinstance(meta.get("method"), str):
        got = meta.get("method")
        raise InputError(f"{meta_path}: 'method' must be a method name, got {got!r}")
    if not isinstance(meta.get("model", {}), dict):
        raise InputError(f"{meta_path}: 'model' must be a mapping of model options")
    scales = meta.get("scales", [1.0])
    if not (isinstance(scales, list) and scales and all(map(_positive_number, scales))):
        raise InputError(
            f"{meta_path}: 'scales' must be a list of positive numbers, got {scales!r}"
        )
    return meta


def _read_weights(path: Path, name: str) -> dict[str, torch.Tensor]:
    """The tensors of ``path``; a missing, truncated or non-safetensors file is an
    :class:`InputError` naming it."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise InputError(f"{path}: weights of shipped model {name!r} are missing")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, MemoryError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(
            f"{path}: cannot read the weights of shipped model {name!r} (truncated or not a "
            f"safetensors file: {reason})"
        ) from exc


def load_shipped(
    name: str, device: str | torch.device = "cpu", weights_dir: str | Path | None = None
) -> LoadedModel:
    """A shipped model by name (from ``weights_dir``, default the package's weights).

    Raises:
        FileNotFoundError: no shipped model of that name.
        InputError: ``device`` is not available, or the model's ``.json`` is malformed or
            its ``.safetensors`` truncated, of another architecture or missing; the message
            names the file.
    """
    device = check_device(device)
    meta_path = Path(weights_dir or WEIGHTS_DIR) / f"{name}.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"no shipped model {name!r}; shipped: {shipped_models()}")
    meta = _read_meta(meta_path)
    try:
        model = build_model(meta["method"], meta.get("model", {}), meta.get("method_module"))
    except (KeyError, ValueError, TypeError) as exc:  # unknown method, bad model options
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        raise InputError(f"{meta_path}: cannot build model {meta['method']!r}: {msg}") from exc
    weights_path = _weights_file(meta_path)
    _fit(model, _read_weights(weights_path, name), str(weights_path), meta["method"])
    options = {"scales": tuple(float(s) for s in meta.get("scales", (1.0,)))}
    return LoadedModel(model.to(device).eval(), meta["method"], name, options)


def load_run(path: str | Path, device: str | torch.device = "cpu") -> LoadedModel:
    """The model of a checkpoint (``ckpt_*.pt``) or of a run folder's newest checkpoint.

    Raises:
        FileNotFoundError: no checkpoint there.
        CheckpointError: the file cannot be loaded safely.
        ValueError: the weights do not fit the checkpoint's model.
        InputError: ``device`` is not available (checked first).
    """
    device = check_device(device)
    path = Path(path)
    name = path.stem
    if path.is_dir():
        found = load_latest(path)
        if found is None:
            raise FileNotFoundError(f"{path}: no checkpoint in this folder")
        path, state = found
    elif path.is_file():
        state = load_checkpoint(path)
    else:
        raise FileNotFoundError(f"{path}: no such checkpoint or run folder")
    try:
        model_conf = state["config"]["model"]
    except (KeyError, TypeError) as exc:
        raise CheckpointError(f"{path}: checkpoint without config.model") from exc
    method = state["method"]
    try:  # an unknown method, a model config of unknown keys or wrong types
        model = build_model(method, model_conf, state.get("method_module"))
    except (KeyError, ValueError, TypeError) as exc:
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        raise CheckpointError(f"{path}: cannot build its model {method!r}: {msg}") from exc
    _fit(model, state["model"], str(path), method)
    return LoadedModel(model.to(device).eval(), method, name, {}, state, path)


def is_shipped_name(name: str) -> bool:
    """Whether ``name`` has a ``.json`` among the shipped weights, usable or not (so that
    loading a broken one reports what is wrong with its files, not an unknown name)."""
    return bool(name) and Path(name).name == name and (WEIGHTS_DIR / f"{name}.json").is_file()


def load_model(source: str | Path, device: str | torch.device = "cpu") -> LoadedModel:
    """A shipped model (by name) or a checkpoint / run folder (by path)."""
    if isinstance(source, str) and (source in shipped_models() or is_shipped_name(source)):
        return load_shipped(source, device)
    return load_run(source, device)
