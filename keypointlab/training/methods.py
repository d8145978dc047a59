"""Training methods found by name: each pairs a model with its loss.

A method's :class:`TrainStep` is an ``nn.Module`` whose ``forward(batch)`` runs the model
on both views and returns ``(losses, metrics)``, so DistributedDataParallel sees every
parameter (IO-Net included) used inside one forward. A method's step function is
``step(model, batch, loss_conf, step_index)``; the trainer sets ``TrainStep.step_index``
before each step, for losses with a schedule (KP2D's descriptor warm-up).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from keypointlab.config import merge
from keypointlab.losses import kp2d as kp2d_losses
from keypointlab.models.base import BaseModel
from keypointlab.models.kp2d import KP2D


def split_views(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[dict, dict]:
    """Run ``model`` once on both views (concatenated) and split its outputs."""
    b = batch["image0"].shape[0]
    out = model({"image": torch.cat([batch["image0"], batch["image1"]], dim=0)})
    return ({k: v[:b] for k, v in out.items()}, {k: v[b:] for k, v in out.items()})


class TrainStep(nn.Module):
    """Model plus loss for one training step (the unit DDP wraps)."""

    def __init__(self, model: BaseModel, loss_fn: Callable, loss_conf: dict[str, Any]) -> None:
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn
        self.loss_conf = loss_conf
        self.step_index = 0  # optimisation steps taken before this one (set by the trainer)

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[dict, dict]:
        return self.loss_fn(self.model, batch, self.loss_conf, self.step_index)


def _kp2d_step(
    model: KP2D, batch: dict[str, torch.Tensor], conf: dict, step: int = 0
) -> tuple[dict, dict]:
    p0, p1 = split_views(model.keypoint_net, batch)
    size = tuple(batch["image0"].shape[-2:])
    return kp2d_losses.kp2d_loss(p0, p1, batch["H_0to1"], size, model.io_net, conf, step)


@dataclass
class Method:
    """A trainable method: model class, step function and loss defaults.

    ``dense_net`` returns the sub-network that maps an image to scores, keypoints and a
    descriptor map (what an extractor runs at inference).
    """

    model_cls: type[BaseModel]
    step: Callable[[Any, dict, dict, int], tuple[dict, dict]]
    loss_defaults: dict[str, Any]
    dense_net: Callable[[Any], nn.Module]

    def build(self, model_conf: dict | None, loss_conf: dict | None) -> TrainStep:
        model = self.model_cls(model_conf)
        return TrainStep(model, self.step, merge(self.loss_defaults, loss_conf))


METHODS: dict[str, Method] = {
    "kp2d": Method(KP2D, _kp2d_step, kp2d_losses.DEFAULT_CONF, lambda m: m.keypoint_net),
}


def register_method(name: str, method: Method) -> None:
    """Add a method to the registry (models in other modules call this on import)."""
    METHODS[name] = method


def get_method(name: str) -> Method:
    """The method called ``name``; unknown names raise ``KeyError`` listing the known."""
    _load_optional_methods()
    if name not in METHODS:
        raise KeyError(f"unknown method {name!r}; known: {sorted(METHODS)}")
    return METHODS[name]


def _load_optional_methods() -> None:
    """Import method modules that register themselves (kept out of import time)."""
    import importlib

    for module in ("keypointlab.models.unsuperpoint", "keypointlab.models.superpoint"):
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
