"""SuperPoint recipe: MagicPoint/SuperPoint models, detector and descriptor losses on
hand-made cases, max-pool NMS, the synthetic and adapted-pairs data sources, homographic
adaptation of a tiny folder (library and CLI), and short runs through the Trainer."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import keypointlab
from keypointlab.adaptation import homographic_adaptation, load_trained_model
from keypointlab.cli import main as cli_main
from keypointlab.data.pairs import random_crop, random_crop_with_matrix
from keypointlab.data.samples import sample_photo
from keypointlab.data.sources import (
    AdaptedPairs,
    SyntheticTraining,
    build_dataset,
)
from keypointlab.geometry import warp_points
from keypointlab.losses import superpoint as L
from keypointlab.models.superpoint import MagicPoint, SuperPoint, heatmap_nms_keypoints
from keypointlab.training.trainer import Trainer, load_config

torch.set_num_threads(1)

TINY = {"channels": [8, 8, 16, 16], "head_width": 16}
CONFIGS = Path(keypointlab.__file__).parent / "configs"
TINY_TRAIN = [
    "model.channels=[8, 8, 16, 16]",
    "model.head_width=16",
    "data.size=[64, 80]",
    "data.workers=0",
    "train.batch_size=2",
    "train.log_every=1",
    "eval.data=none",
]


def read_log(out: Path) -> dict[int, dict]:
    return {r["step"]: r for r in map(json.loads, (out / "log.jsonl").read_text().splitlines())}


# --------------------------------------------------------------------------- model


def test_output_shapes_and_cell_keypoints():
    torch.manual_seed(0)
    model = SuperPoint({**TINY, "descriptor_dim": 24}).eval()
    with torch.no_grad():
        out = model({"image": torch.rand(2, 3, 64, 96)})
    assert out["scores"].shape == (2, 1, 8, 12)
    assert out["keypoints"].shape == (2, 2, 8, 12)
    assert out["descriptors"].shape == (2, 24, 8, 12)
    assert out["heatmap"].shape == (2, 1, 64, 96)
    assert out["logits"].shape == (2, 65, 8, 12)
    # each keypoint is the best pixel of its own cell and its score that pixel's probability
    kp = out["keypoints"].long()
    cells = F.pixel_unshuffle(out["heatmap"], 8)
    assert torch.equal(kp[:, 0] // 8, torch.arange(12).expand(2, 8, 12))
    assert torch.equal(kp[:, 1] // 8, torch.arange(8)[:, None].expand(2, 8, 12))
    torch.testing.assert_close(out["scores"][:, 0], cells.max(dim=1).values)
    b, y, x = torch.meshgrid(torch.arange(2), torch.arange(8), torch.arange(12), indexing="ij")
    picked = out["heatmap"][b, 0, kp[:, 1], kp[:, 0]]
    torch.testing.assert_close(picked, out["scores"][:, 0])
    # grey and RGB input of the same grey image agree; MagicPoint has the same keys
    grey = torch.rand(1, 1, 32, 40)
    with torch.no_grad():
        a = model({"image": grey})["heatmap"]
        c = model({"image": grey.expand(-1, 3, -1, -1)})["heatmap"]
        mp = MagicPoint(TINY).eval()({"image": grey})
    torch.testing.assert_close(a, c)
    assert {"scores", "keypoints", "descriptors", "heatmap", "logits"} <= set(mp)
    with pytest.raises(ValueError, match="multiple of 8"):
        model({"image": torch.rand(1, 1, 30, 40)})


def test_softmax_over_65_channels_sums_to_one():
    torch.manual_seed(1)
    with torch.no_grad():
        out = MagicPoint(TINY).eval()({"image": torch.rand(2, 1, 32, 48)})
    prob = out["logits"].softmax(dim=1)
    torch.testing.assert_close(prob.sum(dim=1), torch.ones(2, 4, 6))
    # heatmap = the 64 non-dustbin channels back at their pixels: cell sums + dustbin = 1
    cell_sums = F.pixel_unshuffle(out["heatmap"], 8).sum(dim=1)
    torch.testing.assert_close(cell_sums + prob[:, 64], torch.ones(2, 4, 6))
    assert out["scores"].min() >= 0 and out["scores"].max() <= 1


def _labelled_pair(size=(32, 48), seed=0):
    rng = np.random.default_rng(seed)
    km = torch.zeros(2, *size)
    for b in range(2):
        for _ in range(10):
            km[b, rng.integers(size[0]), rng.integers(size[1])] = 1
    H = torch.eye(3).expand(2, 3, 3).clone()
    H[:, 0, 2] = 5.0
    return km, H


def test_gradient_reaches_every_parameter():
    torch.manual_seed(0)
    km, H = _labelled_pair()
    for model in (SuperPoint({**TINY, "descriptor_dim": 16}), MagicPoint(TINY)):
        out0 = model({"image": torch.rand(2, 1, 32, 48)})
        out1 = model({"image": torch.rand(2, 1, 32, 48)})
        if isinstance(model, SuperPoint):
            conf = {"descriptor_weight": 1.0}
            losses, metrics = L.superpoint_loss(out0, out1, km, km, H, None, None, conf)
        else:
            losses, metrics = L.magicpoint_loss(out0["logits"], km)
        losses["total"].backward()
        for name, p in model.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        assert all(torch.isfinite(v) for v in {**losses, **metrics}.values())


# ------------------------------------------------------------------------ losses


def test_cell_labels_and_detector_loss_on_hand_made_map():
    km = torch.zeros(1, 16, 24)  # 2 x 3 cells
    km[0, 2, 3] = 1  # cell (0, 0): pixel (dy=2, dx=3) -> 19
    km[0, 9, 10] = 1  # cell (1, 1): two keypoints, (1, 2) -> 10 and (6, 7) -> 55
    km[0, 14, 15] = 1
    km[0, 7, 23] = 1  # cell (0, 2): (7, 7) -> 63
    labels = L.cell_labels(km, random_ties=False)
    assert labels.tolist() == [[[19, 64, 63], [64, 10, 64]]]
    seen = {
        int(L.cell_labels(km, generator=torch.Generator().manual_seed(s))[0, 1, 1])
        for s in range(20)
    }
    assert seen == {10, 55}  # random tie-break picks either keypoint of the cell

    perfect = F.one_hot(labels, 65).permute(0, 3, 1, 2).float() * 50.0
    loss, _, valid = L.detector_loss(perfect, km, random_ties=False)
    assert loss < 1e-6 and valid.all()
    uniform = torch.zeros(1, 65, 2, 3)
    loss, _, _ = L.detector_loss(uniform, km, random_ties=False)
    torch.testing.assert_close(loss, torch.tensor(np.log(65.0), dtype=torch.float32))
    # a wrong cell does not count once one of its pixels is invalid
    wrong = perfect.clone()
    wrong[0, :, 0, 0] = 0
    wrong[0, 64, 0, 0] = 50.0  # predicts the dustbin where the label is 19
    valid_mask = torch.ones(1, 16, 24)
    assert L.detector_loss(wrong, km, valid_mask, random_ties=False)[0] > 1.0
    valid_mask[0, 7, 7] = 0
    loss, _, valid = L.detector_loss(wrong, km, valid_mask, random_ties=False)
    assert loss < 1e-6 and valid.tolist() == [[[False, True, True], [True, True, True]]]
    losses, metrics = L.magicpoint_loss(perfect, km, conf={"random_ties": False})
    assert losses["total"] < 1e-6 and metrics["precision"] == 1 and metrics["recall"] == 1
    with pytest.raises(KeyError, match="bogus"):
        L.magicpoint_loss(perfect, km, conf={"bogus": 1})


def _one_hot_cells(codes: list[int]) -> torch.Tensor:
    """(1, 4, 2, 2) descriptor map, cell k (raster order) = basis vector codes[k]."""
    return F.one_hot(torch.tensor(codes), 4).float().T.reshape(1, 4, 2, 2)


def test_descriptor_loss_on_two_by_two_cells():
    eye = torch.eye(3)[None]
    d = _one_hot_cells([0, 1, 2, 3])
    loss, m = L.descriptor_loss(d, d, eye)
    assert loss == 0 and m["desc_recall"] == 1  # neighbours (8 px) are not positives
    # view-1 cell 0 takes cell 1's descriptor: one positive at dot 0 (250 * 1) and one
    # negative at dot 1 (1 - 0.2), averaged over the 16 pairs
    loss, _ = L.descriptor_loss(d, _one_hot_cells([1, 1, 2, 3]), eye)
    torch.testing.assert_close(loss, torch.tensor((250.0 + 0.8) / 16))
    # without view-1 cell 0 (an invalid pixel in it) the 12 remaining pairs are perfect
    valid1 = torch.ones(1, 16, 16)
    valid1[0, 0, 0] = 0
    loss, _ = L.descriptor_loss(d, _one_hot_cells([1, 1, 2, 3]), eye, None, valid1)
    assert loss == 0
    # an 8 px shift to the right: view-0 cells 0, 2 land on view-1 cells 1, 3
    shift = torch.tensor([[[1.0, 0, 8], [0, 1, 0], [0, 0, 1]]])
    d1 = _one_hot_cells([1, 0, 3, 2])
    loss, m = L.descriptor_loss(d, d1, shift)
    # positives (0->1, 2->3) are perfect; the pairs (1, 0) and (3, 2) are negatives at dot 1
    torch.testing.assert_close(loss, torch.tensor(2 * 0.8 / 16))
    assert m["desc_positive"] == 1 and m["desc_recall"] == 1
    torch.testing.assert_close(m["desc_negative"], torch.tensor(2 / 14))
    loss, _ = L.descriptor_loss(d, d1, shift, lambda_d=1.0, margin_negative=1.0)
    assert loss == 0


def test_superpoint_loss_total_uses_paper_weights():
    torch.manual_seed(0)
    km, H = _labelled_pair()
    model = SuperPoint({**TINY, "descriptor_dim": 16})
    p0 = model({"image": torch.rand(2, 1, 32, 48)})
    p1 = model({"image": torch.rand(2, 1, 32, 48)})
    losses, _ = L.superpoint_loss(p0, p1, km, km, H, conf={"random_ties": False})
    expected = losses["detector0"] + losses["detector1"] + 1e-4 * losses["descriptor"]
    torch.testing.assert_close(losses["total"], expected)
    assert L.DEFAULT_CONF["lambda_d"] == 250 and L.DEFAULT_CONF["margin_negative"] == 0.2


def test_lambda_d_scaled_with_the_cell_count():
    # 120x160 has 15 x 20 = 300 cells, a quarter of the paper's 1200 at 240x320
    assert L.scaled_lambda_d(250.0, 1200, torch.Size([8, 128, 15, 20])) == 62.5
    assert L.scaled_lambda_d(250.0, 1200, torch.Size([8, 128, 30, 40])) == 250.0
    assert L.scaled_lambda_d(250.0, 0, torch.Size([8, 128, 15, 20])) == 250.0  # off
    torch.manual_seed(0)
    km, H = _labelled_pair()
    model = SuperPoint({**TINY, "descriptor_dim": 16})
    p0 = model({"image": torch.rand(2, 1, 32, 48)})  # 4 x 6 = 24 cells
    p1 = model({"image": torch.rand(2, 1, 32, 48)})
    conf = {"random_ties": False}
    scaled, _ = L.superpoint_loss(p0, p1, km, km, H, conf={**conf, "lambda_d_cells": 96})
    plain, _ = L.superpoint_loss(p0, p1, km, km, H, conf={**conf, "lambda_d": 62.5})
    torch.testing.assert_close(scaled["descriptor"], plain["descriptor"])
    assert L.DEFAULT_CONF["lambda_d_cells"] == 0  # the paper's loss unless asked


# ----------------------------------------------------------------------- NMS


def test_heatmap_nms_on_hand_made_heatmap():
    heat = torch.zeros(20, 20)
    heat[3, 3] = 0.9
    heat[4, 5] = 0.5  # within 4 px of (3, 3): suppressed
    heat[12, 12] = 0.7
    heat[2, 12] = 0.01  # below the threshold
    heat[12, 2] = heat[12, 3] = 0.6  # a tie: the first in raster order is kept
    kp, scores = heatmap_nms_keypoints(heat, threshold=0.015, nms_radius=4)
    assert kp.tolist() == [[3, 3], [12, 12], [2, 12]]
    torch.testing.assert_close(scores, torch.tensor([0.9, 0.7, 0.6]))
    kp, _ = heatmap_nms_keypoints(heat[None, None], 0.015, 4, max_keypoints=2)
    assert kp.tolist() == [[3, 3], [12, 12]]
    kp, _ = heatmap_nms_keypoints(heat, 0.015, 4, border=3)  # x = 2 is too close to the edge
    assert kp.tolist() == [[3, 3], [12, 12]]
    # a chain a > b > c, 4 px apart: b is suppressed by a, so c survives (greedy NMS)
    row = torch.zeros(9, 17)
    row[4, 0], row[4, 4], row[4, 8] = 0.9, 0.8, 0.7
    kp, _ = heatmap_nms_keypoints(row, 0.015, 4)
    assert kp.tolist() == [[0, 4], [8, 4]]
    kp, _ = heatmap_nms_keypoints(row, 0.0, 0)
    assert len(kp) == 3


# ----------------------------------------------------------------------- data


def test_synthetic_source_labels_follow_the_homography():
    ds = SyntheticTraining((64, 80), {"allow_artifacts": True, "patch_ratio": 0.8}, seed=3)
    item = ds[5]
    assert item["image"].shape == (1, 64, 80)
    assert item["keypoint_map"].shape == item["valid_mask"].shape == (64, 80)
    assert torch.equal(item["image"], ds[5]["image"])  # a pure function of the index
    on = item["keypoint_map"] > 0
    assert (item["valid_mask"][on] == 1).all()


def _labels_file(folder: Path, path: Path, points: np.ndarray, size: tuple[int, int]) -> Path:
    out = folder / "hand_labels.h5"
    with h5py.File(out, "w") as h5:
        g = h5.create_group(path.name)
        g.create_dataset("keypoints", data=points.astype(np.float32))
        g.create_dataset("scores", data=np.ones(len(points), np.float32))
        g.create_dataset("image_size", data=np.asarray(size))
    return out


def test_adapted_pairs_labels_are_consistent(tmp_path: Path):
    image = sample_photo("astronaut", (96, 128))
    rng = np.random.default_rng([4, 2])
    a = random_crop(image, (48, 64), np.random.default_rng([4, 2]))
    b, matrix = random_crop_with_matrix(image, (48, 64), rng)
    assert np.array_equal(a, b)  # same draws and pixels as HomographicPairs' crop
    grid = np.stack(np.meshgrid(np.arange(4, 128, 9.0), np.arange(4, 96, 9.0)), -1)
    points = grid.reshape(-1, 2)
    ds = AdaptedPairs([image], [points], (48, 64), {"max_angle": 0.3}, seed=4)
    for index in range(3):
        item = ds[index]
        assert item["image0"].shape == item["image1"].shape == (3, 48, 64)
        ys0, xs0 = torch.nonzero(item["keypoint_map0"], as_tuple=True)
        ys1, xs1 = torch.nonzero(item["keypoint_map1"], as_tuple=True)
        assert len(xs0) > 5 and len(xs1) > 5
        warped = warp_points(torch.stack([xs0, ys0], -1).double(), item["H_0to1"].double())
        d = torch.cdist(torch.stack([xs1, ys1], -1).double(), warped).min(dim=1).values
        assert d.max() < 2.0  # every view-1 label is a warped view-0 label (up to rounding)
        assert (item["valid_mask1"][ys1, xs1] == 1).all()


# -------------------------------------------------- trainer, adaptation, CLI


@pytest.fixture(scope="module")
def magicpoint_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("magicpoint")
    conf = load_config(
        CONFIGS / "magicpoint.yaml", [*TINY_TRAIN, "train.steps=3", f"train.out={out}"]
    )
    assert conf["data"]["source"] == "synthetic"
    record = Trainer(conf, progress=False).fit()
    assert record["step"] == 3 and np.isfinite(record["total"])
    return out


def test_magicpoint_trains_on_synthetic_source(magicpoint_run: Path):
    log = read_log(magicpoint_run)
    assert sorted(log) == [1, 2, 3]
    assert {"detector", "precision", "recall"} <= set(log[3])
    assert list(magicpoint_run.glob("ckpt_*.pt"))


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("adapt_images")
    (folder / "sub").mkdir()
    for name, path in (("coffee", "coffee.png"), ("rocket", "sub/rocket.png")):
        rgb = sample_photo(name, (72, 96))
        cv2.imwrite(str(folder / path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    (folder / "broken.png").write_bytes(b"not an image")
    return folder


def test_adaptation_writes_labels_and_reports_broken_file(
    magicpoint_run: Path, images: Path, tmp_path: Path
):
    net = load_trained_model(magicpoint_run)
    out = tmp_path / "labels.h5"
    report = homographic_adaptation(
        net, images, out, n_homographies=3, threshold=0.0, max_keypoints=40, max_side=64,
        progress=False,
    )  # fmt: skip
    assert report.written == 2 and [Path(p).name for p, _ in report.skipped] == ["broken.png"]
    with h5py.File(out, "r") as h5:
        assert sorted(h5) == ["coffee.png", "sub"] and "rocket.png" in h5["sub"]
        for key in ("coffee.png", "sub/rocket.png"):
            kp = np.asarray(h5[key]["keypoints"])
            scores = np.asarray(h5[key]["scores"])
            assert tuple(h5[key]["image_size"]) == (72, 96)
            assert kp.shape == (40, 2) and scores.shape == (40,)
            assert np.all(np.diff(scores) <= 0)
            # labels are in the original image's pixels (adapted at 48x64)
            assert kp[:, 0].min() >= 0 and kp[:, 0].max() <= 95
            assert kp[:, 1].min() >= 0 and kp[:, 1].max() <= 71
        assert h5.attrs["n_homographies"] == 3
    # same seed, same labels
    again = tmp_path / "again.h5"
    homographic_adaptation(
        net, images, again, n_homographies=3, threshold=0.0, max_keypoints=40, max_side=64,
        progress=False,
    )  # fmt: skip
    with h5py.File(out, "r") as a, h5py.File(again, "r") as b:
        assert np.array_equal(a["coffee.png/keypoints"], b["coffee.png/keypoints"])


def test_cli_adapt_then_superpoint_trains_on_adapted_pairs(
    magicpoint_run: Path, images: Path, tmp_path: Path, capsys
):
    labels = tmp_path / "labels.h5"
    args = ["adapt", str(magicpoint_run), str(images), "--out", str(labels)]
    args += ["--num-homographies", "2", "--threshold", "0", "--max-keypoints", "60", "--quiet"]
    assert cli_main(args) == 0
    printed = capsys.readouterr().out
    assert "2 images labelled" in printed and "broken.png" in printed
    out = tmp_path / "superpoint"
    conf = load_config(
        CONFIGS / "superpoint.yaml",
        [
            *TINY_TRAIN,
            "model.descriptor_dim=16",
            f"data.train={images}",
            f"data.labels={labels}",
            "data.max_side=96",
            "train.steps=2",
            f"train.out={out}",
        ],
    )
    record = Trainer(conf, progress=False).fit()
    assert record["step"] == 2
    assert {"detector0", "detector1", "descriptor", "desc_recall"} <= set(record)
    assert cli_main(["adapt", str(tmp_path / "missing"), str(images), "--out", "x.h5"]) == 2


def test_methods_without_labels_fail_clearly(tmp_path: Path):
    conf = load_config(
        CONFIGS / "superpoint.yaml", [*TINY_TRAIN, "data.source=pairs", f"train.out={tmp_path}"]
    )
    step = Trainer(conf, progress=False).step_module
    batch = {"image0": torch.rand(1, 3, 32, 32), "image1": torch.rand(1, 3, 32, 32)}
    with pytest.raises(KeyError, match="adapted_pairs"):
        step(batch)
    with pytest.raises(ValueError, match="data.labels"):
        build_dataset({**conf["data"], "source": "adapted_pairs", "labels": ""}, 0)
    with pytest.raises(KeyError, match="unknown data source"):
        build_dataset({**conf["data"], "source": "bogus"}, 0)


def test_overfit_one_synthetic_batch_drives_detector_loss_down(tmp_path: Path):
    conf = load_config(
        CONFIGS / "magicpoint.yaml",
        [
            *TINY_TRAIN,
            "train.steps=40",
            "train.overfit=true",
            "train.lr=0.003",
            f"train.out={tmp_path}",
        ],
    )
    Trainer(conf, progress=False).fit()
    log = read_log(tmp_path)
    first = np.mean([log[s]["detector"] for s in (1, 2, 3)])
    last = np.mean([log[s]["detector"] for s in (38, 39, 40)])
    assert last < 0.6 * first, (first, last)


class _ImageIsHeatmap(torch.nn.Module):
    """A 'detector' whose heatmap is its grey input: adaptation must give it back."""

    def forward(self, data):
        from keypointlab.models.superpoint import cell_maxima

        heat = data["image"][:, :1]
        return {"heatmap": heat, "descriptors": heat[:, :, ::8, ::8], **cell_maxima(heat)}


def test_adapted_detector_keeps_a_peak_where_it_is():
    from keypointlab.adaptation import AdaptedDetector

    yy, xx = torch.meshgrid(torch.arange(48.0), torch.arange(64.0), indexing="ij")
    image = torch.exp(-((xx - 37) ** 2 + (yy - 21) ** 2) / (2 * 2.0**2))[None, None]
    out = AdaptedDetector(_ImageIsHeatmap(), n_homographies=10, seed=3)({"image": image})
    assert out["heatmap"].shape == (1, 1, 48, 64) and out["scores"].shape == (1, 1, 6, 8)
    # the aggregated heatmap still peaks at (37, 21), which is the keypoint of cell (2, 4)
    peak = int(out["heatmap"].flatten().argmax())
    assert (peak % 64, peak // 64) == (37, 21)
    assert out["keypoints"][0, :, 2, 4].tolist() == [37.0, 21.0]
    # the random views were really used: the map differs from the input away from the peak
    assert not torch.allclose(out["heatmap"], image, atol=1e-3)


def test_adapted_detector_with_one_view_is_the_detector():
    from keypointlab.adaptation import AdaptedDetector

    torch.manual_seed(0)
    net = MagicPoint(TINY).eval()
    image = torch.rand(2, 1, 32, 48)
    with torch.no_grad():
        plain = net({"image": image})
        adapted = AdaptedDetector(net, n_homographies=1)({"image": image})
    for key in ("heatmap", "scores", "keypoints", "descriptors"):
        torch.testing.assert_close(adapted[key], plain[key])
