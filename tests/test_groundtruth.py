"""Ground truth as a component: homography and depth + pose give the same correspondences
for a plane, and depth ground truth knows what it cannot see."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from keypointlab.geometry.groundtruth import (
    DepthGroundTruth,
    HomographyGroundTruth,
    as_ground_truth,
    ground_truth_from_batch,
    relative_pose,
)

H, W = 64, 96
K = np.array([[100.0, 0, 47.5], [0, 100.0, 31.5], [0, 0, 1]])


def _rotation_y(deg: float) -> np.ndarray:
    a = math.radians(deg)
    return np.array([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]])


def _plane_depth(n: np.ndarray, d: float) -> np.ndarray:
    """Depth (z) of the plane ``n . X = d`` seen by camera ``K`` at every pixel."""
    v, u = np.mgrid[0:H, 0:W].astype(np.float64)
    rays = np.stack([u, v, np.ones_like(u)], -1) @ np.linalg.inv(K).T
    return d / (rays @ n)


def _scene():
    n0 = np.array([0.1, -0.2, 1.0])
    n0 /= np.linalg.norm(n0)
    d0 = 2.0
    R, t = _rotation_y(5.0), np.array([0.1, 0.05, -0.1])
    n1, d1 = R @ n0, d0 + (R @ n0) @ t
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = R, t
    Hm = K @ (R + np.outer(t, n0) / d0) @ np.linalg.inv(K)
    depth0, depth1 = _plane_depth(n0, d0), _plane_depth(n1, d1)

    def t64(a):
        return torch.from_numpy(np.asarray(a, np.float64))[None]

    depth_gt = DepthGroundTruth(t64(depth0), t64(depth1), t64(K), t64(K), t64(T))
    return depth_gt, HomographyGroundTruth(t64(Hm)), depth1


def test_plane_depth_and_pose_match_the_homography():
    depth_gt, hom_gt, _ = _scene()
    rng = np.random.default_rng(0)
    pts = torch.from_numpy(rng.uniform([8, 8], [W - 9, H - 9], (1, 200, 2)))
    pts = pts.round()  # depth is looked up at the nearest pixel: use pixel centres
    w_depth, known = depth_gt.warp_0to1(pts)
    w_hom, _ = hom_gt.warp_0to1(pts)
    inside = (w_hom[..., 0] > 1) & (w_hom[..., 0] < W - 2) & (w_hom[..., 1] > 1)
    inside &= w_hom[..., 1] < H - 2
    assert inside.sum() > 150
    assert known[inside].all()
    assert (w_depth[inside] - w_hom[inside]).abs().max() < 1e-6
    assert torch.isnan(w_depth[~known]).all()
    # and back: view-1 pixels through depth1 and the inverse pose
    pts1 = w_hom[inside][None].round()
    back_depth, known1 = depth_gt.warp_1to0(pts1)
    back_hom, _ = hom_gt.warp_1to0(pts1)
    assert known1.float().mean() > 0.95
    assert (back_depth[known1] - back_hom[known1]).abs().max() < 1e-6


def test_missing_depth_occlusion_and_points_behind_are_unknown():
    depth_gt, hom_gt, depth1 = _scene()
    pts = torch.tensor([[[40.0, 30.0], [20.0, 20.0], [60.0, 40.0]]], dtype=torch.float64)
    assert depth_gt.warp_0to1(pts)[1].all()
    depth_gt.depth0[0, 30, 40] = 0.0  # no depth at the first point
    w, _ = hom_gt.warp_0to1(pts)
    x, y = (int(v) for v in w[0, 1].round())
    depth_gt.depth1[0, y, x] = 0.5 * depth1[y, x]  # something in front of the second point
    known = depth_gt.warp_0to1(pts)[1][0]
    assert known.tolist() == [False, False, True]
    # a pose that puts the scene behind camera 1
    flip = depth_gt.T_0to1.clone()
    flip[0, :3, :3] = -torch.eye(3, dtype=torch.float64)
    behind = DepthGroundTruth(depth_gt.depth0, depth_gt.depth1, depth_gt.K0, depth_gt.K1, flip)
    assert not behind.warp_0to1(pts)[1].any()


def test_homography_round_trip_and_batch_dispatch():
    Hm = torch.tensor([[[1.1, 0.05, 3.0], [-0.02, 0.95, -2.0], [1e-4, 0, 1]]])
    gt = ground_truth_from_batch({"H_0to1": Hm, "image0": torch.zeros(1, 3, 8, 8)})
    assert isinstance(gt, HomographyGroundTruth)
    pts = torch.rand(1, 50, 2) * 60
    there, known = gt.warp_0to1(pts)
    back, _ = gt.warp_1to0(there)
    assert known.all() and torch.allclose(back, pts, atol=1e-3)
    assert as_ground_truth(Hm).H_0to1 is Hm
    depth = {k: torch.ones(1, 3, 3) for k in ("K0", "K1")}
    depth.update(depth0=torch.ones(1, 4, 4), depth1=torch.ones(1, 4, 4), T_0to1=torch.eye(4)[None])
    assert isinstance(ground_truth_from_batch(depth), DepthGroundTruth)
    with pytest.raises(KeyError, match="T_0to1"):
        ground_truth_from_batch({"image0": torch.zeros(1, 3, 8, 8), "depth0": torch.ones(1, 4, 4)})


def test_relative_pose_of_camera_to_world_poses():
    T0, T1 = np.eye(4), np.eye(4)
    T0[:3, 3] = [1.0, 0, 0]  # camera 0 one metre right of camera 1, same orientation
    X_cam0 = np.array([0.0, 0, 2, 1])
    T = relative_pose(T0, T1)
    np.testing.assert_allclose(T @ X_cam0, [1.0, 0, 2, 1])
