"""KP2D: KeyPointNet outputs and cross-border keypoints, gradients through the whole method
(IO-Net included), each loss term on hand-made cases, the descriptor warm-up switch and the
training step index that drives it."""

from __future__ import annotations

import math

import pytest
import torch

from keypointlab.config import ConfigError
from keypointlab.data.pairs import to_tensor
from keypointlab.data.samples import sample_photo
from keypointlab.geometry.keypoints import cell_centers
from keypointlab.losses import kp2d as L
from keypointlab.models.base import get_method, split_views
from keypointlab.models.kp2d import KP2D, IONet, KeyPointNet
from keypointlab.training.step import build_train_step

torch.set_num_threads(1)

TINY = {"channels": [8, 8, 16, 16], "descriptor_dim": 16, "upsample_width": 8}
TINY_KP2D = {"keypoint_net": TINY, "io_width": 16, "io_blocks": 2}


def _translated_pairs(tx: int, ty: int, n: int = 2, size: tuple[int, int] = (64, 96)) -> dict:
    """View 1 is view 0 moved by ``(tx, ty)`` pixels (both crops of one photo, so no border
    fill): ``image1[y, x] = image0[y - ty, x - tx]`` and ``H_0to1`` is that translation."""
    h, w = size
    base = to_tensor(sample_photo("astronaut", (h + 32, w + 32)))
    im0, im1 = [], []
    for i in range(n):
        y, x = 8 + 8 * i, 8 + 4 * i
        im0.append(base[:, y : y + h, x : x + w])
        im1.append(base[:, y - ty : y - ty + h, x - tx : x - tx + w])
    H = torch.tensor([[1.0, 0.0, tx], [0.0, 1.0, ty], [0.0, 0.0, 1.0]])
    return {
        "image0": torch.stack(im0),
        "image1": torch.stack(im1),
        "H_0to1": H.expand(n, 3, 3).clone(),
    }


def _set_location_shift(net: KeyPointNet, sx: float, sy: float) -> None:
    """Make the location head output the constant shift ``tanh = (sx, sy)`` everywhere."""
    last = net.location_head[-1]
    torch.nn.init.zeros_(last.weight)
    with torch.no_grad():
        last.bias.copy_(torch.tensor([math.atanh(sx), math.atanh(sy)]))


# --------------------------------------------------------------------------- model


@pytest.mark.parametrize("upsample", [True, False])
def test_keypointnet_shapes_keys_and_ranges(upsample):
    torch.manual_seed(0)
    net = KeyPointNet({**TINY, "do_upsample": upsample}).eval()
    with torch.no_grad():
        out = net({"image": torch.rand(2, 3, 64, 96)})
    assert set(out) == {"scores", "keypoints", "descriptors"}
    assert out["scores"].shape == (2, 1, 8, 12)
    assert out["keypoints"].shape == (2, 2, 8, 12)
    expected = (2, 16, 16, 24) if upsample else (2, 16, 8, 12)
    assert out["descriptors"].shape == expected
    for v in out.values():
        assert v.dtype == torch.float32 and torch.isfinite(v).all()
    assert out["scores"].min() >= 0 and out["scores"].max() <= 1
    kp = out["keypoints"]
    assert kp[:, 0].min() >= 0 and kp[:, 0].max() <= 95
    assert kp[:, 1].min() >= 0 and kp[:, 1].max() <= 63
    # default cross_ratio 2: at most 2 * (8 - 1) / 2 = 7 px from the cell centre
    assert ((kp - cell_centers(8, 12, 8)).abs() <= 7 + 1e-4).all()
    # grey input is accepted; sizes that are not a multiple of 8 are rejected
    with torch.no_grad():
        assert net({"image": torch.rand(1, 1, 64, 96)})["scores"].shape == (1, 1, 8, 12)
    with pytest.raises(ValueError, match="multiple of 8"):
        net({"image": torch.rand(1, 3, 60, 96)})


def test_keypointnet_fast_options_keep_the_output_shapes():
    """The shipped config's CPU options (strided stem, shared head) change no shape."""
    net = KeyPointNet({**TINY, "stem_stride": 2, "shared_head": True}).eval()
    with torch.no_grad():
        out = net({"image": torch.rand(1, 3, 64, 96)})
    assert out["scores"].shape == (1, 1, 8, 12)
    assert out["keypoints"].shape == (1, 2, 8, 12)
    assert out["descriptors"].shape == (1, 16, 16, 24)
    with pytest.raises(ValueError, match="stem_stride"):
        KeyPointNet({**TINY, "stem_stride": 4})


def test_cross_border_keypoints():
    """A constant head output tanh = (0.9, -0.6) moves every keypoint by that fraction of
    ``ratio * (cell - 1) / 2`` px: ratio = cross_ratio (2) with do_cross, else 1."""
    image = torch.rand(1, 3, 64, 96)
    centers = cell_centers(8, 12, 8)
    cols = torch.arange(12).expand(8, 12)
    rows = torch.arange(8)[:, None].expand(8, 12)

    cross = KeyPointNet({**TINY, "do_cross": True}).eval()
    _set_location_shift(cross, 0.9, -0.6)
    with torch.no_grad():
        kp = cross({"image": image})["keypoints"][0]
    # x: centre + 0.9 * 7 = centre + 6.3 (last column clamped to 95); y: centre - 4.2, >= 0
    torch.testing.assert_close(kp[0], (centers[0] + 6.3).clamp(max=95))
    torch.testing.assert_close(kp[1], (centers[1] - 4.2).clamp(min=0))
    # 6.3 px right of the centre (3.5 px from the cell's right edge) leaves the cell
    assert (kp[0].floor().long() // 8 == cols + 1)[:, :-1].all()
    assert (kp[1].floor().long() // 8 == rows - 1)[1:].all()

    inside = KeyPointNet({**TINY, "do_cross": False}).eval()
    _set_location_shift(inside, 0.9, -0.6)
    with torch.no_grad():
        kp = inside({"image": image})["keypoints"][0]
    torch.testing.assert_close(kp[0], centers[0] + 0.9 * 3.5)
    torch.testing.assert_close(kp[1], centers[1] - 0.6 * 3.5)
    assert torch.equal(kp[0].floor().long() // 8, cols)
    assert torch.equal(kp[1].floor().long() // 8, rows)
    # even a saturated head stays inside the cell without do_cross
    _set_location_shift(inside, 1.0 - 1e-6, -(1.0 - 1e-6))
    with torch.no_grad():
        kp = inside({"image": image})["keypoints"][0]
    assert torch.equal(kp[0].floor().long() // 8, cols)
    assert torch.equal(kp[1].floor().long() // 8, rows)


def test_ionet_output_shape():
    net = IONet(5, 16, 2).eval()
    with torch.no_grad():
        assert net(torch.randn(3, 5, 7)).shape == (3, 7)


# --------------------------------------------------------------------------- training step


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    assert get_method("kp2d") is KP2D
    step = build_train_step("kp2d", TINY_KP2D, None)
    assert step.model.io_net is not None
    batch = _translated_pairs(3, 2)
    with torch.no_grad():  # extraction runs KeyPointNet alone (not IO-Net)
        image = batch["image0"][:1]
        det, desc_map = step.model.eval().detect(image)
        ref = step.model.keypoint_net({"image": image})
        assert torch.equal(det["scores"], ref["scores"].flatten())
        assert torch.equal(desc_map, ref["descriptors"])
    step.model.train()
    losses, metrics = step(batch)
    assert set(losses) == {"location", "descriptor", "score", "io", "total"}
    assert torch.isfinite(losses["total"])
    # the IO-Net term is only trained with more than 10 inlier pairs in the batch: make sure
    # this batch is above that, otherwise IO-Net would get all-zero gradients
    k = min(L.DEFAULT_CONF["io_top_k"], 8 * 12)
    assert float(metrics["io_inliers"]) * 2 * k > 10
    assert losses["io"].item() > 0
    # the IO-Net term alone trains KeyPointNet through the pairs' coordinates (location
    # head) and descriptor distances (descriptor decoder)
    net = step.model.keypoint_net
    heads = [net.location_head[-1].weight, net.desc_d.weight]
    grads = torch.autograd.grad(losses["io"], heads, retain_graph=True, allow_unused=True)
    assert all(g is not None and g.abs().sum() > 0 for g in grads)
    losses["total"].backward()
    params = dict(step.named_parameters())
    assert any(n.startswith("model.io_net.") for n in params)
    assert any(n.startswith("model.keypoint_net.") for n in params)
    bad = [n for n, p in params.items() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not bad
    # every parameter (KeyPointNet heads, descriptor decoder and IO-Net alike) is used by some
    # term on a translated pair, so none should get an exactly zero gradient; Dropout2d has
    # no parameters, so it cannot leave one without a gradient
    zero = [n for n, p in params.items() if p.grad.abs().sum() == 0]
    assert not zero


def test_unknown_loss_key_fails_when_building_the_method():
    with pytest.raises(ConfigError, match="descriptor_warmup_step"):
        build_train_step("kp2d", TINY_KP2D, {"descriptor_warmup_step": 5})


def test_train_step_passes_its_step_index():
    torch.manual_seed(0)
    step = build_train_step("kp2d", TINY_KP2D, {"descriptor_warmup_steps": 5}).eval()
    assert step.step_index == 0
    batch = _translated_pairs(3, 2)
    with torch.no_grad():
        p0, p1 = split_views(step.model.keypoint_net, batch)
        ref = {
            name: L.kp2d_loss(p0, p1, batch["H_0to1"], (64, 96), None, {"descriptor_loss": name})[
                0
            ]["descriptor"]
            for name in ("infonce", "triplet")
        }
        assert float(ref["infonce"]) != pytest.approx(float(ref["triplet"]), rel=1e-3)
        seen = {}
        for index in (0, 4, 5, 100):
            step.step_index = index
            seen[index] = step(batch)[0]["descriptor"]
    torch.testing.assert_close(seen[0], ref["infonce"])
    torch.testing.assert_close(seen[4], ref["infonce"])
    torch.testing.assert_close(seen[5], ref["triplet"])
    torch.testing.assert_close(seen[100], ref["triplet"])


# --------------------------------------------------------------------------- loss terms


def test_location_loss():
    dist = torch.tensor([[1.0, 2.0, 4.0], [8.0, 3.0, 6.0]], requires_grad=True)
    valid = torch.tensor([[True, False, True], [False, True, False]])
    loss = L.location_loss(dist, valid)
    assert loss.item() == pytest.approx((1 + 4 + 3) / 3)
    loss.backward()
    torch.testing.assert_close(dist.grad, valid.float() / 3)
    # no valid entry: exactly 0, still part of the graph, with zero (not NaN) gradients
    dist.grad = None
    loss = L.location_loss(dist, torch.zeros_like(valid))
    assert loss.item() == 0.0
    loss.backward()
    torch.testing.assert_close(dist.grad, torch.zeros_like(dist))


def test_within_relax_field_is_per_axis():
    # p1 is 5.7 px from p0 (Euclidean) but only 4 px away along each axis: within 4 px;
    # p2 is 5 px from p0 in y: outside; p1 and p2 differ by 1 px per axis: within
    positions = torch.tensor([[[0.0, 0.0], [4.0, 4.0], [3.0, 5.0]]])
    near = L.within_relax_field(positions, 4.0)
    expected = torch.tensor([[[True, True, False], [True, True, True], [False, True, True]]])
    assert torch.equal(near, expected)
    assert not L.within_relax_field(positions, 3.9)[0, 0, 1]


# unit descriptors with known distances (D = 3)
A = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.6, 0.8, 0.0]]])
P = torch.tensor([[[0.8, 0.6, 0.0], [0.6, 0.8, 0.0], [0.0, 0.0, 1.0]]])
FAR = torch.tensor([[[10.0, 10.0], [50.0, 10.0], [10.0, 50.0]]])
R4, R8, R2 = math.sqrt(0.4), math.sqrt(0.8), math.sqrt(2.0)
# distances |a_i - p_j|: a0 -> (R4, R8, R2), a1 -> (R8, R4, R2), a2 -> (sqrt(0.08), 0, R2)


def test_hand_made_distances():
    expected = torch.tensor([[R4, R8, R2], [R8, R4, R2], [math.sqrt(0.08), 0.0, R2]])
    torch.testing.assert_close(torch.cdist(A, P)[0], expected)


def test_triplet_descriptor_loss():
    all_valid = torch.ones(1, 3, dtype=torch.bool)
    loss, recall = L.triplet_descriptor_loss(A, P, FAR, all_valid, margin=0.5)
    # a0: relu(R4 - R8 + 0.5); a1: the same; a2: its hardest negative is p1 at distance 0
    expected = (2 * max(R4 - R8 + 0.5, 0.0) + (R2 - 0.0 + 0.5)) / 3
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    # a0 and a1 are closest to their own positive, a2 is closest to p1
    assert float(recall) == pytest.approx(2 / 3)
    # margin 0.2: a0 and a1 satisfy it (R8 - R4 = 0.26 > 0.2), only a2 counts
    loss, _ = L.triplet_descriptor_loss(A, P, FAR, all_valid, margin=0.2)
    assert loss.item() == pytest.approx((R2 + 0.2) / 3, rel=1e-5)

    # p1 moved within 4 px of p0: p1 is no negative of a0 nor p0 of a1 (next negative: p2);
    # a2 (far from both) still has p1 as its hardest negative
    near = FAR.clone()
    near[0, 1] = torch.tensor([12.0, 13.0])
    loss, recall = L.triplet_descriptor_loss(A, P, near, all_valid, margin=0.5)
    expected = (2 * max(R4 - R2 + 0.5, 0.0) + (R2 + 0.5)) / 3
    assert loss.item() == pytest.approx(expected, rel=1e-5)

    # an invalid point is neither an anchor nor a negative: a0, a1 only
    loss, recall = L.triplet_descriptor_loss(
        A, P, FAR, torch.tensor([[True, True, False]]), margin=0.5
    )
    assert loss.item() == pytest.approx(R4 - R8 + 0.5, rel=1e-5)
    assert float(recall) == 1.0
    # p1 invalid: a0's hardest negative becomes p2 (R2), a2's becomes p0 (sqrt(0.08)); a2's
    # nearest candidate is then p0, not its own positive
    loss, recall = L.triplet_descriptor_loss(
        A, P, FAR, torch.tensor([[True, False, True]]), margin=0.5
    )
    expected = (max(R4 - R2 + 0.5, 0.0) + (R2 - math.sqrt(0.08) + 0.5)) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert float(recall) == 0.5
    # nothing valid: zero loss, zero gradients
    a = A.clone().requires_grad_()
    loss, recall = L.triplet_descriptor_loss(a, P, FAR, torch.zeros(1, 3, dtype=torch.bool))
    loss.backward()
    assert loss.item() == 0.0 and float(recall) == 0.0
    torch.testing.assert_close(a.grad, torch.zeros_like(a))


def test_infonce_descriptor_loss():
    n = 4
    far = torch.tensor([[[0.0, 0.0], [40.0, 0.0], [0.0, 40.0], [40.0, 40.0]]])
    valid = torch.ones(1, n, dtype=torch.bool)
    eye = torch.eye(n)[None]
    loss, recall = L.infonce_descriptor_loss(eye, eye, far, valid, temperature=0.05)
    # -log(e^20 / (e^20 + 3)) = log(1 + 3 e^-20)
    assert loss.item() == pytest.approx(math.log1p(3 * math.exp(-20)), abs=1e-6)
    assert loss.item() < 1e-6
    assert float(recall) == 1.0

    # collapsed descriptors: every candidate has the same similarity, loss = log(#candidates)
    same = torch.nn.functional.normalize(torch.ones(1, n, 3), dim=-1)
    loss, _ = L.infonce_descriptor_loss(same, same, far, valid)
    assert loss.item() == pytest.approx(math.log(4), rel=1e-5)
    # point 1 within the relax field of point 0: anchors 0 and 1 have 3 candidates each
    near = far.clone()
    near[0, 1] = torch.tensor([3.0, -2.0])
    loss, _ = L.infonce_descriptor_loss(same, same, near, valid)
    assert loss.item() == pytest.approx((2 * math.log(3) + 2 * math.log(4)) / 4, rel=1e-5)
    # and point 3 invalid (neither anchor nor candidate): candidates {0, 2}, {1, 2}, {0, 1, 2}
    some = torch.tensor([[True, True, True, False]])
    loss, _ = L.infonce_descriptor_loss(same, same, near, some)
    assert loss.item() == pytest.approx((2 * math.log(2) + math.log(3)) / 3, rel=1e-5)
    # nothing valid (every softmax row fully masked): zero loss and finite zero gradients
    a = same.clone().requires_grad_()
    loss, recall = L.infonce_descriptor_loss(a, same, far, torch.zeros(1, n, dtype=torch.bool))
    loss.backward()
    assert loss.item() == 0.0 and float(recall) == 0.0
    torch.testing.assert_close(a.grad, torch.zeros_like(a))


def test_score_loss():
    s_src = torch.tensor([[0.2, 0.4, 0.6]], requires_grad=True)
    s_tgt = torch.tensor([[0.1, 0.3, 0.5]])
    s_res = torch.tensor([[0.25, 0.4, 0.9]])
    dist = torch.tensor([[1.0, 3.0, 10.0]])
    valid = torch.tensor([[True, True, False]])
    border = torch.tensor([[True, False, True]])
    loss = L.score_loss(s_src, s_tgt, s_res, dist, valid, border)
    # valid pairs: mean d = 2 -> ((0.2 + 0.1) * (1 - 2) + (0.4 + 0.3) * (3 - 2)) / 2 = 0.2;
    # border points 0 and 2: MSE ((0.25 - 0.2)^2 + (0.9 - 0.6)^2) / 2 = 0.04625, doubled
    assert loss.item() == pytest.approx(0.2 + 2 * 0.04625, rel=1e-5)
    # no valid pair and no point inside: exactly 0, still connected to the source scores
    # (zero, not missing or NaN, gradients: DDP needs every parameter in the graph)
    none = torch.zeros_like(valid)
    loss = L.score_loss(s_src, s_tgt, s_res, dist, none, none)
    assert loss.item() == 0.0
    loss.backward()
    torch.testing.assert_close(s_src.grad, torch.zeros_like(s_src))


HC, WC = 4, 6
SIZE = (8 * HC, 8 * WC)
H_RIGHT = torch.tensor([[[1.0, 0.0, 8.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]])  # one cell


def _translation_preds(seed: int = 0) -> tuple[dict, dict, torch.Tensor, torch.Tensor]:
    """Hand-made predictions for a one-cell translation ``H_RIGHT``: view-1 (source)
    keypoints at the cell centres, view-0 (target) keypoints moved vertically by ``oy``,
    view-0 scores constant 0.5, random descriptor maps at 1/4 resolution."""
    g = torch.Generator().manual_seed(seed)
    centers = cell_centers(HC, WC, 8).unsqueeze(0)
    oy = torch.rand(HC, WC, generator=g) * 3 - 1.5
    kp0 = centers.clone()
    kp0[:, 1] += oy
    s1 = torch.rand(1, 1, HC, WC, generator=g)
    pred0 = {
        "keypoints": kp0,
        "scores": torch.full((1, 1, HC, WC), 0.5),
        "descriptors": torch.randn(1, 8, 2 * HC, 2 * WC, generator=g),
    }
    pred1 = {
        "keypoints": centers.clone(),
        "scores": s1,
        "descriptors": torch.randn(1, 8, 2 * HC, 2 * WC, generator=g),
    }
    return pred0, pred1, oy, s1[0, 0]


def test_kp2d_loss_on_a_one_cell_translation():
    """The source is view 1, warped by inv(H_0to1): source cell (i, j) lands on the centre
    of target cell (i, j - 1), whose keypoint is |oy| px away; border cells are left out."""
    p0, p1, oy, s1 = _translation_preds()
    losses, metrics = L.kp2d_loss(p0, p1, H_RIGHT, SIZE)
    d = oy[1:-1, 0 : WC - 2].abs()  # targets of source cells i in 1..HC-2, j in 1..WC-2
    assert float(losses["location"]) == pytest.approx(float(d.mean()), rel=1e-4)
    assert float(metrics["valid"]) == pytest.approx((HC - 2) * (WC - 2) / (HC * WC))
    s = s1[1:-1, 1:-1]
    usp = ((s + 0.5) * (d - d.mean())).mean()
    mse = ((s - 0.5) ** 2).mean()
    assert float(losses["score"]) == pytest.approx(float(usp + 2 * mse), rel=1e-4, abs=1e-6)
    total = losses["location"] + 4.0 * losses["descriptor"] + losses["score"]
    assert float(losses["total"]) == pytest.approx(float(total), rel=1e-6)
    assert "io" not in losses


def test_descriptor_warmup_switches_from_infonce_to_triplet():
    p0, p1, _, _ = _translation_preds(1)
    ref = {
        name: L.kp2d_loss(p0, p1, H_RIGHT, SIZE, conf={"descriptor_loss": name})[0]
        for name in ("infonce", "triplet")
    }
    assert float(ref["infonce"]["descriptor"]) != pytest.approx(
        float(ref["triplet"]["descriptor"]), rel=1e-3
    )
    warm = {"descriptor_warmup_steps": 10}
    for step, name in ((0, "infonce"), (9, "infonce"), (10, "triplet"), (11, "triplet")):
        losses, _ = L.kp2d_loss(p0, p1, H_RIGHT, SIZE, conf=warm, step=step)
        torch.testing.assert_close(losses["descriptor"], ref[name]["descriptor"])
        torch.testing.assert_close(losses["total"], ref[name]["total"])
    # the default step (0) with no warm-up is the triplet loss
    losses, _ = L.kp2d_loss(p0, p1, H_RIGHT, SIZE)
    torch.testing.assert_close(losses["descriptor"], ref["triplet"]["descriptor"])
    # an unknown descriptor loss is an error, even while the warm-up would pick infonce
    with pytest.raises(KeyError, match="'nce'"):
        L.kp2d_loss(p0, p1, H_RIGHT, SIZE, conf={"descriptor_loss": "nce", **warm}, step=0)


def test_kp2d_loss_names_an_unknown_key():
    p0, p1 = _translation_preds()[:2]
    with pytest.raises(KeyError, match="descriptor_warmup_step"):
        L.kp2d_loss(p0, p1, H_RIGHT, SIZE, conf={"descriptor_warmup_step": 10})
