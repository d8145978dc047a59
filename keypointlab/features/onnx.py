"""ONNX export of learned extractors, on the method contract.

The exported graph takes ``image`` ``(1, 3, H, W)`` float in ``[0, 1]`` (H, W multiples of
the model's input multiple; both dynamic) and returns every detection of the model's
``detect``: ``keypoints`` ``(N, 2)`` pixel xy, ``scores`` ``(N,)``, L2-normalised
``descriptors`` ``(N, D)`` from ``describe`` and, when the model gives them, ``scales`` and
``orientations`` ``(N,)``. Ranking by score and keeping the top-k is left to the caller,
as in :class:`LearnedExtractor`.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from keypointlab.features.learned import OPTIONAL, LearnedExtractor
from keypointlab.io.outputs import atomic_output, check_output_file
from keypointlab.models.base import BaseModel


class _ExportWrapper(nn.Module):
    def __init__(self, net: BaseModel, optional: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.net = net
        self.optional = optional

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        det, context = self.net.detect(image)
        size = torch._shape_as_tensor(image)[2:].to(image.dtype)  # dynamic (h, w) in the graph
        kp = torch.minimum(det["keypoints"].clamp(min=0), torch.stack([size[1], size[0]]) - 1)
        det = {**det, "keypoints": kp}
        desc = self.net.describe(image, context, det)
        return (kp, det["scores"], desc, *(det[k] for k in self.optional))


def export_onnx(
    extractor: LearnedExtractor,
    path: str | Path,
    size: tuple[int, int] = (240, 320),
    opset: int = 17,
) -> Path:
    """Write ``extractor``'s network as an ONNX file (dynamic height and width).

    Raises:
        ValueError: ``extractor`` is not a learned dense extractor.
        OutputError: ``path`` is a folder or cannot be written (checked before exporting;
            a failed export leaves no file behind).
    """
    path = check_output_file(path)
    if not isinstance(extractor, LearnedExtractor):
        raise ValueError(f"only learned extractors can be exported to ONNX, not {extractor.name!r}")
    net = extractor.net.cpu()
    if not net.onnx_export:
        raise ValueError(f"{extractor.name!r}: this model does not export to ONNX")
    dummy = torch.rand(1, 3, *size)
    with torch.inference_mode():
        optional = tuple(k for k in OPTIONAL if k in net.eval().detect(dummy)[0])
    wrapper = _ExportWrapper(net, optional).eval()  # export restores the wrapper mode
    names = ["keypoints", "scores", "descriptors", *optional]
    with atomic_output(path) as tmp:
        torch.onnx.export(
            wrapper,
            (dummy,),
            str(tmp),
            input_names=["image"],
            output_names=names,
            dynamic_axes={"image": {2: "height", 3: "width"}, **{k: {0: "n"} for k in names}},
            opset_version=opset,
            dynamo=False,
        )
    return path
