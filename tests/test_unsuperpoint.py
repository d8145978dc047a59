"""UnsuperPoint: model outputs, each loss term on hand-made cases, gradients, overfitting one
batch, and building through the method registry and the trainer's config."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

import keypointlab
from keypointlab.config import ConfigError
from keypointlab.data.pairs import to_tensor
from keypointlab.data.samples import sample_photo
from keypointlab.geometry import HomographyConfig, sample_homography, warp_image
from keypointlab.geometry.keypoints import cell_centers
from keypointlab.losses import unsuperpoint as L
from keypointlab.models.unsuperpoint import UnsuperPoint

torch.set_num_threads(1)

TINY = {"channels": [8, 16, 32, 32], "descriptor_dim": 32}
CONFIG = Path(keypointlab.__file__).parent / "configs" / "unsuperpoint.yaml"


def _pairs(n: int = 2, size: tuple[int, int] = (64, 64), seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    image = sample_photo("astronaut", (96, 96))
    cfg = HomographyConfig(patch_ratio=0.8, max_angle=0.3)
    batch: dict[str, list] = {"image0": [], "image1": [], "H_0to1": []}
    for i in range(n):
        y, x = 8 * i, 16 * i
        view0 = np.ascontiguousarray(image[y : y + size[0], x : x + size[1]])
        H = sample_homography(size, rng, cfg)
        batch["image0"].append(to_tensor(view0))
        batch["image1"].append(to_tensor(warp_image(view0, H, size)))
        batch["H_0to1"].append(torch.from_numpy(H.astype(np.float32)))
    return {k: torch.stack(v) for k, v in batch.items()}


# --------------------------------------------------------------------------- model


def test_output_shapes_dtypes_and_ranges():
    torch.manual_seed(0)
    model = UnsuperPoint(TINY).eval()
    with torch.no_grad():
        out = model({"image": torch.rand(2, 3, 64, 96)})
    assert out["scores"].shape == (2, 1, 8, 12)
    assert out["keypoints"].shape == (2, 2, 8, 12)
    assert out["descriptors"].shape == (2, 32, 8, 12)
    assert out["relative"].shape == (2, 2, 8, 12)
    for v in out.values():
        assert v.dtype == torch.float32
    assert out["scores"].min() >= 0 and out["scores"].max() <= 1
    assert out["relative"].min() >= 0 and out["relative"].max() <= 1
    kp = out["keypoints"]
    assert kp[:, 0].min() >= 0 and kp[:, 0].max() <= 95
    assert kp[:, 1].min() >= 0 and kp[:, 1].max() <= 63
    # keypoints stay inside their own cell: within half a cell of its centre
    centers = cell_centers(8, 12, 8)
    assert ((kp - centers).abs() <= 4 + 1e-5).all()
    # grayscale input is accepted; sizes that are not a multiple of 8 are rejected
    with torch.no_grad():
        assert model({"image": torch.rand(1, 1, 64, 96)})["scores"].shape == (1, 1, 8, 12)
    with pytest.raises(ValueError, match="multiple of 8"):
        model({"image": torch.rand(1, 3, 60, 96)})


def test_default_conf_is_the_paper_architecture_and_unknown_keys_fail():
    model = UnsuperPoint()
    assert model.conf["channels"] == [32, 64, 128, 256]
    assert model.conf["descriptor_dim"] == 256
    with pytest.raises(ConfigError, match="widths"):
        UnsuperPoint({"widths": [8, 8, 8, 8]})


def test_relative_half_is_the_cell_centre():
    model = UnsuperPoint(TINY).eval()
    last = model.position_head[-1]
    torch.nn.init.zeros_(last.weight)
    torch.nn.init.zeros_(last.bias)
    with torch.no_grad():
        out = model({"image": torch.rand(1, 3, 32, 48)})
    torch.testing.assert_close(out["relative"], torch.full_like(out["relative"], 0.5))
    torch.testing.assert_close(out["keypoints"][0], cell_centers(4, 6, 8))


# --------------------------------------------------------------------------- loss terms


def test_uniform_loss():
    n = 101
    uniform = torch.linspace(0, 1, n)[torch.randperm(n)].unsqueeze(0)
    assert float(L.uniform_loss(uniform)) < 1e-10
    concentrated = torch.full((1, n), 0.5)
    # sum over quantiles of (0.5 - t)^2 / n ~ 1/12
    assert float(L.uniform_loss(concentrated)) == pytest.approx(1 / 12, rel=0.05)
    clustered = 0.5 + 0.1 * (torch.rand(1, n) - 0.5)
    assert float(L.uniform_loss(clustered)) > 0.05


def test_decorrelation_loss():
    # zero-mean orthogonal columns: perfectly decorrelated dimensions
    desc = torch.tensor([[1.0, 1, 1], [-1, 1, -1], [1, -1, -1], [-1, -1, 1]]).unsqueeze(0)
    assert float(L.decorrelation_loss(desc)) == pytest.approx(0.0, abs=1e-6)
    # two perfectly (anti-)correlated dimensions: R_12 = -1 -> (1 + 1) / 2
    a = torch.randn(50)
    desc = torch.stack([a, -3 * a + 1], dim=-1).unsqueeze(0)
    assert float(L.decorrelation_loss(desc)) == pytest.approx(1.0, rel=1e-4)


def test_score_and_matching_terms():
    s0 = torch.tensor([[0.2, 0.9, 0.5]])
    s1 = torch.tensor([[0.4, 0.5, 0.0]])
    valid = torch.tensor([[True, True, False]])
    assert float(L.score_loss(s0, s1, valid)) == pytest.approx((0.2**2 + 0.4**2) / 2)
    d = torch.tensor([[1.0, 3.0, 10.0]])
    # mean d over pairs = 2: (0.3 * (1 - 2) + 0.7 * (3 - 2)) / 2
    assert float(L.matching_loss(s0, s1, d, valid)) == pytest.approx((-0.3 + 0.7) / 2)
    none = torch.zeros_like(valid)
    assert float(L.position_loss(d, none)) == 0.0
    assert float(L.matching_loss(s0, s1, d, none)) == 0.0


def test_descriptor_hinge_loss():
    desc0 = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    desc1 = torch.tensor([[[0.8, 0.6], [0.6, 0.8]]])
    kp0_w = torch.tensor([[[0.0, 0.0], [50.0, 50.0]]])
    kp1 = torch.tensor([[[3.0, 4.0], [100.0, 100.0]]])  # only (a0, b0) within 8 px
    valid = torch.tensor([[True, True]])
    loss, recall = L.descriptor_loss(desc0, desc1, kp0_w, kp1, valid, 250.0, 1.0, 0.2, 8.0)
    # a0: 250 * (1 - 0.8) + max(0, 0.6 - 0.2); a1: max(0, 0.6 - 0.2) + max(0, 0.8 - 0.2)
    assert float(loss) == pytest.approx(((50.0 + 0.4) + (0.4 + 0.6)) / 2)
    assert float(recall) == 1.0
    loss, _ = L.descriptor_loss(desc0, desc1, kp0_w, kp1, torch.tensor([[True, False]]))
    assert float(loss) == pytest.approx(50.4)


def _grid_pred(offsets: torch.Tensor, hc: int, wc: int, scores: torch.Tensor) -> dict:
    kp = cell_centers(hc, wc, 8).unsqueeze(0) + offsets
    return {
        "keypoints": kp,
        "scores": scores,
        "descriptors": torch.randn(1, 4, hc, wc),
        "relative": torch.rand(1, 2, hc, wc),
    }


def test_position_loss_for_a_pure_translation():
    """View 1 is view 0 shifted right by one cell: view-0 point (i, j) pairs with view-1
    point (i, j + 1), and the last column leaves view 1."""
    torch.manual_seed(0)
    hc, wc = 4, 6
    H = torch.tensor([[[1.0, 0, 8], [0, 1, 0], [0, 0, 1]]])
    off0 = torch.zeros(1, 2, hc, wc)
    off0[:, 0] = 1.0
    off1 = torch.zeros(1, 2, hc, wc)
    off1[:, 1] = torch.rand(hc, wc) * 4 - 2  # y offsets in [-2, 2]
    p0 = _grid_pred(off0, hc, wc, torch.rand(1, 1, hc, wc))
    p1 = _grid_pred(off1, hc, wc, torch.rand(1, 1, hc, wc))
    # expected distances: sqrt(1 + oy^2) of the neighbour to the right, columns 0..wc-2
    oy = off1[0, 1, :, 1:]
    expected = torch.sqrt(1 + oy**2)
    losses, metrics = L.unsuperpoint_loss(p0, p1, H, (8 * hc, 8 * wc))
    assert float(losses["position"]) == pytest.approx(float(expected.mean()), rel=1e-5)
    assert float(metrics["valid"]) == pytest.approx((wc - 1) / wc)
    # the association itself
    kp0 = L.flatten_map(p0["keypoints"])
    kp0_w = kp0 + torch.tensor([8.0, 0.0])
    inside = kp0_w[..., 0] <= 8 * wc - 1
    dist, idx, valid = L.associate(kp0_w, L.flatten_map(p1["keypoints"]), inside, 4.0)
    ids = torch.arange(hc * wc).reshape(hc, wc)
    torch.testing.assert_close(idx.reshape(hc, wc)[:, :-1], ids[:, 1:])
    assert not valid.reshape(hc, wc)[:, -1].any()
    # score term on the same pairs
    s0 = p0["scores"][0, 0, :, :-1]
    s1 = p1["scores"][0, 0, :, 1:]
    assert float(losses["score"]) == pytest.approx(float(((s0 - s1) ** 2).mean()), rel=1e-5)
    # total is the weighted sum with the paper's weights
    c = L.DEFAULT_CONF
    total = (
        c["alpha_usp"] * (losses["position"] + 2.0 * losses["score"] + losses["usp"])
        + 100.0 * losses["uni_xy"]
        + 0.001 * losses["descriptor"]
        + 0.03 * losses["decorrelation"]
    )
    assert float(losses["total"]) == pytest.approx(float(total), rel=1e-6)


def test_infonce_option_replaces_the_hinge_on_a_translation():
    """With descriptors that follow the content, the cross-entropy option finds every own
    positive (recall 1, small loss); the hinge stays the default, and the total uses the
    option's own weight."""
    hc, wc = 4, 6
    H = torch.tensor([[[1.0, 0, 8], [0, 1, 0], [0, 0, 1]]])  # one cell to the right
    codes = torch.eye(hc * wc).T.reshape(hc * wc, hc, wc)[None]  # one-hot per cell
    p0 = _grid_pred(torch.zeros(1, 2, hc, wc), hc, wc, torch.rand(1, 1, hc, wc))
    p1 = _grid_pred(torch.zeros(1, 2, hc, wc), hc, wc, torch.rand(1, 1, hc, wc))
    p0["descriptors"] = codes * 10
    p1["descriptors"] = torch.roll(codes, 1, dims=-1) * 10  # content moved one cell right
    conf = {"descriptor_loss": "infonce", "alpha_desc_infonce": 2.0}
    losses, metrics = L.unsuperpoint_loss(p0, p1, H, (8 * hc, 8 * wc), conf)
    assert float(metrics["recall"]) == pytest.approx(1.0)
    assert float(losses["descriptor"]) < 1e-3
    hinge, _ = L.unsuperpoint_loss(p0, p1, H, (8 * hc, 8 * wc))
    assert float(hinge["descriptor"]) != pytest.approx(float(losses["descriptor"]))
    rest = float(losses["total"]) - 2.0 * float(losses["descriptor"])
    assert rest == pytest.approx(float(hinge["total"]) - 0.001 * float(hinge["descriptor"]))
    with pytest.raises(KeyError, match="hinge or infonce"):
        L.unsuperpoint_loss(p0, p1, H, (8 * hc, 8 * wc), {"descriptor_loss": "nce"})


def test_paper_weights_are_the_defaults():
    c = L.DEFAULT_CONF
    assert (c["alpha_usp"], c["alpha_position"], c["alpha_score"]) == (1.0, 1.0, 2.0)
    assert (c["alpha_uni_xy"], c["alpha_desc"], c["alpha_decorr"]) == (100.0, 0.001, 0.03)
    assert (c["lambda_d"], c["margin_positive"], c["margin_negative"]) == (250.0, 1.0, 0.2)
    assert (c["correspondence_threshold"], c["descriptor_threshold"]) == (4.0, 8.0)
    with pytest.raises(KeyError, match="alpha_typo"):
        L.unsuperpoint_loss({}, {}, torch.eye(3)[None], (8, 8), {"alpha_typo": 1.0})


# --------------------------------------------------------------------------- training


def test_gradients_reach_every_parameter():
    from keypointlab.training.step import build_train_step

    torch.manual_seed(0)
    step = build_train_step("unsuperpoint", TINY, None)
    losses, _ = step(_pairs())
    assert torch.isfinite(losses["total"])
    losses["total"].backward()
    missing = [
        n
        for n, p in step.named_parameters()
        if p.grad is None or not torch.isfinite(p.grad).all() or p.grad.abs().sum() == 0
    ]
    assert not missing


def test_overfits_one_batch():
    from keypointlab.training.step import build_train_step

    torch.manual_seed(0)
    step = build_train_step("unsuperpoint", TINY, None)
    batch = _pairs()
    opt = torch.optim.Adam(step.parameters(), lr=1e-3)
    history = []
    for _ in range(30):
        losses, metrics = step(batch)
        opt.zero_grad()
        losses["total"].backward()
        opt.step()
        history.append(losses["total"].item())
    assert all(math.isfinite(v) for v in history)
    assert np.mean(history[-5:]) < 0.5 * history[0]
    assert float(metrics["valid"]) > 0


def test_registry_config_and_extractor():
    from keypointlab.features.learned import LearnedExtractor
    from keypointlab.models.base import get_method
    from keypointlab.training.step import build_train_step
    from keypointlab.training.trainer import load_config

    method = get_method("unsuperpoint")
    assert method is UnsuperPoint
    assert method.loss_defaults is L.DEFAULT_CONF
    conf = load_config(CONFIG, ["model.channels=[8, 8, 16, 16]", "loss.alpha_desc=0.01"])
    assert conf["method"] == "unsuperpoint"
    assert conf["model"]["descriptor_dim"] == 128
    assert conf["loss"]["alpha_desc"] == 0.01
    assert conf["loss"]["alpha_uni_xy"] == 100.0
    assert conf["data"]["size"] == [120, 160]
    assert conf["train"]["out"] == "runs/unsuperpoint"
    with pytest.raises(ConfigError, match="loss.alpha_typo"):
        load_config(CONFIG, ["loss.alpha_typo=1"])
    with pytest.raises(ConfigError, match="model.width"):
        load_config(CONFIG, ["model.width=3"])

    step = build_train_step("unsuperpoint", conf["model"], conf["loss"])
    extractor = LearnedExtractor(step.model, "unsuperpoint", max_keypoints=20)
    assert extractor.net is step.model
    image = (np.random.default_rng(0).random((50, 70, 3)) * 255).astype(np.uint8)
    feats = extractor._extract(image)
    assert feats.keypoints.shape == (20, 2) and feats.descriptors.shape == (20, 128)
    assert (feats.keypoints[:, 0] <= 69).all() and (feats.keypoints[:, 1] <= 49).all()
