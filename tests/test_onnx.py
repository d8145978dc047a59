"""ONNX export: outputs of onnxruntime match PyTorch's, at the export size and another."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from keypointlab.features.learned import LearnedExtractor, shipped_models
from keypointlab.features.onnx import _ExportWrapper, export_onnx
from keypointlab.models.kp2d import KeyPointNet

ort = pytest.importorskip("onnxruntime", reason="onnxruntime not installed (extra 'onnx')")


def test_onnx_matches_torch(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = KeyPointNet(
        {
            "channels": [8, 8, 16, 16],
            "descriptor_dim": 16,
            "stem_stride": 2,
            "shared_head": True,
            "upsample_width": 8,
        }
    )
    extractor = LearnedExtractor(net, "tiny")
    path = export_onnx(extractor, tmp_path / "tiny.onnx", size=(64, 96))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for size in ((64, 96), (48, 120)):
        x = torch.rand(1, 3, *size)
        with torch.inference_mode():
            expected = _ExportWrapper(net.eval())(x)
        got = session.run(None, {"image": x.numpy()})
        assert [o.shape for o in got] == [tuple(e.shape) for e in expected]
        for e, g in zip(expected, got, strict=True):
            np.testing.assert_allclose(g, e.numpy(), atol=1e-4, rtol=1e-4)
    assert not net.training  # exporting must leave the model in eval mode


def test_onnx_refuses_classical(tmp_path: Path) -> None:
    from keypointlab.features import get_extractor

    with pytest.raises(ValueError, match="sift"):
        export_onnx(get_extractor("sift"), tmp_path / "x.onnx")


@pytest.mark.parametrize("name", shipped_models() or ["(none shipped)"])
def test_shipped_models_export_and_match_torch(name: str, tmp_path: Path) -> None:
    """Every shipped model (KeyPointNet with either stem, SuperPoint's 65-channel head)
    exports with dynamic size, and onnxruntime agrees with PyTorch at two sizes."""
    from keypointlab.features import get_extractor

    if name not in shipped_models():
        pytest.skip("no weights shipped in keypointlab/weights")
    extractor = get_extractor(name)
    if not extractor.net.onnx_export:
        with pytest.raises(ValueError, match="ONNX"):
            export_onnx(extractor, tmp_path / f"{name}.onnx", size=(64, 96))
        return
    path = export_onnx(extractor, tmp_path / f"{name}.onnx", size=(64, 96))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    torch.manual_seed(1)
    for size in ((64, 96), (56, 120)):
        x = torch.rand(1, 3, *size)
        with torch.inference_mode():
            expected = _ExportWrapper(extractor.net)(x)
        got = session.run(None, {"image": x.numpy()})
        for e, g in zip(expected, got, strict=True):
            assert g.shape == tuple(e.shape)
            np.testing.assert_allclose(g, e.numpy(), atol=1e-4, rtol=1e-4)
