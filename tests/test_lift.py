"""LIFT: each stage's loss by hand, soft-argmax and GHH on hand-made maps, the quadruplets,
stage freezing through the trainer's stage machinery, gradients through the patch sampler,
and the sparse outputs."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from keypointlab.data.pairs import to_tensor
from keypointlab.data.samples import sample_photo
from keypointlab.geometry.groundtruth import HomographyGroundTruth
from keypointlab.losses import lift as ll
from keypointlab.models.lift import (
    LIFT,
    ghh,
    grey_uint8,
    sample_quadruplets,
    sift_keypoints,
    soft_argmax,
)
from keypointlab.training.optim import build_stage_optimizer, resolve_stages, stage_loss
from keypointlab.training.trainer import load_config

CONFIGS = Path(__file__).resolve().parents[1] / "keypointlab" / "configs"
TERMS = ("descriptor", "orientation", "detector")


def _pair(b: int = 2, tx: int = 3, ty: int = 2) -> tuple[dict, HomographyGroundTruth]:
    """Translated crops of a photo: view-1 pixel = view-0 pixel + (tx, ty)."""
    h, w = 72, 96
    base = to_tensor(sample_photo("astronaut", (h + 40, w + 40)))
    im0 = [base[:, 8 + 6 * i : 8 + 6 * i + h, 8 : 8 + w] for i in range(b)]
    im1 = [base[:, 8 + 6 * i - ty : 8 + 6 * i - ty + h, 8 - tx : 8 - tx + w] for i in range(b)]
    H = torch.tensor([[1.0, 0.0, tx], [0.0, 1.0, ty], [0.0, 0.0, 1.0]]).repeat(b, 1, 1)
    return {"image0": torch.stack(im0), "image1": torch.stack(im1), "H_0to1": H}, (
        HomographyGroundTruth(H)
    )


def _only(term: str, **extra: float) -> dict:
    return {**ll.DEFAULT_CONF, **{f"{t}_weight": float(t == term) for t in TERMS}, **extra}


# -- plain functions by hand ---------------------------------------------------------------
def test_soft_argmax_on_a_hand_made_map():
    s = torch.zeros(1, 3, 4)
    s[0, 2, 1] = math.log(3.0)  # weight 3 at x=1, y=2; weight 1 at the other 11 pixels
    xy = soft_argmax(s, beta=1.0)
    # x: (3 rows * (0+1+2+3) + 2 extra at x=1) / 14; y: (4 columns * (0+1+2) + 2 * 2) / 14
    torch.testing.assert_close(xy, torch.tensor([[20 / 14, 16 / 14]]))
    sharp = torch.zeros(2, 5, 7)
    sharp[0, 1, 5], sharp[1, 4, 0] = 1.0, 1.0
    torch.testing.assert_close(soft_argmax(sharp, 100.0), torch.tensor([[5.0, 1.0], [0.0, 4.0]]))
    flat = soft_argmax(torch.zeros(1, 5, 7), 10.0)  # no preference: the centre
    torch.testing.assert_close(flat, torch.tensor([[3.0, 2.0]]))


def test_ghh_by_hand():
    x = torch.tensor([1.0, 3.0, -2.0, 5.0, 0.5, -1.0, 4.0, 2.0]).view(1, 8)
    # two outputs of 2 sums x 2 maxes: +max(1, 3) - max(-2, 5); +max(.5, -1) - max(4, 2)
    torch.testing.assert_close(ghh(x, 2, 2), torch.tensor([[-2.0, -3.5]]))
    maps = x.view(1, 8, 1, 1).expand(1, 8, 2, 3)
    torch.testing.assert_close(ghh(maps, 4, 2), torch.full((1, 1, 2, 3), 3.0 - 5.0 + 0.5 - 4.0))


def test_descriptor_loss_with_hard_negative_mining_by_hand():
    d1 = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    d2 = torch.tensor([[0.8, 0.6], [0.0, 1.0], [0.6, 0.8]])
    allowed = torch.ones(3, 3, dtype=torch.bool)
    # positives: |(1, 0) - (.8, .6)| = sqrt(.4), then 0 and 0
    positive = math.sqrt(0.4) / 3
    # negatives d(P1_i, P2_j): (0,1) sqrt 2, (0,2) sqrt .8, (1,0) sqrt .8, (1,2) sqrt .4,
    # (2,0) sqrt .08, (2,1) sqrt .4; the hardest half: sqrt .08, sqrt .4, sqrt .4
    loss, m = ll.descriptor_loss(d1, d2, allowed, margin=1.0, hard_fraction=0.5)
    hinge = (1 - math.sqrt(0.08)) + 2 * (1 - math.sqrt(0.4))
    assert float(loss) == pytest.approx(positive + hinge / 3, rel=1e-5)
    assert float(m["positive"]) == pytest.approx(positive, rel=1e-5)
    # only the hardest negative (ceil(0.1 * 6) = 1)
    loss, _ = ll.descriptor_loss(d1, d2, allowed, margin=1.0, hard_fraction=0.1)
    assert float(loss) == pytest.approx(positive + 1 - math.sqrt(0.08), rel=1e-5)
    # pairs that may not be negatives (the same place) are left out: without (2, 0) the
    # hardest is sqrt .4 of (1, 2)
    allowed[2, 0] = False
    loss, m = ll.descriptor_loss(d1, d2, allowed, margin=1.0, hard_fraction=0.1)
    assert float(loss) == pytest.approx(positive + 1 - math.sqrt(0.4), rel=1e-5)
    # every positive is nearer than its row's nearest allowed negative (sqrt .4 < sqrt .8)
    assert float(m["descriptor_accuracy"]) == pytest.approx(1.0)
    # a margin below every negative distance: the positives alone
    loss, _ = ll.descriptor_loss(d1, d2, allowed, margin=0.2, hard_fraction=1.0)
    assert float(loss) == pytest.approx(positive, rel=1e-5)


def test_orientation_loss_by_hand():
    d1 = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    d2 = torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    assert float(ll.orientation_loss(d1, d2)) == pytest.approx(math.sqrt(2) / 2, rel=1e-5)


def test_detector_loss_by_hand():
    smap = torch.tensor([[[0.0, 1.0]]])
    assert float(ll.log_mean_exp(smap, 1.0)) == pytest.approx(math.log((1 + math.e) / 2))
    # a strong strength tends to the maximum, a weak one to the mean
    assert float(ll.log_mean_exp(smap, 1000.0)) == pytest.approx(1.0, abs=1e-3)
    assert float(ll.log_mean_exp(smap, 1e-4)) == pytest.approx(0.5, abs=1e-3)
    s1, s2, s3 = torch.tensor([0.5]), torch.tensor([2.0]), torch.tensor([0.0])
    s4 = torch.tensor([-0.5])
    # positives: (1 - .5)^2, 0, 1 -> mean 1.25 / 3; negative: (1 - .5)^2 = .25; half each
    expect_class = 0.5 * 1.25 / 3 + 0.5 * 0.25
    assert float(ll.class_loss(torch.cat([s1, s2, s3]), s4)) == pytest.approx(expect_class)
    d1, d2 = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    loss, m = ll.detector_loss((s1, s2, s3, s4), d1, d2, gamma=0.5)
    assert float(loss) == pytest.approx(0.5 * expect_class + math.sqrt(2), rel=1e-5)
    assert float(m["pair"]) == pytest.approx(math.sqrt(2), rel=1e-5)


# -- quadruplets -----------------------------------------------------------------------------
def test_quadruplets_are_repeatable_sift_keypoints():
    batch, gt = _pair()
    net = LIFT(LIFT.tiny_conf)
    lo, hi = net._support_range()
    conf = {**ll.DEFAULT_CONF, "pairs_per_image": 8}
    q = sample_quadruplets(batch["image0"], batch["image1"], gt, 3.0, (lo, hi), conf, step=5)
    k = len(q["b"])
    assert k >= 4 and set(q["b"].tolist()) <= {0, 1}
    assert all(q[n].shape == (k, 2) for n in ("xy1", "xy2", "xy3", "xy4"))
    assert all(q[n].shape == (k,) for n in ("s1", "s2", "s3", "s4", "a1", "a2"))
    # the view-1 keypoint is where the translation puts the view-0 one, at a consistent size
    shift = torch.tensor([3.0, 2.0]).expand(k, 2)
    torch.testing.assert_close(q["xy2"] - q["xy1"], shift, atol=conf["match_px"], rtol=0)
    assert ((q["s1"] >= lo - 1e-4) & (q["s1"] <= hi + 1e-4)).all()
    ratio = q["s2"] / q["s1"]
    assert (ratio <= 1.5 + 1e-5).all() and (ratio >= 1 / 1.5 - 1e-5).all()
    # P4 is far from every SIFT keypoint of its view 0
    for i in range(k):
        kp = torch.from_numpy(sift_keypoints(grey_uint8(batch["image0"][q["b"][i]]), 300)[:, :2])
        assert float((kp.float() - q["xy4"][i]).norm(dim=1).min()) >= conf["negative_px"] - 1e-3
    again = sample_quadruplets(batch["image0"], batch["image1"], gt, 3.0, (lo, hi), conf, 5)
    assert all(torch.equal(q[n], again[n]) for n in q)  # a pure function of the step


# -- networks and gradients --------------------------------------------------------------------
def test_output_shapes():
    torch.manual_seed(0)
    net = LIFT(LIFT.tiny_conf).eval()
    image = torch.rand(2, 3, 40, 56)
    out = net({"image": image})
    assert out["scores"].shape == (2, 3, 40, 56) and out["grey"].shape == (2, 1, 40, 56)
    expect = torch.tensor([6.0, 6 / 0.7071, 12.0])
    torch.testing.assert_close(out["supports"], expect, atol=0.2, rtol=0)
    k = LIFT.tiny_conf["det_kernel"] // 2
    assert torch.isinf(out["scores"][:, 0, :k]).all()
    assert torch.isfinite(out["scores"][:, 0, k:-k, k:-k]).all()
    patches = torch.rand(5, 1, 16, 16)
    d = net.describe_patches(patches)
    assert d.shape == (5, 8)
    torch.testing.assert_close(d.norm(dim=1), torch.ones(5))
    assert net.estimate_orientation(torch.rand(5, 1, 8, 8)).shape == (5,)
    default = LIFT()
    assert default.describe_patches(torch.rand(3, 1, 64, 64)).shape == (3, 128)
    assert default.score_map(torch.rand(3, 1, 24, 24)).shape == (3, 14, 14)
    assert default.estimate_orientation(torch.rand(3, 1, 32, 32)).shape == (3,)


def test_locate_maps_the_soft_argmax_to_image_pixels():
    """A detector whose score is the pixel value finds a bright dot inside the patch."""
    net = LIFT({**LIFT.tiny_conf, "com_strength": 50.0})
    k = LIFT.tiny_conf["det_kernel"]
    with torch.no_grad():
        net.detector.weight.zero_()
        net.detector.bias.zero_()
        net.detector.weight[:2, 0, k // 2, k // 2] = 1.0  # the first sum's two pieces
    grey = torch.zeros(1, 1, 60, 80)
    grey[0, 0, 27, 44] = 1.0
    grey[0, 0, 27, 45] = 1.0  # a dot between x = 44 and 45 at y = 27
    xy = torch.tensor([[40.0, 30.0]])
    support = torch.tensor([12.0])  # the detector patch: 24 pixels at 12 samples, step 2
    _, located = net.locate(grey, xy, support, torch.zeros(1, dtype=torch.long))
    torch.testing.assert_close(located, torch.tensor([[44.5, 27.0]]), atol=0.6, rtol=0)


def _grad_norms(net: LIFT, term: str) -> dict[str, float]:
    net.zero_grad()
    batch, gt = _pair()
    losses, _ = net.loss(batch, gt, _only(term, pairs_per_image=6), step=0)
    assert torch.isfinite(losses["total"]) and float(losses[term]) > 0
    losses["total"].backward()
    return {name: _norm(getattr(net, name)) for name in TERMS}


def _norm(module: torch.nn.Module) -> float:
    return sum(float(p.grad.abs().sum()) for p in module.parameters() if p.grad is not None)


def test_each_term_reaches_only_its_network_through_the_sampler():
    torch.manual_seed(0)
    net = LIFT(LIFT.tiny_conf).train()
    g = _grad_norms(net, "descriptor")
    assert g["descriptor"] > 0 and g["orientation"] == 0 and g["detector"] == 0
    # the orientation loss reaches the estimator only through the angle the sampler turns
    # the patches by (the descriptor is frozen)
    g = _grad_norms(net, "orientation")
    assert g["orientation"] > 0 and g["descriptor"] == 0 and g["detector"] == 0
    # the detector loss: soft-argmax location -> sampler -> frozen orientation + descriptor
    g = _grad_norms(net, "detector")
    assert g["detector"] > 0 and g["descriptor"] == 0 and g["orientation"] == 0
    # the pair term alone (no classification) still trains the detector, through the crop
    net.zero_grad()
    batch, gt = _pair()
    losses, _ = net.loss(batch, gt, _only("detector", gamma=0.0, pairs_per_image=6), 0)
    losses["total"].backward()
    assert float(net.detector.weight.grad.abs().sum()) > 0


def test_overfitting_one_batch_drives_each_stage_loss_down():
    torch.manual_seed(0)
    net = LIFT(LIFT.tiny_conf).train()
    batch, gt = _pair()
    for term in TERMS:  # in LIFT's order, each on top of the previous
        opt = torch.optim.Adam(getattr(net, term).parameters(), 3e-3)
        values = []
        for _ in range(12):
            losses, _ = net.loss(batch, gt, _only(term, pairs_per_image=8), step=0)
            opt.zero_grad()
            losses["total"].backward()
            opt.step()
            values.append(float(losses[term]))
        assert values[-1] < (0.5 if term == "descriptor" else 0.95) * values[0], (term, values)


def test_stage_freezing_keeps_frozen_parameters_bit_identical():
    conf = load_config(CONFIGS / "lift.yaml", [f"model={LIFT.tiny_conf}".replace("'", "")])
    stages = resolve_stages(conf["train"]["stages"], conf["train"]["steps"])
    assert [s.name for s in stages] == list(TERMS)
    torch.manual_seed(0)
    net = LIFT(conf["model"]).train()
    batch, gt = _pair()
    for stage, term in zip(stages, TERMS, strict=True):
        opt = build_stage_optimizer(net, conf["optim"], stage)
        loss_conf = {**stage_loss(conf["loss"], stage), "pairs_per_image": 6}
        before = {n: p.detach().clone() for n, p in net.named_parameters()}
        losses, _ = net.loss(batch, gt, loss_conf, step=stage.start)
        assert set(losses) == {"total", term}  # the stage computes its own term only
        opt.zero_grad(set_to_none=True)
        losses["total"].backward()
        opt.step()
        for name, p in net.named_parameters():
            if name.startswith(term + "."):
                assert p.requires_grad
            else:
                assert not p.requires_grad and torch.equal(p, before[name]), (stage.name, name)
        trained = [n for n, _ in net.named_parameters() if n.startswith(term + ".")]
        assert any(not torch.equal(net.get_parameter(n), before[n]) for n in trained)


def test_configs_load_with_three_stages_in_time():
    conf = load_config(CONFIGS / "lift.yaml")
    t = conf["train"]
    assert 0 < t["max_minutes"] <= 55 and conf["eval"]["data"] == "holdout"
    assert [s["name"] for s in t["stages"]] == list(TERMS)
    paper = load_config(CONFIGS / "lift_paper.yaml")
    assert paper["model"]["desc_channels"] == [32, 64, 128] and paper["model"]["det_kernel"] == 25
    assert LIFT(paper["model"]).describe_patches(torch.rand(2, 1, 64, 64)).shape == (2, 128)


# -- inference -------------------------------------------------------------------------------
def test_detect_gives_scales_orientations_and_descriptors():
    torch.manual_seed(1)
    net = LIFT(LIFT.tiny_conf).eval()
    batch, _ = _pair(1)
    image = batch["image0"]
    with torch.no_grad():
        det, ctx = net.detect(image)
        desc = net.describe(image, ctx, det)
    n = len(det["keypoints"])
    assert n > 0 and desc.shape == (n, 8)
    torch.testing.assert_close(desc.norm(dim=1), torch.ones(n))
    assert set(det["scales"].tolist()) <= set(net({"image": image})["supports"].tolist())
    assert det["orientations"].abs().max() <= math.pi and det["orientations"].abs().max() > 0
    assert torch.all(det["scores"][:-1] >= det["scores"][1:])  # best first
    # the upright ablation: same keypoints, angle 0
    net.conf["learned_orientation"] = False
    with torch.no_grad():
        flat, _ = net.detect(image)
    torch.testing.assert_close(flat["keypoints"], det["keypoints"])
    assert (flat["orientations"] == 0).all()
    # SIFT's keypoints feeding the learned orientation and descriptor
    net.conf.update(learned_orientation=True, detector="sift")
    with torch.no_grad():
        sift, ctx = net.detect(image)
        desc = net.describe(image, ctx, sift)
    ref = sift_keypoints(grey_uint8(image[0]), net.conf["max_detections"])
    np.testing.assert_allclose(sift["keypoints"].numpy(), ref[:, :2], atol=1e-4)
    np.testing.assert_allclose(sift["scales"].numpy(), 3.0 * ref[:, 2], rtol=1e-5)
    assert desc.shape == (len(ref), 8) and sift["orientations"].abs().max() > 0


def test_config_errors_name_the_setting():
    with pytest.raises(ValueError, match="detector"):
        LIFT({"detector": "harris"})
    with pytest.raises(ValueError, match="det_kernel"):
        LIFT({"det_kernel": 10})
    with pytest.raises(ValueError, match="decreasing"):
        LIFT({"pyramid": [0.5, 1.0]})
    with pytest.raises(ValueError, match="patch_size"):
        LIFT({"patch_size": 16})
    with pytest.raises(ValueError, match="ground truth"):
        LIFT(LIFT.tiny_conf).loss(_pair()[0], None, ll.DEFAULT_CONF, 0)


def test_quadruplets_from_depth_and_pose():
    """The same sampling through DepthGroundTruth: a fronto-parallel plane 2 m away and a
    camera shift that moves every pixel by (3, 2), as the homography of :func:`_pair`."""
    from keypointlab.geometry.groundtruth import DepthGroundTruth

    batch, hgt = _pair(1)
    h, w = batch["image0"].shape[-2:]
    f, z = 100.0, 2.0
    K = torch.tensor([[f, 0.0, w / 2], [0.0, f, h / 2], [0.0, 0.0, 1.0]])[None]
    T = torch.eye(4)[None].clone()
    T[0, :2, 3] = torch.tensor([3.0, 2.0]) * z / f
    depth = torch.full((1, h, w), z)
    dgt = DepthGroundTruth(depth, depth, K, K, T)
    lo, hi = LIFT(LIFT.tiny_conf)._support_range()
    conf = {**ll.DEFAULT_CONF, "pairs_per_image": 8}
    a = sample_quadruplets(batch["image0"], batch["image1"], dgt, 3.0, (lo, hi), conf, 0)
    b = sample_quadruplets(batch["image0"], batch["image1"], hgt, 3.0, (lo, hi), conf, 0)
    assert len(a["b"]) >= 2 and all(torch.allclose(a[k].float(), b[k].float()) for k in a)
