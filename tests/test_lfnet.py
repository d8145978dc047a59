"""LF-Net: scale-space soft NMS on hand-made volumes, each loss by hand, the two branches'
gradients, and the sparse outputs."""

from __future__ import annotations

import math

import pytest
import torch

from keypointlab.geometry.groundtruth import HomographyGroundTruth
from keypointlab.losses import lfnet as lf
from keypointlab.models.lfnet import LFNet, scale_factors, soft_nms_3d


def test_scale_factors_are_the_references_five():
    f = scale_factors(5, 1 / math.sqrt(2), math.sqrt(2))
    assert f == pytest.approx([1.4142, 1.1892, 1.0, 0.8409, 0.7071], abs=1e-4)


def test_soft_nms_over_space_and_scale_by_hand():
    torch.manual_seed(0)
    logits = 0.1 * torch.randn(1, 3, 7, 7)
    logits[0, 1, 3, 3] = 3.0  # one strong response at the middle scale
    factors = torch.tensor([1.5, 1.0, 0.5])
    k, window = 2.0, 3
    score, scale = soft_nms_3d(logits, factors, window, k, 100.0)
    # p_s(x) = exp(k l_s(x)) / sum over the 3 scales and the 3x3 pixels around x (zeros outside)
    e = torch.exp(k * logits[0])
    x, y = 3, 3
    p = e[:, y, x] / e[:, y - 1 : y + 2, x - 1 : x + 2].sum()
    w = torch.softmax(100 * p, 0)
    assert float(score[0, y, x]) == pytest.approx(float((w * p).sum()), rel=1e-5)
    assert float(scale[0, y, x]) == pytest.approx(float((w * factors).sum()), rel=1e-5)
    assert float(scale[0, y, x]) == pytest.approx(1.0, abs=1e-3)  # the middle scale wins
    # at a corner the window is cut by the image: only the pixels inside count
    p00 = e[:, 0, 0] / e[:, 0:2, 0:2].sum()
    w00 = torch.softmax(100 * p00, 0)
    assert float(score[0, 0, 0]) == pytest.approx(float((w00 * p00).sum()), rel=1e-5)
    # the peak is the score map's maximum, and its neighbours are suppressed
    assert int(score[0].argmax()) == 3 * 7 + 3
    assert float(score[0, 3, 4]) < 0.1 * float(score[0, 3, 3])


def test_clean_target_keeps_the_top_k_nms_peaks_as_unit_gaussians():
    m = torch.zeros(1, 12, 12)
    m[0, 3, 3], m[0, 3, 4], m[0, 8, 9] = 0.9, 0.5, 0.7  # (3, 4) is suppressed by (3, 3)
    known = torch.ones(1, 12, 12, dtype=torch.bool)
    t = lf.clean_target(m, known, k=5, nms=3, window=5, sigma=1.0)
    assert float(t[0, 3, 3]) == 1.0 and float(t[0, 8, 9]) == 1.0
    assert float(t[0, 3, 4]) == pytest.approx(math.exp(-0.5))  # the Gaussian of (3, 3) only
    assert float(t[0, 0, 11]) == 0.0
    top1 = lf.clean_target(m, known, k=1, nms=3, window=5, sigma=1.0)
    assert float(top1[0, 8, 9]) == 0.0 and float(top1[0, 3, 3]) == 1.0
    known[0, 3, 3] = False  # an unknown pixel gives no peak
    t = lf.clean_target(m, known, k=5, nms=3, window=5, sigma=1.0)
    assert float(t[0, 3, 4]) == 1.0 and float(t[0, 3, 3]) == pytest.approx(math.exp(-0.5))
    # two peaks closer than the window add up and are clipped at 1
    m2 = torch.zeros(1, 12, 12)
    m2[0, 5, 3], m2[0, 5, 6] = 0.6, 0.6
    t2 = lf.clean_target(m2, torch.ones_like(known), k=5, nms=3, window=7, sigma=2.0)
    assert float(t2.max()) == 1.0


def test_orientation_and_scale_losses_by_hand():
    a = torch.tensor([[0.7, -2.0]])
    ori = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    other = lf.rotate(ori, a)  # the other view's orientations, turned by the warp
    known = torch.ones(1, 2, dtype=torch.bool)
    assert float(lf.orientation_loss(ori, other, a, known)) == pytest.approx(0.0, abs=1e-12)
    # without the warp's turn: |o - R(a) o|^2 = 2 - 2 cos a, averaged
    expect = (2 - 2 * math.cos(0.7) + 2 - 2 * math.cos(-2.0)) / 2
    assert float(lf.orientation_loss(ori, other, torch.zeros_like(a), known)) == pytest.approx(
        expect, rel=1e-6
    )
    s = torch.tensor([[1.0, 1.2]])
    bounds = (0.7, 1.4)
    # the other view is zoomed 2x: its scale 2 s matches
    assert float(lf.scale_loss(s, 2 * s, torch.full_like(s, 2.0), known, bounds)) == pytest.approx(
        0.0, abs=1e-12
    )
    # no zoom: target log(2 s) is clipped to log 1.4
    expect = ((math.log(1.4) - 0) ** 2 + (math.log(1.4) - math.log(1.2)) ** 2) / 2
    got = lf.scale_loss(s, 2 * s, torch.ones_like(s), known, bounds)
    assert float(got) == pytest.approx(expect, rel=1e-6)
    # masked points do not count
    half = torch.tensor([[True, False]])
    got = lf.scale_loss(s, 2 * s, torch.ones_like(s), half, bounds)
    assert float(got) == pytest.approx(math.log(1.4) ** 2, rel=1e-6)


def test_triplet_loss_by_hand_with_the_geometric_exclusion():
    anchor = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    positive = torch.tensor([[0.8, 0.6], [0.0, 1.0], [0.6, 0.8]])
    xy = torch.tensor([[0.0, 0.0], [100.0, 0.0], [5.0, 0.0]])  # keypoints 0 and 2 are close
    valid = torch.ones(3, dtype=torch.bool)
    conf = {**lf.DEFAULT_CONF, "geom_thresh": 10.0, "pickup_start": 1, "pickup_min": 1}
    loss, m = lf.triplet_loss(anchor, positive, xy, valid, conf, step=0)
    d = torch.cdist(anchor, positive) ** 2
    # one candidate each (the nearest far one): 0 -> 1, 1 -> nearest of {0, 2}, 2 -> 1
    neg1 = min(float(d[1, 0]), float(d[1, 2]))
    expect = (
        max(0, 1 + float(d[0, 0]) - float(d[0, 1]))
        + max(0, 1 + float(d[1, 1]) - neg1)
        + max(0, 1 + float(d[2, 2]) - float(d[2, 1]))
    ) / 3
    assert float(loss) == pytest.approx(expect, rel=1e-5)
    assert float(m["positive"]) == pytest.approx(float(d.diagonal().mean()), rel=1e-5)
    # the negative pool shrinks by 0.9 per 1000 steps down to its minimum
    assert lf.pickup(0, lf.DEFAULT_CONF) == 64 and lf.pickup(1000, lf.DEFAULT_CONF) == 57
    assert lf.pickup(10**6, lf.DEFAULT_CONF) == 5
    # fewer than two keypoints: a zero that keeps the graph
    z, _ = lf.triplet_loss(anchor, positive, xy, torch.tensor([True, False, False]), conf, 0)
    assert float(z) == 0.0


def _pair(b: int = 2, h: int = 48, w: int = 64) -> tuple[dict, HomographyGroundTruth]:
    torch.manual_seed(0)
    img0 = torch.rand(b, 3, h, w)
    H = torch.tensor([[1.0, 0.0, 2.0], [0.0, 1.0, 1.0], [0.0, 0.0, 1.0]]).repeat(b, 1, 1)
    img1 = torch.roll(img0, shifts=(1, 2), dims=(2, 3))
    return {"image0": img0, "image1": img1}, HomographyGroundTruth(H)


def _grads(net: LFNet, weights: dict) -> tuple[float, float, float]:
    net.zero_grad()
    batch, gt = _pair()
    conf = {
        **net.loss_defaults,
        "train_top_k": 16,
        **{f"{k}_weight": 0.0 for k in ("score", "pair", "orientation", "scale", "triplet")},
        **weights,
    }
    losses, _ = net.loss(batch, gt, conf, step=3)
    losses["total"].backward()

    def norm(module: torch.nn.Module) -> float:
        return sum(float(p.grad.abs().sum()) for p in module.parameters() if p.grad is not None)

    return norm(net.trunk), norm(net.ori_head), norm(net.descriptor)


def test_two_branches_train_the_detector_and_the_descriptor_apart():
    torch.manual_seed(0)
    net = LFNet(LFNet.tiny_conf).train()
    trunk, ori, desc = _grads(net, {"pair_weight": 1.0})
    # the pair loss reaches the detector through the patch sampler (location, scale and
    # orientation), not the frozen descriptor
    assert trunk > 0 and ori > 0 and desc == 0
    trunk, ori, desc = _grads(net, {"triplet_weight": 1.0})
    assert trunk == 0 and ori == 0 and desc > 0
    trunk, ori, desc = _grads(net, {"score_weight": 1.0})
    assert trunk > 0 and desc == 0
    # the frozen pass leaves the descriptor's batch-norm statistics alone
    bn = net.descriptor[1]
    before = bn.running_mean.clone()
    patches = torch.rand(6, 1, 8, 8, requires_grad=True)
    out = net.describe_patches(patches, frozen=True)
    assert torch.equal(bn.running_mean, before)
    out.sum().backward()
    assert patches.grad is not None and float(patches.grad.abs().sum()) > 0
    assert all(
        p.grad is None or float(p.grad.abs().sum()) == 0 for p in net.descriptor.parameters()
    )
    net.describe_patches(patches.detach())
    assert not torch.equal(bn.running_mean, before)


def test_losses_run_and_are_finite_on_a_shifted_pair():
    net = LFNet(LFNet.tiny_conf).train()
    batch, gt = _pair()
    losses, metrics = net.loss(batch, gt, {**net.loss_defaults, "train_top_k": 16}, step=0)
    assert set(losses) == {"total", "score", "orientation", "scale", "pair", "triplet"}
    assert all(torch.isfinite(v) for v in losses.values())
    assert float(metrics["keypoints_used"]) > 0
    with pytest.raises(ValueError, match="ground truth"):
        net.loss(batch, None, net.loss_defaults, 0)


def test_detect_gives_scales_orientations_and_descriptors():
    torch.manual_seed(1)
    net = LFNet(LFNet.tiny_conf).eval()
    image = torch.rand(1, 3, 40, 56)
    with torch.no_grad():
        det, ctx = net.detect(image)
        desc = net.describe(image, ctx, det)
    n = len(det["keypoints"])
    assert n > 0 and desc.shape == (n, 8)
    torch.testing.assert_close(desc.norm(dim=1), torch.ones(n))
    f = scale_factors(3, 0.7071, 1.4142)
    ps = LFNet.tiny_conf["patch_size"]
    assert det["scales"].min() >= ps * min(f) - 1e-4 and det["scales"].max() <= ps * max(f) + 1e-4
    assert det["orientations"].abs().max() <= math.pi
    border = LFNet.tiny_conf["border"]
    kp = det["keypoints"]
    assert kp.min() >= border - 4.5 and kp[:, 0].max() <= 55 - border + 4.5
    assert torch.all(det["scores"][:-1] >= det["scores"][1:])  # best first
    # the upright single-scale ablation: same keypoints, orientation 0 and scale 1
    net.conf.update(learned_orientation=False, learned_scale=False)
    with torch.no_grad():
        flat, _ = net.detect(image)
    torch.testing.assert_close(flat["keypoints"], det["keypoints"])
    assert (flat["orientations"] == 0).all() and (flat["scales"] == ps).all()


def test_config_errors_name_the_setting():
    with pytest.raises(ValueError, match="kernel odd"):
        LFNet({"kernel": 4})
    with pytest.raises(ValueError, match="min_scale"):
        LFNet({"min_scale": 2.0, "max_scale": 1.0})
    with pytest.raises(ValueError, match="patch_size"):
        LFNet({"patch_size": 12})
