"""The one loader of trained models: shipped weights by name, checkpoints by path.

Shipped weights are ``keypointlab/weights/<name>.safetensors`` (tensors only) with
``<name>.json`` (method, model config, default extraction options; ``weights``: another
shipped model's tensors, for a second set of options) and a model card ``<name>.md``;
checkpoints are the trainer's ``ckpt_<step>.pt`` files, read with
``torch.load(weights_only=True)``. Neither can run code when loaded.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

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


def _fit(model: BaseModel, weights: dict[str, torch.Tensor], source: str, method: str) -> None:
    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:
        raise ValueError(
            f"{source}: weights do not fit model {method!r}: {str(exc).splitlines()[0]}"
        ) from exc


def load_shipped(
    name: str, device: str | torch.device = "cpu", weights_dir: str | Path | None = None
) -> LoadedModel:
    """A shipped model by name (from ``weights_dir``, default the package's weights).

    Raises:
        FileNotFoundError: no shipped model of that name.
    """
    from safetensors.torch import load_file

    meta_path = Path(weights_dir or WEIGHTS_DIR) / f"{name}.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"no shipped model {name!r}; shipped: {shipped_models()}")
    meta = json.loads(meta_path.read_text())
    model = build_model(meta["method"], meta["model"], meta.get("method_module"))
    _fit(model, load_file(str(_weights_file(meta_path))), name, meta["method"])
    options = {"scales": tuple(meta.get("scales", (1.0,)))}
    return LoadedModel(model.to(device).eval(), meta["method"], name, options)


def load_run(path: str | Path, device: str | torch.device = "cpu") -> LoadedModel:
    """The model of a checkpoint (``ckpt_*.pt``) or of a run folder's newest checkpoint.

    Raises:
        FileNotFoundError: no checkpoint there.
        CheckpointError: the file cannot be loaded safely.
        ValueError: the weights do not fit the checkpoint's model.
    """
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
    model = build_model(method, model_conf, state.get("method_module"))
    _fit(model, state["model"], str(path), method)
    return LoadedModel(model.to(device).eval(), method, name, {}, state, path)


def load_model(source: str | Path, device: str | torch.device = "cpu") -> LoadedModel:
    """A shipped model (by name) or a checkpoint / run folder (by path)."""
    if isinstance(source, str) and source in shipped_models():
        return load_shipped(source, device)
    return load_run(source, device)
