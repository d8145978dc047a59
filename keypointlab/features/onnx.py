"""ONNX export of learned dense extractors.

The exported graph takes ``image`` ``(1, 3, H, W)`` float in ``[0, 1]`` (H, W multiples of
the network stride; both dynamic) and returns, for every cell, ``keypoints`` ``(N, 2)``
pixel xy, ``scores`` ``(N,)`` and L2-normalised ``descriptors`` ``(N, D)``. Ranking by score
and keeping the top-k is left to the caller, as in :class:`DenseExtractor`.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from keypointlab.features.learned import DenseExtractor
from keypointlab.geometry.keypoints import sample_descriptors


class _ExportWrapper(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        out = self.net({"image": image})
        size = torch._shape_as_tensor(image)[2:].to(image.dtype)  # dynamic (h, w) in the graph
        kp = out["keypoints"][0].flatten(1).transpose(0, 1)
        kp = torch.minimum(kp.clamp(min=0), torch.stack([size[1], size[0]]) - 1)
        scores = out["scores"][0].flatten()
        desc = sample_descriptors(out["descriptors"], kp[None], size)[0]
        return kp, scores, desc


def export_onnx(
    extractor: DenseExtractor, path: str | Path, size: tuple[int, int] = (240, 320), opset: int = 17
) -> Path:
    """Write ``extractor``'s network as an ONNX file (dynamic height and width).

    Raises:
        ValueError: ``extractor`` is not a learned dense extractor.
    """
    if not isinstance(extractor, DenseExtractor):
        raise ValueError(f"only learned extractors can be exported to ONNX, not {extractor.name!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    wrapper = _ExportWrapper(extractor.net.cpu()).eval()  # export restores the wrapper mode
    dummy = torch.rand(1, 3, *size)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.onnx.export(
        wrapper,
        (dummy,),
        str(tmp),
        input_names=["image"],
        output_names=["keypoints", "scores", "descriptors"],
        dynamic_axes={
            "image": {2: "height", 3: "width"},
            "keypoints": {0: "n"},
            "scores": {0: "n"},
            "descriptors": {0: "n"},
        },
        opset_version=opset,
        dynamo=False,
    )
    tmp.replace(path)
    return path
