"""Depth inputs: 16-bit depth PNGs, 7-Scenes / Redwood frames and depth + pose pairs."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from keypointlab.data.depth import DepthPairs, load_redwood_frames, load_rgbd_frames, load_view
from keypointlab.data.images import ImageReadError, read_depth
from keypointlab.geometry import DepthGroundTruth, relative_pose, resize_matrix

DEPTH_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "depth"
KITCHEN = DEPTH_DATA / "7scenes_redkitchen"
REDWOOD = DEPTH_DATA / "redwood_open3d"
KEYS = ("image0", "image1", "depth0", "depth1", "K0", "K1", "T_0to1")


def test_read_depth_gives_metres_exactly(tmp_path):
    raw = np.random.default_rng(0).integers(0, 65536, (37, 53)).astype(np.uint16)
    raw[:5, :5] = 0
    cv2.imwrite(str(tmp_path / "d.png"), raw)
    depth = read_depth(tmp_path / "d.png")
    assert depth.dtype == np.float32 and depth.shape == (37, 53)
    np.testing.assert_array_equal(depth, raw.astype(np.float32) / np.float32(1000))
    assert (depth[:5, :5] == 0).all()
    by_5000 = read_depth(tmp_path / "d.png", scale=5000.0)
    np.testing.assert_array_equal(by_5000, raw.astype(np.float32) / np.float32(5000))


def test_read_depth_errors_name_the_file(tmp_path):
    with pytest.raises(ImageReadError, match="missing.png"):
        read_depth(tmp_path / "missing.png")
    cv2.imwrite(str(tmp_path / "grey8.png"), np.zeros((4, 4), np.uint8))
    with pytest.raises(ImageReadError, match=r"grey8.png.*16-bit single-channel.*uint8"):
        read_depth(tmp_path / "grey8.png")
    cv2.imwrite(str(tmp_path / "rgb16.png"), np.zeros((4, 4, 3), np.uint16))
    with pytest.raises(ImageReadError, match=r"rgb16.png.*3 channel"):
        read_depth(tmp_path / "rgb16.png")
    (tmp_path / "junk.png").write_bytes(b"not a png")
    with pytest.raises(ImageReadError, match="junk.png"):
        read_depth(tmp_path / "junk.png")
    cv2.imwrite(str(tmp_path / "cut.png"), np.ones((64, 64), np.uint16))
    data = (tmp_path / "cut.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) - 20])
    with pytest.raises(ImageReadError, match="cut.png"):
        read_depth(tmp_path / "cut.png")
    with pytest.raises(ValueError, match="scale"):
        read_depth(tmp_path / "rgb16.png", scale=0.0)


def _fake_seven_scenes(folder: Path, n: int = 4, size: tuple[int, int] = (48, 64)) -> None:
    """A 7-Scenes-layout folder of ``n`` frames moving along x; frame 2 has a lost pose."""
    h, w = size
    np.savetxt(folder / "camera-intrinsics.txt", [[50.0, 0, 31.5], [0, 50.0, 23.5], [0, 0, 1]])
    for i in range(n):
        stem = folder / f"frame-{i:06d}"
        cv2.imwrite(f"{stem}.color.jpg", np.full((h, w, 3), 40 * i, np.uint8))
        cv2.imwrite(f"{stem}.depth.png", np.full((h, w), 1000 + 100 * i, np.uint16))
        pose = np.eye(4)
        pose[0, 3] = 0.1 * i
        if i == 2:
            pose[0, 0] = -np.inf
        np.savetxt(f"{stem}.pose.txt", pose)


def test_load_frames_and_pairs_of_a_seven_scenes_folder(tmp_path):
    _fake_seven_scenes(tmp_path)
    frames = load_rgbd_frames(tmp_path)
    assert [f.depth.name for f in frames] == [f"frame-{i:06d}.depth.png" for i in (0, 1, 3)]
    assert frames[0].K.dtype == np.float64 and frames[0].pose.shape == (4, 4)
    image, depth, K = load_view(frames[1], (24, 32))
    assert image.shape == (24, 32, 3) and depth.shape == (24, 32)
    np.testing.assert_array_equal(depth, np.float32(1.1))
    np.testing.assert_allclose(K, resize_matrix((48, 64), (24, 32)) @ frames[1].K)
    pairs = DepthPairs(frames, size=(24, 32), max_gap=1, seed=3, length=20)
    assert len(pairs) == 20
    for i in range(20):
        a, b = pairs.pair(i)
        assert abs(a - b) == 1
    item = pairs[0]
    a, b = pairs.pair(0)
    expected = relative_pose(frames[a].pose, frames[b].pose)
    np.testing.assert_allclose(item["T_0to1"].numpy(), expected, atol=1e-6)
    (tmp_path / "camera-intrinsics.txt").unlink()
    with pytest.raises(FileNotFoundError, match="camera-intrinsics"):
        load_rgbd_frames(tmp_path)
    with pytest.raises(ValueError, match="two frames"):
        DepthPairs(frames[:1])


def _kitchen() -> list:
    if not KITCHEN.is_dir():
        pytest.skip(f"7-Scenes RedKitchen frames not found at {KITCHEN}")
    return load_rgbd_frames(KITCHEN)


def test_real_frames_reproject_to_millimetres():
    frames = _kitchen()
    assert len(frames) == 200
    f0, f1 = frames[0], frames[10]
    d0, d1 = (torch.from_numpy(read_depth(f.depth)).double()[None] for f in (f0, f1))
    K0, K1 = (torch.from_numpy(f.K)[None] for f in (f0, f1))
    T = torch.from_numpy(relative_pose(f0.pose, f1.pose))[None]
    gt = DepthGroundTruth(d0, d1, K0, K1, T, occlusion_tolerance=1.0)  # no occlusion filter
    v, u = torch.nonzero(d0[0] > 0, as_tuple=True)
    pts = torch.stack([u, v], -1).double()
    warped, known = gt.warp_0to1(pts[None])
    warped, known = warped[0], known[0]
    assert known.float().mean() > 0.5
    # projected depth of the known pixels against frame 1's depth at the nearest pixel
    X0 = torch.cat([pts, torch.ones_like(pts[:, :1])], -1) @ torch.linalg.inv(K0[0]).T
    z1 = ((X0 * d0[0, v, u, None]) @ T[0, :3, :3].T + T[0, :3, 3])[known, 2]
    x1 = warped[known].round().long()
    error = (z1 - d1[0, x1[:, 1], x1[:, 0]]).abs()
    assert error.median() < 0.02  # metres; the data's README measured 4-13 mm
    # the occlusion check keeps most of them
    assert DepthGroundTruth(d0, d1, K0, K1, T).warp_0to1(pts[None])[1].float().mean() > 0.5


def test_real_depth_pairs_have_the_right_shapes_and_are_deterministic():
    frames = _kitchen()
    pairs = DepthPairs(frames, size=(120, 160), max_gap=6, seed=7, length=50)
    item, again = pairs[3], pairs[3]
    shapes = {"image0": (3, 120, 160), "image1": (3, 120, 160), "depth0": (120, 160),
              "depth1": (120, 160), "K0": (3, 3), "K1": (3, 3), "T_0to1": (4, 4)}  # fmt: skip
    for key in KEYS:
        assert item[key].shape == shapes[key] and item[key].dtype == torch.float32, key
        assert torch.equal(item[key], again[key]), key
    assert 0 <= item["image0"].min() and item["image0"].max() <= 1
    assert (item["depth0"] > 0).float().mean() > 0.5 and item["depth0"].max() < 10
    a, b = pairs.pair(3)
    assert 0 < abs(a - b) <= 6 and len({pairs.pair(i) for i in range(50)}) > 30
    # the pair's depth + pose ground truth, batched as the trainer does
    batch = {k: v[None] for k, v in item.items()}
    gt = DepthGroundTruth(*(batch[k] for k in KEYS[2:]))
    grid = torch.stack(torch.meshgrid(torch.arange(160.0), torch.arange(120.0), indexing="xy"), -1)
    assert gt.warp_0to1(grid.reshape(1, -1, 2))[1].float().mean() > 0.3


def test_redwood_frames():
    if not REDWOOD.is_dir():
        pytest.skip(f"Redwood frames not found at {REDWOOD}")
    frames = load_redwood_frames(REDWOOD)
    assert len(frames) == 5 and frames[4].color.name == "00004.jpg"
    assert frames[0].K[0, 0] == 525.0 and np.allclose(frames[0].pose[3], [0, 0, 0, 1])
    item = DepthPairs(frames, size=(60, 80), max_gap=2)[0]
    assert item["depth1"].shape == (60, 80)


def test_a_homography_method_trains_from_depth_and_pose(tmp_path):
    """The same UnsuperPoint loss trains from depth + pose (data.source: depth_pairs): the
    trainer builds DepthGroundTruth from the batch, and some correspondences are valid."""
    import json

    from keypointlab.training.trainer import Trainer, load_config

    if not KITCHEN.is_dir():
        pytest.skip(f"7-Scenes RedKitchen frames not found at {KITCHEN}")
    torch.set_num_threads(1)
    config = Path(__file__).resolve().parents[1] / "keypointlab" / "configs" / "unsuperpoint.yaml"
    overrides = [
        "data.source=depth_pairs",
        f"data.train={KITCHEN}",
        "data.size=[64, 80]",
        "data.workers=0",
        "model.channels=[8, 8, 16, 16]",
        "model.descriptor_dim=16",
        "train.steps=2",
        "train.batch_size=2",
        "train.log_every=1",
        "train.validate_every=0",
        f"train.out={tmp_path / 'run'}",
    ]
    Trainer(load_config(config, overrides), progress=False).fit()
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2]
    assert all(np.isfinite(r["total"]) and r["valid"] > 0 for r in log)


def test_d2net_trains_from_depth_and_pose_with_its_config(tmp_path):
    """keypointlab/configs/d2net_depth.yaml as shipped (the paper's kind of supervision):
    correspondences come from depth + pose, and pairs take part in the loss."""
    import json

    from keypointlab.training.trainer import Trainer, load_config

    if not KITCHEN.is_dir():
        pytest.skip(f"7-Scenes RedKitchen frames not found at {KITCHEN}")
    torch.set_num_threads(1)
    config = Path(__file__).resolve().parents[1] / "keypointlab" / "configs" / "d2net_depth.yaml"
    overrides = [
        f"data.train={KITCHEN}",
        "data.size=[96, 128]",
        "data.workers=0",
        "model.channels=[4, 8, 8, 16]",
        "model.convs=[1, 1, 1, 2]",
        "loss.min_correspondences=32",
        "train.steps=2",
        "train.batch_size=2",
        "train.log_every=1",
        f"train.out={tmp_path / 'run'}",
    ]
    Trainer(load_config(config, overrides), progress=False).fit()
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2]
    assert all(np.isfinite(r["total"]) and r["pairs_used"] > 0 for r in log)
    assert all(r["correspondences"] > 32 for r in log)
