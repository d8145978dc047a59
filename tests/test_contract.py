"""The method contract, checked for every registered method with its ``tiny_conf``: build,
forward, loss, backward, one optimizer step, checkpoint save + load + resume, extraction
through the public API, HDF5 round trip and ONNX export where supported.

A new method gets all of this by registering itself; nothing here lists the methods.
"""

from __future__ import annotations

import importlib
import importlib.util

import h5py
import numpy as np
import pytest
import torch

import keypointlab as kl
from keypointlab.data.pairs import to_tensor
from keypointlab.data.samples import sample_photo
from keypointlab.data.synthetic import points_to_map
from keypointlab.features.h5 import read_features, write_features
from keypointlab.io.checkpoint import load_checkpoint, save_checkpoint
from keypointlab.models.base import METHODS, get_method, method_names
from keypointlab.models.loading import load_run
from keypointlab.training.step import build_train_step

SIZE = (64, 96)


def _pair_batch(n: int = 2, tx: int = 3, ty: int = 2) -> dict[str, torch.Tensor]:
    """Two translated crops of a photo with ``H_0to1`` and keypoint labels in both views
    (so that methods trained on labels, MagicPoint and SuperPoint, get what they need)."""
    h, w = SIZE
    base = to_tensor(sample_photo("astronaut", (h + 32, w + 32)))
    im0 = [base[:, 8 + 4 * i : 8 + 4 * i + h, 8 : 8 + w] for i in range(n)]
    im1 = [base[:, 8 + 4 * i - ty : 8 + 4 * i - ty + h, 8 - tx : 8 - tx + w] for i in range(n)]
    rng = np.random.default_rng(0)
    kp0 = rng.uniform([4, 4], [w - 12, h - 12], size=(30, 2)).round()
    km0 = torch.from_numpy(points_to_map(kp0, SIZE)).expand(n, h, w).clone()
    km1 = torch.from_numpy(points_to_map(kp0 + [tx, ty], SIZE)).expand(n, h, w).clone()
    H = torch.tensor([[1.0, 0.0, tx], [0.0, 1.0, ty], [0.0, 0.0, 1.0]])
    return {
        "image0": torch.stack(im0),
        "image1": torch.stack(im1),
        "H_0to1": H.expand(n, 3, 3).clone(),
        "keypoint_map0": km0,
        "keypoint_map1": km1,
        "valid_mask0": torch.ones(n, h, w),
        "valid_mask1": torch.ones(n, h, w),
    }


def test_every_method_is_found_by_name():
    names = method_names()
    assert {"kp2d", "unsuperpoint", "magicpoint", "superpoint"} <= set(names)
    for name in names:
        cls = get_method(name)
        if ":" not in name:  # an import path names a class registered under its own name
            assert cls.method_name == name
        assert importlib.import_module(METHODS.module_of(name)) is not None


def test_unknown_method_lists_the_known():
    with pytest.raises(KeyError, match="kp2d"):
        get_method("no_such_method")


@pytest.fixture(params=sorted(n for n in method_names() if ":" not in n))
def method(request) -> str:
    return request.param


def test_contract(method: str, tmp_path) -> None:
    torch.manual_seed(0)
    cls = get_method(method)
    step = build_train_step(method, cls.tiny_conf, None)
    batch = _pair_batch()

    # forward + loss + backward + one optimizer step
    losses, metrics = step(batch)
    assert "total" in losses and losses["total"].ndim == 0
    assert torch.isfinite(losses["total"])
    assert all(torch.isfinite(torch.as_tensor(v)).all() for v in metrics.values())
    opt = torch.optim.Adam(step.parameters(), lr=1e-3)
    opt.zero_grad()
    losses["total"].backward()
    grads = [p.grad for p in step.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)
    before = [p.detach().clone() for p in step.parameters()]
    opt.step()
    assert any(not torch.equal(a, p) for a, p in zip(before, step.parameters(), strict=True))

    # checkpoint save + load: the same model, and resuming restores the optimizer
    state = {
        "method": method,
        "method_module": METHODS.module_of(method),
        "config": {"model": step.model.conf},
        "model": step.model.state_dict(),
        "optimizer": opt.state_dict(),
        "step": 1,
        "train_seconds": 0.0,
        "torch_rng": torch.get_rng_state(),
    }
    path = save_checkpoint(state, tmp_path / "run", 1)
    loaded = load_run(tmp_path / "run")
    assert loaded.method == method and loaded.path == path
    for k, v in step.model.state_dict().items():
        assert torch.equal(v, loaded.model.state_dict()[k]), k
    resumed = build_train_step(method, load_checkpoint(path)["config"]["model"], None)
    resumed.model.load_state_dict(load_checkpoint(path)["model"])
    opt2 = torch.optim.Adam(resumed.parameters(), lr=1e-3)
    opt2.load_state_dict(load_checkpoint(path)["optimizer"])
    ours, theirs = opt.state_dict()["state"], opt2.state_dict()["state"]
    assert ours.keys() == theirs.keys()
    for k in ours:
        assert torch.equal(ours[k]["exp_avg"], theirs[k]["exp_avg"])

    # extraction through the public API, on an image that is not a multiple of the stride
    extractor = kl.load_extractor(str(tmp_path / "run"), max_keypoints=40)
    image = (batch["image0"][0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)[:61, :90]
    feats = extractor.extract(image)
    assert 0 < len(feats) <= 40
    assert feats.descriptors.shape[0] == len(feats)
    np.testing.assert_allclose(np.linalg.norm(feats.descriptors, axis=1), 1.0, atol=1e-4)
    assert (feats.keypoints >= 0).all()
    assert (feats.keypoints[:, 0] <= 89).all() and (feats.keypoints[:, 1] <= 60).all()
    assert np.all(np.diff(feats.scores) <= 0)
    again = extractor.extract(image)
    np.testing.assert_array_equal(feats.keypoints, again.keypoints)

    # HDF5 round trip
    with h5py.File(tmp_path / "f.h5", "w") as h5:
        write_features(h5, "a/b.png", feats)
    with h5py.File(tmp_path / "f.h5", "r") as h5:
        back = read_features(h5, "a/b.png", feats.image_size)
    np.testing.assert_allclose(back.keypoints, feats.keypoints, atol=1e-4)
    np.testing.assert_array_equal(back.descriptors, feats.descriptors)
    for name in ("scales", "orientations"):
        ours, theirs = getattr(feats, name), getattr(back, name)
        assert (ours is None) == (theirs is None)
        if ours is not None:
            np.testing.assert_allclose(theirs, ours, rtol=1e-6)

    # ONNX export where the method supports it
    if not cls.onnx_export or importlib.util.find_spec("onnxruntime") is None:
        return
    import onnxruntime as ort

    from keypointlab.features.onnx import export_onnx

    onnx_path = export_onnx(extractor, tmp_path / "m.onnx", size=SIZE)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    x = batch["image0"][:1]
    kp, scores, desc = session.run(None, {"image": x.numpy()})[:3]
    with torch.inference_mode():
        net = extractor.net
        det, context = net.detect(x)
        ref = net.describe(x, context, det)
    np.testing.assert_allclose(kp, det["keypoints"].numpy(), atol=1e-3)
    np.testing.assert_allclose(scores, det["scores"].numpy(), atol=1e-4)
    np.testing.assert_allclose(desc, ref.numpy(), atol=1e-3)


def test_one_registry_mechanism_finds_sources_and_benchmarks():
    from keypointlab.data.sources import SOURCES
    from keypointlab.evaluation.benchmark import BENCHMARKS, evaluate_features

    assert {"pairs", "synthetic", "adapted_pairs", "depth_pairs"} <= set(SOURCES.names())
    assert SOURCES.module_of("depth_pairs") == "keypointlab.data.depth"
    assert BENCHMARKS.get("homography") is evaluate_features
    with pytest.raises(KeyError, match="pairs"):
        SOURCES.get("no_such_source")
