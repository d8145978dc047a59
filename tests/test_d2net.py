"""D2-Net's parts on hand-made feature maps: soft detection, hard detection (depth-wise and
spatial maximum, edge test, sub-pixel fit), the margin ranking loss, the feature-map
geometry and the pyramid. The method contract (training, checkpoints, extraction) is
checked for d2net by tests/test_contract.py."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from keypointlab.geometry.groundtruth import DepthGroundTruth, HomographyGroundTruth
from keypointlab.geometry.keypoints import cells_to_pixels, pixels_to_cells
from keypointlab.losses import d2net as d2l
from keypointlab.models.d2net import (
    D2Net,
    _fmap_map,
    _pixels_to_fmap,
    hard_detection,
    soft_detection,
)


def _conf(**kw):
    return {**d2l.DEFAULT_CONF, **kw}


# -- soft detection ---------------------------------------------------------------------
def test_soft_detection_matches_the_papers_formula_by_hand():
    rng = np.random.default_rng(0)
    f = rng.uniform(0, 2, (2, 3, 4)).astype(np.float64)
    f[1, 2, 3] = 3.0  # the image's maximum
    top = f.max()
    e = np.exp(f / top)
    gamma = np.zeros((3, 4))
    for i in range(3):
        for j in range(4):
            best = 0.0
            for c in range(2):
                s = 0.0
                for di in (-1, 0, 1):
                    for dj in (-1, 0, 1):
                        y, x = i + di, j + dj
                        s += e[c, y, x] if 0 <= y < 3 and 0 <= x < 4 else 1.0  # padded exp(0)
                alpha = e[c, i, j] / s
                beta = f[c, i, j] / f[:, i, j].max()
                best = max(best, alpha * beta)
            gamma[i, j] = best
    want = gamma / gamma.sum()
    got = soft_detection(torch.from_numpy(f)[None])[0].numpy()
    np.testing.assert_allclose(got, want, rtol=1e-12)
    assert abs(got.sum() - 1) < 1e-12


def test_soft_detection_of_an_all_zero_map_is_zero_not_nan():
    s = soft_detection(torch.zeros(1, 4, 5, 6))
    assert torch.equal(s, torch.zeros(1, 5, 6))


# -- hard detection -----------------------------------------------------------------------
def _peak(h, w, x0, y0, ax=1.0, ay=1.0, top=10.0):
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    return top - ax * (xs - x0) ** 2 - ay * (ys - y0) ** 2


def test_hard_detection_refines_a_quadratic_peak_exactly():
    f = np.zeros((2, 9, 9))
    f[0] = _peak(9, 9, 4.2, 3.9)  # channel 0 strongest everywhere near its peak
    f[1] = 0.5
    # far from the peak channel 1 is the strongest, but flat: no curvature, no detection
    det = hard_detection(torch.from_numpy(f).clamp_min(0))
    assert det["xy"].shape == (1, 2)
    np.testing.assert_allclose(det["xy"][0].numpy(), [4.2, 3.9], atol=1e-12)
    assert det["cells"][0].tolist() == [4, 4] and det["channels"][0] == 0
    assert float(det["scores"][0]) == pytest.approx(f[0, 4, 4])


def test_hard_detection_needs_the_depth_wise_maximum():
    f = np.zeros((2, 7, 7))
    f[0] = _peak(7, 7, 2, 2, top=10)  # a peak of channel 0 ...
    f[1] = _peak(7, 7, 4, 4, ax=0.1, ay=0.1, top=20)  # ... where channel 1 is stronger
    det = hard_detection(torch.from_numpy(f))
    assert det["cells"].tolist() == [[4, 4]] and det["channels"].tolist() == [1]
    assert float(det["scores"][0]) == 20.0


def test_hard_detection_rejects_edges_and_keeps_corners():
    t = 5.0
    # ratio of curvatures r: tr^2 / det = (1 + r)^2 / r; the limit is (t + 1)^2 / t at r = t
    for ratio, kept in ((1.0, True), (4.0, True), (6.0, False), (50.0, False)):
        f = _peak(9, 9, 4, 4, ax=0.1, ay=0.1 * ratio)[None]
        det = hard_detection(torch.from_numpy(f), edge_threshold=t)
        assert (len(det["xy"]) == 1) == kept, ratio


def test_hard_detection_skips_the_border_banned_cells_and_far_steps():
    f = _peak(7, 7, 0, 3)[None]  # maximum on the left border
    assert len(hard_detection(torch.from_numpy(f))["xy"]) == 0
    f = _peak(7, 7, 3, 3)[None]
    banned = torch.zeros(7, 7, dtype=torch.bool)
    banned[3, 3] = True
    assert len(hard_detection(torch.from_numpy(f), banned=banned)["xy"]) == 0
    # a maximum whose quadratic fit lands more than half a cell away is dropped:
    # dii = djj = -1, dij = 0.9 (det .19 > 0, not an edge for t = 100), g = (.3, .3): step 3
    f = np.zeros((1, 5, 5))
    f[0, 1:4, 1:4] = [[9.9, 9.2, 8.1], [9.2, 10.0, 9.8], [8.1, 9.8, 9.9]]
    assert len(hard_detection(torch.from_numpy(f), edge_threshold=100.0)["xy"]) == 0
    f[0, 1, 2] = f[0, 3, 2] = f[0, 2, 1] = f[0, 2, 3] = 9.5  # same curvature, no gradient
    det = hard_detection(torch.from_numpy(f), edge_threshold=100.0)
    assert det["xy"].tolist() == [[2.0, 2.0]]


# -- geometry of the feature map ------------------------------------------------------------
def test_feature_map_cells_sit_on_pixel_centres():
    f = torch.tensor([[0.0, 0.0], [2.0, 1.0]])
    assert cells_to_pixels(f, 4).tolist() == [[1.5, 1.5], [9.5, 5.5]]
    assert pixels_to_cells(cells_to_pixels(f, 4), 4).tolist() == f.tolist()
    # a level at twice the size: cell f maps to 2 f + 0.5 (pixel 4 f + 1.5 -> 8 f + 3.5)
    M = _fmap_map((16, 16), (32, 32))
    np.testing.assert_allclose(M, [[2, 0, 0.5], [0, 2, 0.5], [0, 0, 1]], atol=1e-12)


def test_backbone_keeps_quarter_resolution_without_a_shift():
    """With left-right symmetric filters the network commutes with a horizontal flip iff
    its sampling grid is symmetric, i.e. cell j is centred on pixel 4 j + 1.5 (the paper's
    2x2 stride-1 pooling would break this by half a cell)."""
    torch.manual_seed(0)
    net = D2Net({"channels": [4, 8, 8, 8], "convs": [1, 1, 1, 2]}).eval()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.Conv2d):
                m.weight.copy_((m.weight + m.weight.flip(-1)) / 2)
    image = torch.rand(1, 3, 32, 48)
    with torch.no_grad():
        f = net.features(image)
        g = net.features(image.flip(-1))
    assert f.shape == (1, 8, 8, 12)
    torch.testing.assert_close(g, f.flip(-1), atol=1e-5, rtol=1e-5)


# -- loss --------------------------------------------------------------------------------
def _unit(angles):
    a = torch.tensor(angles, dtype=torch.float64)
    return torch.stack([a.cos(), a.sin()], 0)  # (2, N)


def test_loss_by_hand_on_three_cells():
    """Identity homography, one row of three cells, safe radius 0 (only the cell itself is
    excluded): positives are 0, the hardest negative of cell k is its nearest other cell."""
    angles = [0.0, 0.5, 2.0]
    d = _unit(angles).reshape(1, 2, 1, 3)
    s0 = torch.tensor([[[0.2, 0.3, 0.5]]], dtype=torch.float64)
    s1 = torch.tensor([[[0.5, 0.25, 0.25]]], dtype=torch.float64)
    H = torch.eye(3, dtype=torch.float64)[None]
    losses, metrics = d2l.d2net_loss(
        d, d.clone(), s0, s1, H, _conf(safe_radius=0, min_correspondences=1)
    )
    sq = lambda a, b: 2 - 2 * math.cos(a - b)  # noqa: E731
    neg = [min(sq(a, b) for j, b in enumerate(angles) if j != k) for k, a in enumerate(angles)]
    w = [0.2 * 0.5, 0.3 * 0.25, 0.5 * 0.25]
    want = sum(wk * max(0.0, 1.0 - n) for wk, n in zip(w, neg, strict=True)) / sum(w)
    assert float(losses["total"]) == pytest.approx(want, abs=1e-9)
    assert float(metrics["descriptor_accuracy"]) == 1.0


def test_hardest_negative_ignores_the_safe_radius_in_max_norm():
    # a 1 x 6 map; the anchor sits at cell 0 and matches cell 2 best, cell 5 next
    cand = _unit([3.0, 2.0, 0.1, 2.5, 2.8, 0.3]).T
    anchor = _unit([0.0]).T
    cells = torch.tensor([[0.0, 0.0]], dtype=torch.float64)
    for radius, best in ((1, 2), (2, 5), (4, 5), (5, None)):
        got = d2l.hardest_negative(anchor, cand, cells, (1, 6), radius)
        if best is None:  # every cell inside the radius: the excluded distance is returned
            assert float(got) <= 4.0
        else:
            assert float(got) == pytest.approx(2 - 2 * float(cand[best, 0]), abs=1e-12)


def test_loss_skips_pairs_with_too_few_correspondences_and_keeps_the_graph():
    d = F.normalize(torch.rand(2, 8, 6, 6, requires_grad=True), dim=1)
    s = torch.full((2, 6, 6), 1 / 36)
    H = torch.eye(3).repeat(2, 1, 1)
    H[1, 0, 2] = 1000.0  # pair 1 does not overlap
    losses, metrics = d2l.d2net_loss(d, d, s, s, H, _conf(min_correspondences=10))
    assert float(metrics["pairs_used"]) == 1.0
    losses, metrics = d2l.d2net_loss(d, d, s, s, H, _conf(min_correspondences=100))
    assert float(metrics["pairs_used"]) == 0 and float(losses["total"].detach()) == 0.0
    losses["total"].backward()  # no pair: still differentiable (zero gradient)


def test_correspondences_of_a_translation_are_shifted_cells():
    H = torch.eye(3)[None].clone()
    H[0, 0, 2], H[0, 1, 2] = 8.0, -4.0  # 2 cells right, 1 cell up
    grid0, f1, valid = d2l.correspondences((5, 6), (5, 6), H, 1, 4, "cpu")
    want = (grid0[:, 0] + 2 <= 5) & (grid0[:, 1] - 1 >= 0)
    assert torch.equal(valid[0], want)
    torch.testing.assert_close(f1[0][want], (grid0 + torch.tensor([2.0, -1.0]))[want])
    assert f1[0, :, 0].max() <= 5 and f1[0, :, 1].min() >= 0  # the others clamped to the map


def test_depth_and_homography_ground_truth_give_the_same_loss():
    """A fronto-parallel plane at 2 m, the camera moved 0.16 m along x: every pixel moves
    by fx * tx / Z = -8 px (the scene moves the other way), the homography's translation."""
    torch.manual_seed(0)
    h, w = 6, 8
    desc0 = F.normalize(torch.rand(1, 16, h, w, dtype=torch.float64), dim=1)
    desc1 = F.normalize(torch.rand(1, 16, h, w, dtype=torch.float64), dim=1)
    s0 = soft_detection(torch.rand(1, 16, h, w, dtype=torch.float64))
    s1 = soft_detection(torch.rand(1, 16, h, w, dtype=torch.float64))
    K = torch.tensor([[100.0, 0, 15.5], [0, 100.0, 11.5], [0, 0, 1]], dtype=torch.float64)[None]
    T = torch.eye(4, dtype=torch.float64)[None].clone()
    T[0, 0, 3] = -0.16  # X1 = X0 - 0.16: u1 = u0 - 8
    depth = torch.full((1, 4 * h, 4 * w), 2.0, dtype=torch.float64)
    gt_depth = DepthGroundTruth(depth, depth.clone(), K, K.clone(), T)
    H = torch.eye(3, dtype=torch.float64)[None].clone()
    H[0, 0, 2] = -8.0
    conf = _conf(min_correspondences=1, safe_radius=1)
    a, ma = d2l.d2net_loss(desc0, desc1, s0, s1, gt_depth, conf)
    b, mb = d2l.d2net_loss(desc0, desc1, s0, s1, HomographyGroundTruth(H), conf)
    assert float(ma["correspondences"]) == float(mb["correspondences"]) == (w - 2) * h
    assert float(a["total"]) == pytest.approx(float(b["total"]), abs=1e-9)


# -- the model: training outputs and the pyramid -------------------------------------------
def test_forward_outputs_and_config_errors():
    net = D2Net(D2Net.tiny_conf)
    out = net({"image": torch.rand(2, 3, 32, 40)})
    assert out["features"].shape == (2, 16, 8, 10) and (out["features"] >= 0).all()
    torch.testing.assert_close(out["descriptors"].norm(dim=1), torch.ones(2, 8, 10))
    torch.testing.assert_close(out["scores"].sum((1, 2)), torch.ones(2))
    with pytest.raises(ValueError, match="channels"):
        D2Net({"channels": [4, 8]})
    with pytest.raises(ValueError, match="pyramid"):
        D2Net({"pyramid": [0.0]})
    with pytest.raises(ValueError, match="ground truth"):
        net.loss(
            {"image0": torch.rand(1, 3, 32, 32), "image1": torch.rand(1, 3, 32, 32)},
            None,
            d2l.DEFAULT_CONF,
            0,
        )


def _bilinear_unit(f: np.ndarray, x: float, y: float) -> np.ndarray:
    """``f`` ``(C, h, w)`` interpolated at ``(x, y)`` by hand, L2-normalised."""
    x0, y0 = int(np.floor(x)), int(np.floor(y))
    x1, y1 = min(x0 + 1, f.shape[2] - 1), min(y0 + 1, f.shape[1] - 1)
    ax, ay = x - x0, y - y0
    v = (
        (1 - ax) * (1 - ay) * f[:, y0, x0]
        + ax * (1 - ay) * f[:, y0, x1]
        + (1 - ax) * ay * f[:, y1, x0]
        + ax * ay * f[:, y1, x1]
    )
    return v / np.linalg.norm(v)


def test_single_scale_detection_is_hard_detection_of_the_features():
    torch.manual_seed(0)
    net = D2Net(D2Net.tiny_conf).eval()
    image = torch.rand(1, 3, 48, 64)
    with torch.no_grad():
        det, context = net.detect(image)
        raw = hard_detection(net.features(image)[0], net.conf["edge_threshold"])
        desc = net.describe(image, context, det)
    assert len(det["keypoints"]) == len(raw["xy"]) > 0
    torch.testing.assert_close(det["keypoints"], cells_to_pixels(raw["xy"], 4))
    torch.testing.assert_close(det["scores"], raw["scores"])
    assert (det["scales"] == 4).all() and (det["levels"] == 0).all()
    # descriptors: the feature map interpolated bilinearly (by hand) at the sub-pixel cells
    f = net.features(image)[0].detach().numpy()
    for (x, y), d in zip(raw["xy"].numpy(), desc.numpy(), strict=True):
        np.testing.assert_allclose(d, _bilinear_unit(f, x, y), atol=1e-5)


def test_pyramid_detects_once_per_place_and_maps_back_to_the_image():
    torch.manual_seed(1)
    net = D2Net({**D2Net.tiny_conf, "pyramid": [2.0, 0.5, 1.0]}).eval()
    image = torch.rand(1, 3, 48, 64)
    with torch.no_grad():
        det, context = net.detect(image)
        desc = net.describe(image, context, det)
    levels = det["levels"]
    assert set(levels.tolist()) <= {0, 1, 2} and (levels == 0).any() and (levels == 2).any()
    # levels are taken coarse to fine: scales 0.5 -> 16 px keypoints, 2 -> 2 px
    assert torch.equal(det["scales"], torch.tensor([8.0, 4.0, 2.0])[levels])
    kp = det["keypoints"]
    assert kp[:, 0].min() >= 0 and kp[:, 0].max() <= 63 and kp[:, 1].max() <= 47
    # a finer level never detects in a cell whose nearest coarser cell is taken (holds a
    # detection, or is itself banned by a coarser one), by hand over the cells
    sizes = [(round(48 * s), round(64 * s)) for s in (0.5, 1.0, 2.0)]
    taken = None
    for lv, size in enumerate(sizes):
        fh, fw = context[lv][0].shape[-2:]
        to_fmap = _pixels_to_fmap((48, 64), size)
        xy = kp[levels == lv].numpy()
        cells = np.rint(xy @ to_fmap[:2, :2].T + to_fmap[:2, 2]).astype(int)
        here = np.zeros((fh, fw), bool)
        here[cells[:, 1], cells[:, 0]] = True
        if taken is not None:
            m = _fmap_map(size, sizes[lv - 1])
            jj, ii = np.meshgrid(np.arange(fw), np.arange(fh))
            cx = np.rint(m[0, 0] * jj + m[0, 2]).astype(int).clip(0, taken.shape[1] - 1)
            cy = np.rint(m[1, 1] * ii + m[1, 2]).astype(int).clip(0, taken.shape[0] - 1)
            banned = taken[cy, cx]
            assert banned.any() and not (here & banned).any()
            # and nothing else is banned: the level's detections are hard detection there
            expect = hard_detection(
                context[lv][0], net.conf["edge_threshold"], torch.from_numpy(banned)
            )
            assert len(expect["xy"]) == len(xy)
            here |= banned
        taken = here
    assert desc.shape == (len(kp), 16)
    torch.testing.assert_close(desc.norm(dim=1), torch.ones(len(desc)))
    # a score is the accumulated map's strongest channel at the cell over the levels it sums
    for i in range(len(kp)):
        lv = int(levels[i])
        s = (0.5, 1.0, 2.0)[lv]
        cx, cy = (((kp[i] + 0.5) * s - 0.5 - 1.5) / 4).round().long().tolist()
        acc = context[lv][0]
        assert float(det["scores"][i]) == pytest.approx(
            float(acc[:, cy, cx].max()) / (lv + 1), rel=1e-5
        )
    # each is its level's accumulated map at the keypoint: pixel x at scale s is cell
    # ((x + 0.5) s - 0.5 - 1.5) / 4 of that level
    for i in range(len(kp)):
        s = (0.5, 1.0, 2.0)[int(levels[i])]
        fx, fy = (((kp[i] + 0.5) * s - 0.5 - 1.5) / 4).tolist()
        acc = context[int(levels[i])][0].numpy()
        np.testing.assert_allclose(desc[i].numpy(), _bilinear_unit(acc, fx, fy), atol=1e-5)
    # the finest level's map carries the coarser levels' maps: it differs from its own
    f_own = net.features(F.interpolate(image, scale_factor=2.0, mode="bilinear"))[0]
    assert not torch.allclose(context[2][0], f_own)


# -- shipping: one set of weights under two names ------------------------------------------
def test_ship_a_run_and_its_multiscale_alias(tmp_path):
    import json

    import cv2

    from keypointlab.data.samples import sample_photo
    from keypointlab.models import loading
    from keypointlab.training.ship import ship_model
    from keypointlab.training.trainer import Trainer, load_config

    torch.set_num_threads(1)
    images = tmp_path / "images"
    images.mkdir()
    for name in ("astronaut", "coffee", "rocket"):
        rgb = sample_photo(name, (96, 128))
        cv2.imwrite(str(images / f"{name}.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    seq = tmp_path / "eval" / "v_astro"
    seq.mkdir(parents=True)
    ref = sample_photo("astronaut", (120, 160))
    cv2.imwrite(str(seq / "1.png"), ref)
    H = np.array([[0.95, 0.05, 4.0], [-0.04, 1.0, 2.0], [0.0, 0.0, 1.0]])
    cv2.imwrite(str(seq / "2.png"), cv2.warpPerspective(ref, H, (160, 120)))
    np.savetxt(seq / "H_1_2", H)
    config = load_config(
        loading.WEIGHTS_DIR.parent / "configs" / "d2net.yaml",
        [
            f"data.train={images}",
            "data.size=[64, 64]",
            "data.workers=0",
            "data.holdout=0",
            "model.channels=[4, 8, 8, 16]",
            "model.convs=[1, 1, 1, 2]",
            "train.steps=2",
            "train.batch_size=2",
            "train.validate_every=0",
            f"train.out={tmp_path / 'run'}",
        ],
    )
    Trainer(config, progress=False).fit()
    out = tmp_path / "weights"
    ship_model(tmp_path / "run", "tiny", tmp_path / "eval", out_dir=out)
    with pytest.raises(FileNotFoundError, match="ship 'nothing'"):
        ship_model(
            tmp_path / "run", "tiny_ms", tmp_path / "eval", out_dir=out, weights_of="nothing"
        )
    card = ship_model(
        tmp_path / "run",
        "tiny_ms",
        tmp_path / "eval",
        out_dir=out,
        model_options={"pyramid": [0.5, 1.0, 2.0]},
        weights_of="tiny",
    )
    assert sorted(p.name for p in out.iterdir()) == [
        "tiny.json",
        "tiny.md",
        "tiny.safetensors",
        "tiny_ms.json",
        "tiny_ms.md",
    ]
    meta = json.loads((out / "tiny_ms.json").read_text())
    assert meta["weights"] == "tiny" and meta["model"]["pyramid"] == [0.5, 1.0, 2.0]
    assert "shared with `tiny`" in card.read_text()
    # the checkout's path is not in the card (the data paths are the config's own)
    assert str(loading.WEIGHTS_DIR.parents[1]) not in card.read_text()
    # a shipped model is a source too: its weights at other settings, its training record
    card = ship_model(
        "tiny", "tiny_12", tmp_path / "eval", out_dir=out, model_options={"pyramid": [1, 2]}
    )
    meta = json.loads((out / "tiny_12.json").read_text())
    assert meta["weights"] == "tiny" and meta["model"]["pyramid"] == [1, 2]
    text, source = card.read_text(), (out / "tiny.md").read_text()
    training = source[source.index("## Training") : source.index("## Measured")].strip()
    assert training in text and "`pyramid=[1, 2]`" in text
    assert not (out / "tiny_12.safetensors").exists()
    a = loading.load_shipped("tiny_12", weights_dir=out).model.state_dict()
    b = loading.load_shipped("tiny", weights_dir=out).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # re-shipped under its own name (a new note): its own weights file, untouched
    before = (out / "tiny.safetensors").read_bytes()
    card = ship_model("tiny", "tiny", tmp_path / "eval", out_dir=out, force=True, note="again")
    assert "weights" not in json.loads((out / "tiny.json").read_text())
    assert "shared with" not in card.read_text() and "again" in card.read_text()
    assert (out / "tiny.safetensors").read_bytes() == before
    assert training in card.read_text()


def test_detection_memory_grows_with_the_image_not_its_square():
    """Hard detection reads each candidate's channel in place (it used to copy a whole
    feature map per candidate: 11 GB at 1.5 megapixels)."""
    import subprocess
    import sys

    code = (
        "import resource, numpy as np, torch; import keypointlab as kl; "
        "torch.set_num_threads(1); ex = kl.load_extractor('d2net'); "
        "img = (np.random.default_rng(0).random((1000, 1000, 3)) * 255).astype(np.uint8); "
        "n = len(ex.extract(img).keypoints); "
        "print(n, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    n, peak_kb = map(int, out.stdout.split())
    assert n > 500 and peak_kb < 1_500_000, (n, peak_kb)
