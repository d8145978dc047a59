"""One training step of any method: the model, its loss config and the pair's ground truth.

:class:`TrainStep` is the ``nn.Module`` that DistributedDataParallel wraps: its
``forward(batch)`` builds the batch's ground truth (a homography, or depth + cameras +
relative pose; ``None`` for single-view batches) and returns the method's
``model.loss(batch, gt, loss_conf, step_index)``, so DDP sees every parameter used inside
one forward (KP2D's IO-Net included). The trainer sets :attr:`TrainStep.step_index` and,
in multi-stage training, :attr:`TrainStep.loss_conf` before each step.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from keypointlab.config import merge
from keypointlab.geometry.groundtruth import ground_truth_from_batch
from keypointlab.models.base import BaseModel, build_model

PAIR_KEYS = ("image0", "image1")


def batch_ground_truth(batch: dict[str, torch.Tensor]) -> Any:
    """The ground truth of a pair batch; ``None`` for a batch of single images or one
    without ``H_0to1`` / ``T_0to1`` (the method then says what it needs)."""
    if not all(k in batch for k in PAIR_KEYS) or not ({"H_0to1", "T_0to1"} & set(batch)):
        return None
    return ground_truth_from_batch(batch)


class TrainStep(nn.Module):
    """Model plus loss for one training step (the unit DDP wraps)."""

    def __init__(self, model: BaseModel, loss_conf: dict[str, Any]) -> None:
        super().__init__()
        self.model = model
        self.loss_conf = loss_conf
        self.step_index = 0  # optimisation steps taken before this one (set by the trainer)

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[dict, dict]:
        return self.model.loss(batch, batch_ground_truth(batch), self.loss_conf, self.step_index)


def build_train_step(
    method: str, model_conf: dict[str, Any] | None, loss_conf: dict[str, Any] | None
) -> TrainStep:
    """The :class:`TrainStep` of ``method``: its model from ``model_conf`` and its loss
    config, ``loss_conf`` merged strictly onto the method's ``loss_defaults`` (an unknown
    key raises :class:`keypointlab.config.ConfigError` naming it)."""
    model = build_model(method, model_conf)
    return TrainStep(model, merge(type(model).loss_defaults, loss_conf, "loss."))
