"""The method contract: one :class:`BaseModel` subclass per method, found by name.

A method is one model module (the network, and its loss or a call into
``keypointlab/losses/<name>.py``) plus its configs. The class registers itself where it is
defined::

    @register_method("d2net")
    class D2Net(BaseModel):
        default_conf = {...}            # model config, strict (typos fail)
        loss_defaults = {...}           # the ``loss:`` config section, strict
        def _init(self, conf): ...      # build layers
        def _forward(self, data): ...   # dense outputs for one batch of images
        def loss(self, batch, gt, conf, step): ...   # training: (losses, metrics)
        def detect(self, image): ...    # inference: sparse keypoints of one image
        def describe(self, image, context, keypoints): ...

and ``get_method("d2net")`` finds it by import path (see :mod:`keypointlab.registry`):
no shared file lists the methods.

Sparse output contract (inference, one image ``(1, C, H, W)`` in ``[0, 1]``, ``H, W``
multiples of :meth:`BaseModel.input_multiple`):

- :meth:`BaseModel.detect` returns ``(detections, context)``: ``detections`` a dict with
  ``keypoints`` ``(N, 2)`` pixel xy, ``scores`` ``(N,)`` and optionally ``scales`` ``(N,)``
  (keypoint size in pixels) and ``orientations`` ``(N,)`` (radians); ``context`` anything
  :meth:`describe` needs (a dense descriptor map, the image pyramid...);
- :meth:`BaseModel.describe` returns ``(M, D)`` L2-normalised descriptors of any subset
  of those detections (the extractor describes only the ones it keeps).

:class:`keypointlab.features.learned.LearnedExtractor` runs every model through this
contract, at several scales and in rotated copies, and ONNX export traces it.

Training contract: ``loss(batch, gt, conf, step)`` gets a batch of two views
(``image0``, ``image1`` and whatever the data source adds: depth, cameras, labels), the
pair's ground truth (:class:`keypointlab.geometry.groundtruth.GroundTruth`, ``None`` for
single-view batches), the merged ``loss`` config and the optimisation step, and returns
``(losses, metrics)`` with the optimised sum under ``losses["total"]``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from keypointlab.config import merge
from keypointlab.registry import Registry

METHODS: Registry[type[BaseModel]] = Registry("method", "keypointlab.models")


class BaseModel(nn.Module):
    """A model configured by ``default_conf`` merged with the user's config.

    Subclasses set ``default_conf`` and ``required_inputs`` and implement ``_init`` and
    ``_forward``; trainable methods also ``loss`` (and set ``loss_defaults``), extractors
    ``detect`` and ``describe``. ``forward(data)`` checks the inputs and returns a dict of
    outputs.
    """

    default_conf: dict[str, Any] = {}
    loss_defaults: dict[str, Any] = {}
    tiny_conf: dict[str, Any] = {}  # a small model config for the contract test and smoke runs
    required_inputs: tuple[str, ...] = ("image",)
    method_name: str = ""  # set by :func:`register_method`
    onnx_export: bool = True  # whether detect + describe trace to ONNX

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

    # -- training ---------------------------------------------------------------
    def loss(
        self, batch: dict[str, torch.Tensor], gt: Any, conf: dict[str, Any], step: int
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """``(losses, metrics)`` of one batch; ``losses["total"]`` is optimised."""
        raise NotImplementedError(f"{type(self).__name__} is not trainable (no loss)")

    # -- inference ----------------------------------------------------------------
    def input_multiple(self) -> int:
        """Image sides must be multiples of this (the extractor pads to it)."""
        return int(self.conf.get("cell", 1))

    def detect(self, image: torch.Tensor) -> tuple[dict[str, torch.Tensor], Any]:
        """Sparse detections of one image ``(1, C, H, W)`` and the context ``describe``
        needs (see the module docstring)."""
        raise NotImplementedError(f"{type(self).__name__} has no detector")

    def describe(
        self, image: torch.Tensor, context: Any, keypoints: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        """``(M, D)`` L2-normalised descriptors of ``keypoints`` (a subset of
        :meth:`detect`'s detections, same keys)."""
        raise NotImplementedError(f"{type(self).__name__} has no descriptor")


def register_method(name: str) -> Any:
    """Class decorator: make ``get_method(name)`` return the class."""

    def decorator(cls: type[BaseModel]) -> type[BaseModel]:
        if not (isinstance(cls, type) and issubclass(cls, BaseModel)):
            raise TypeError(f"method {name!r}: {cls!r} is not a BaseModel subclass")
        cls.method_name = name
        METHODS.register(name, cls)
        return cls

    return decorator


def get_method(name: str, module: str | None = None) -> type[BaseModel]:
    """The model class of method ``name`` (``module``: where it was defined, if known).

    Raises:
        keypointlab.registry.RegistryError: unknown method; the message lists the known.
    """
    return METHODS.get(name, module)


def build_model(name: str, conf: dict[str, Any] | None = None, module: str | None = None) -> Any:
    """The one place a model is built from a method name and its ``model`` config."""
    return get_method(name, module)(conf)


def method_names() -> list[str]:
    """Every registered method."""
    return METHODS.names()


def split_views(net: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[dict, dict]:
    """Run ``net`` once on both views of a pair batch (concatenated) and split its outputs
    into those of ``image0`` and of ``image1``."""
    b = batch["image0"].shape[0]
    out = net({"image": torch.cat([batch["image0"], batch["image1"]], dim=0)})
    return ({k: v[:b] for k, v in out.items()}, {k: v[b:] for k, v in out.items()})
