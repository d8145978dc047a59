"""Cell decoding, the SuperPoint family's detector: one keypoint per ``cell x cell`` cell.

SuperPoint, MagicPoint, UnsuperPoint and KP2D predict, for every cell of the image, a
score, a pixel position and a dense descriptor map. :class:`CellModel` turns those dense
outputs into the sparse contract of :class:`~keypointlab.models.base.BaseModel`: every
cell is a candidate (a cheap non-maximum suppression), and descriptors are sampled
bilinearly from the map at the kept keypoints and L2-normalised.
"""

from __future__ import annotations

from typing import Any

import torch

from keypointlab.geometry.keypoints import sample_descriptors
from keypointlab.models.base import BaseModel


def cell_detections(out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Sparse candidates of one image's dense cell outputs: ``scores`` ``(1, 1, Hc, Wc)``
    and ``keypoints`` ``(1, 2, Hc, Wc)`` to ``keypoints`` ``(Hc * Wc, 2)`` and ``scores``
    ``(Hc * Wc,)`` in raster order of the cells."""
    return {"keypoints": out["keypoints"][0].flatten(1).T, "scores": out["scores"][0].flatten()}


class CellModel(BaseModel):
    """A model whose ``dense(image)`` returns per-cell ``scores``, ``keypoints`` and a
    ``descriptors`` map (the subclass's ``forward`` by default)."""

    def dense(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """Dense outputs of a batch of images (see the subclass)."""
        return self({"image": image})

    def input_multiple(self) -> int:
        return int(self.conf.get("cell", 8))

    def detect(self, image: torch.Tensor) -> tuple[dict[str, torch.Tensor], Any]:
        out = self.dense(image)
        return cell_detections(out), out["descriptors"]

    def describe(
        self, image: torch.Tensor, context: Any, keypoints: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        # a traced graph (ONNX) keeps the size dynamic as a tensor
        size = torch._shape_as_tensor(image)[2:] if torch.jit.is_tracing() else image.shape[-2:]
        return sample_descriptors(context, keypoints["keypoints"][None], size)[0]


class DenseCells(CellModel):
    """Any module returning the dense cell outputs (``scores``, ``keypoints``,
    ``descriptors``), seen through the sparse contract (e.g. a network wrapped for
    homographic adaptation, or a hand-made one in a test)."""

    def __init__(self, net: torch.nn.Module, cell: int = 8) -> None:
        super().__init__({"cell": int(cell)})
        self.net = net

    default_conf: dict[str, Any] = {"cell": 8}

    def _init(self, conf: dict[str, Any]) -> None:
        pass

    def _forward(self, data: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return self.net(data)


def as_sparse_model(net: torch.nn.Module, cell: int = 8) -> BaseModel:
    """``net`` itself when it implements :meth:`BaseModel.detect`, else ``net`` wrapped
    in :class:`DenseCells`."""
    if isinstance(net, BaseModel) and type(net).detect is not BaseModel.detect:
        return net
    return DenseCells(net, cell)
