"""Base class of every learned model: a strict ``default_conf`` and checked inputs."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from keypointlab.config import merge


class BaseModel(nn.Module):
    """A model configured by ``default_conf`` merged with the user's config.

    Subclasses set ``default_conf`` and ``required_inputs`` and implement ``_init`` and
    ``_forward``. ``forward(data)`` checks the inputs and returns a dict of outputs.
    """

    default_conf: dict[str, Any] = {}
    required_inputs: tuple[str, ...] = ("image",)

    def __init__(self, conf: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.conf = merge(self.default_conf, conf)
        self._init(self.conf)

    def _init(self, conf: dict[str, Any]) -> None:
        raise NotImplementedError

    def forward(self, data: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        missing = [k for k in self.required_inputs if k not in data]
        if missing:
            raise KeyError(f"{type(self).__name__}.forward: missing input(s) {missing}")
        image = data.get("image")
        if image is not None and (image.ndim != 4 or image.shape[1] not in (1, 3)):
            raise ValueError(
                f"{type(self).__name__}: expected image of shape (B, 1|3, H, W), "
                f"got {tuple(image.shape)}"
            )
        return self._forward(data)

    def _forward(self, data: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        raise NotImplementedError
