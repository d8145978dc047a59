"""DELF: attention pooling, GeM, PCA, keypoint positions, the two training stages and the
instance-discrimination source, on hand-made inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from keypointlab.data.instances import InstancePairs
from keypointlab.data.pairs import HomographicPairs
from keypointlab.data.samples import sample_photo
from keypointlab.losses import delf as delf_losses
from keypointlab.models.base import build_model
from keypointlab.models.blocks import resnet_encoder
from keypointlab.models.delf import DELF, STRIDE, pca_projection
from keypointlab.training.step import build_train_step


def _tiny(**kw):
    return build_model("delf", {**DELF.tiny_conf, **kw})


def test_attention_pool_on_a_hand_made_map() -> None:
    f = torch.zeros(1, 2, 1, 2)
    f[0, :, 0, 0] = torch.tensor([3.0, 4.0])  # normalised: (0.6, 0.8)
    f[0, :, 0, 1] = torch.tensor([0.0, 2.0])  # normalised: (0, 1)
    a = torch.tensor([[[[1.0, 0.5]]]])
    y = delf_losses.attention_pool(f, a)
    # mean over the 2 locations of a_n * f_n / |f_n|
    torch.testing.assert_close(y, torch.tensor([[(0.6 + 0.0) / 2, (0.8 + 0.5) / 2]]))


def test_gem_between_average_and_max() -> None:
    f = torch.tensor([1.0, 2.0, 3.0, 6.0]).view(1, 1, 2, 2)
    assert delf_losses.gem(f, 1.0).item() == pytest.approx(3.0)
    assert delf_losses.gem(f, 3.0).item() == pytest.approx(((1 + 8 + 27 + 216) / 4) ** (1 / 3))
    assert delf_losses.gem(f, 40.0).item() == pytest.approx(6.0 * 0.25 ** (1 / 40))  # ~max


def test_cosine_logits_and_classification() -> None:
    w = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    x = torch.tensor([[3.0, 0.0], [1.0, 1.0]])
    logits = delf_losses.cosine_logits(x, w, 10.0)
    torch.testing.assert_close(logits, torch.tensor([[10.0, 0.0], [10 / 2**0.5, 10 / 2**0.5]]))
    loss, acc = delf_losses.classification(logits, torch.tensor([0, 1]))
    expected = (math.log(1 + math.exp(-10)) + math.log(2)) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert acc.item() == pytest.approx(0.5)  # the tie goes to class 0


def test_pca_round_trip_recovers_a_known_basis() -> None:
    rng = np.random.default_rng(0)
    basis = np.linalg.qr(rng.normal(size=(6, 6)))[0]
    std = np.array([5.0, 3.0, 2.0, 0.1, 0.05, 0.01])
    x = torch.from_numpy((rng.normal(size=(20000, 6)) * std) @ basis.T + 1.5)
    mean, proj = pca_projection(x.sum(0), x.T @ x, len(x), 3, whiten=True, eps=0.0)
    torch.testing.assert_close(mean, torch.full((6,), 1.5, dtype=torch.float64), atol=0.1, rtol=0)
    for k in range(3):  # each row is a leading axis (up to sign) divided by its spread
        row = proj[k] * std[k]
        cos = abs(float(row @ torch.from_numpy(basis[:, k]))) / float(row.norm())
        assert cos > 0.999
    y = (x - mean) @ proj.T  # whitened: unit variance, decorrelated
    torch.testing.assert_close(torch.cov(y.T), torch.eye(3, dtype=torch.float64), atol=0.03, rtol=0)
    # the dropped axes carry almost nothing: reconstructing from 3 of 6 keeps the data
    unwhite = proj / proj.norm(dim=1, keepdim=True)
    back = ((x - mean) @ unwhite.T) @ unwhite + mean
    assert float(((back - x) ** 2).mean()) < 0.01


def test_encoder_cells_are_centred_on_stride_multiples() -> None:
    torch.manual_seed(0)
    enc = resnet_encoder(4, [4, 4, 4], [1, 1, 1], [1, 2, 2]).eval()
    h, w = 96, 128
    x = torch.zeros(1, 3, h, w)
    with torch.no_grad():
        base = enc(x)
        assert base.shape[-2:] == (h // STRIDE, w // STRIDE)
        # a bright dot at pixel (16 j, 16 i) moves the output of cell (i, j) the most
        for i, j in [(2, 3), (4, 5)]:
            y = x.clone()
            y[0, :, STRIDE * i, STRIDE * j] = 50.0
            change = (enc(y) - base).abs().sum(1)[0]
            assert divmod(int(change.argmax()), change.shape[1]) == (i, j)


def test_detect_places_cells_at_receptive_field_centres() -> None:
    model = _tiny(pyramid=[1.0, 0.5]).eval()
    x = torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        det, context = model.detect(x)
    n1, n05 = 4 * 6, 2 * 3
    assert len(det["scores"]) == n1 + n05 == len(context)
    # levels from coarse to fine: scale 0.5 first; cell j of a half-size image sits on
    # pixel 16 j there, i.e. (16 j + 0.5) / 0.5 - 0.5 in the image
    kp05, kp1 = det["keypoints"][:n05], det["keypoints"][n05:]
    torch.testing.assert_close(kp1[:3], torch.tensor([[0.0, 0.0], [16.0, 0.0], [32.0, 0.0]]))
    torch.testing.assert_close(kp05[1], torch.tensor([32.5, 0.5]))
    torch.testing.assert_close(det["scales"][:n05], torch.full((n05,), 32.0))
    assert (det["scores"] >= 0).all()
    sub = {k: v[[3, 0]] for k, v in det.items()}
    d = model.describe(x, context, sub)
    torch.testing.assert_close(d.norm(dim=1), torch.ones(2))
    torch.testing.assert_close(d[1], torch.nn.functional.normalize(context[0], dim=0))


def test_stage_two_freezes_batch_norm_and_fills_the_pca() -> None:
    torch.manual_seed(0)
    step = build_train_step("delf", _tiny().conf, {"descriptor_weight": 0.0})
    model = step.model
    for p in model.backbone.parameters():
        p.requires_grad_(False)
    model.train()
    bn = next(m for m in model.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d))
    stats = bn.running_mean.clone()
    batch = {
        "image0": torch.rand(2, 3, 64, 64),
        "image1": torch.rand(2, 3, 64, 64),
        "label": torch.tensor([1, 5]),
    }
    assert not model.pca_ready()
    losses, metrics = step(batch)
    losses["total"].backward()
    torch.testing.assert_close(bn.running_mean, stats)  # stage 1's statistics kept
    assert model.attention[0].weight.grad is not None
    assert all(p.grad is None for p in model.backbone.parameters())
    assert float(model.pca_count) == 4 * 4 * 4  # 4 images of 4x4 cells
    assert "attention_accuracy" in metrics and "descriptor" not in losses
    for _ in range(3):
        step(batch)
    assert model.pca_ready()
    model.eval()
    d = model.local_descriptors(torch.rand(5, 16))
    assert d.shape == (5, 4)
    torch.testing.assert_close(d.norm(dim=1), torch.ones(5))


def test_labels_are_checked_against_the_classes() -> None:
    step = build_train_step("delf", _tiny().conf, None)
    batch = {"image0": torch.rand(2, 3, 32, 32), "image1": torch.rand(2, 3, 32, 32)}
    losses, _ = step(batch)  # no labels: each pair its own class
    assert torch.isfinite(losses["total"])
    with pytest.raises(ValueError, match="model.classes = 8"):
        step({**batch, "label": torch.tensor([0, 8])})


def test_global_descriptor_is_unit_and_depends_on_the_image() -> None:
    model = _tiny().eval()
    a, b = torch.rand(1, 3, 64, 64), torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        ga, gb = model.global_descriptor(a), model.global_descriptor(b)
        ga2 = model.global_descriptor(a)
    assert ga.shape == (16,)
    assert ga.norm().item() == pytest.approx(1.0, abs=1e-5)
    torch.testing.assert_close(ga, ga2)
    assert not torch.allclose(ga, gb)


def test_instance_pairs_cover_each_photo_once_per_epoch() -> None:
    images = [sample_photo(name, (120, 160)) for name in ("astronaut", "coffee", "chelsea")]
    ds = InstancePairs(HomographicPairs(images, (48, 64)), seed=3)
    labels = [ds[i]["label"].item() for i in range(6)]
    assert sorted(labels[:3]) == [0, 1, 2] and sorted(labels[3:]) == [0, 1, 2]
    item = ds[4]
    assert item["image0"].shape == item["image1"].shape == (3, 48, 64)
    torch.testing.assert_close(item["image0"], ds[4]["image0"])  # a pure function of i
    assert ds.classes == 3
