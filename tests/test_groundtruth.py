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


# --- sub-pixel points, batches, interpolation, validity, API --------------------------------


def _motion(deg: float, t: list[float]) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = _rotation_y(deg), t
    return T


def _plane_pairs(motions: list[np.ndarray], n0=(0.2, -0.3, 1.0), d0: float = 2.0):
    """Depth + pose and homography ground truth ``(B = len(motions))`` of the plane
    ``n0 . X = d0`` (camera 0) seen by two cameras ``K``; H = K (R + t n^T / d) K^-1 (with
    ``n`` normalised; the plane is ``n . X = d``, so camera 1 sees ``n1 . X1 = d0 + n1 . t``).
    """
    n = np.asarray(n0) / np.linalg.norm(n0)
    Hs, d0s, d1s = [], [], []
    for T in motions:
        R, t = T[:3, :3], T[:3, 3]
        n1 = R @ n
        Hs.append(K @ (R + np.outer(t, n) / d0) @ np.linalg.inv(K))
        d0s.append(_plane_depth(n, d0))
        d1s.append(_plane_depth(n1, d0 + n1 @ t))

    def b64(arrays):
        return torch.from_numpy(np.stack(arrays).astype(np.float64))

    Ks = b64([K] * len(motions))
    depth = DepthGroundTruth(b64(d0s), b64(d1s), Ks, Ks.clone(), b64(motions))
    return depth, HomographyGroundTruth(b64(Hs), (H, W), (H, W))


MOTIONS = [_motion(5.0, [0.1, 0.05, -0.1]), _motion(-8.0, [-0.15, 0.02, 0.2])]


def _inside(points: torch.Tensor, margin: float) -> torch.Tensor:
    x, y = points[..., 0], points[..., 1]
    return (x > margin) & (x < W - 1 - margin) & (y > margin) & (y < H - 1 - margin)


@pytest.mark.parametrize("direction", ["warp_0to1", "warp_1to0"])
def test_subpixel_points_match_the_homography_in_a_batch(direction):
    depth_gt, hom_gt = _plane_pairs(MOTIONS)
    rng = np.random.default_rng(1)
    pts = torch.from_numpy(rng.uniform([-2, -2], [W + 1, H + 1], (2, 2000, 2)))
    w_depth, known = getattr(depth_gt, direction)(pts)
    w_hom, known_hom = getattr(hom_gt, direction)(pts)
    assert known.shape == (2, 2000) and known.dtype == torch.bool
    assert (w_depth[known] - w_hom[known]).abs().max() < 1e-3  # in fact ~1e-9 (bilinear 1/z)
    # well inside both views: known by both; clearly outside either view: unknown by both
    well = _inside(pts, 1.0) & _inside(w_hom, 1.0)
    assert well.sum() > 2000 and known[well].all() and known_hom[well].all()
    outside = ~_inside(pts, -0.1) | ~_inside(w_hom, -0.1)
    assert outside.sum() > 100 and not known[outside].any()
    assert not known_hom[~_inside(w_hom, -0.1)].any()
    assert torch.isnan(w_depth[~known]).all()


def test_nearest_depth_lookup_is_within_a_fraction_of_a_pixel():
    depth_gt, hom_gt = _plane_pairs(MOTIONS)
    nearest = DepthGroundTruth(*(getattr(depth_gt, k) for k in ("depth0", "depth1", "K0", "K1",
                               "T_0to1")), interpolation="nearest")  # fmt: skip
    pts = torch.from_numpy(np.random.default_rng(2).uniform([5, 5], [W - 6, H - 6], (2, 300, 2)))
    w, known = nearest.warp_0to1(pts)
    err = (w[known] - hom_gt.warp_0to1(pts)[0][known]).abs().max()
    assert known.float().mean() > 0.8 and 1e-6 < err < 0.2
    with pytest.raises(ValueError, match="interpolation"):
        DepthGroundTruth(nearest.depth0, nearest.depth1, nearest.K0, nearest.K1,
                         nearest.T_0to1, interpolation="cubic")  # fmt: skip


def test_an_occluder_in_view_1_hides_points_in_both_directions():
    depth_gt, hom_gt = _plane_pairs(MOTIONS[:1])
    depth_gt.depth1[0, 20:40, 30:60] *= 0.7  # a box 30 % closer to camera 1 than the plane
    pts = torch.from_numpy(np.random.default_rng(3).uniform([4, 4], [W - 5, H - 5], (1, 800, 2)))
    w_hom = hom_gt.warp_0to1(pts)[0]
    x, y = w_hom[..., 0], w_hom[..., 1]
    # nearest pixel on the box (bilinear lookups across its edge fall back to the nearest)
    in_box = (x > 29.6) & (x < 59.4) & (y > 19.6) & (y < 39.4)
    clear = ~((x > 29.4) & (x < 59.6) & (y > 19.4) & (y < 39.6)) & _inside(w_hom, 1.0)
    known = depth_gt.warp_0to1(pts)[1]
    assert in_box.sum() > 50 and not known[in_box].any()
    assert clear.sum() > 300 and known[clear].all()
    # view-1 pixels on the box: their depth disagrees with view 0's surface
    box = torch.tensor([[[35.0, 25.0], [50.5, 30.25], [58.0, 38.0]]], dtype=torch.float64)
    assert not depth_gt.warp_1to0(box)[1].any()
    # a looser tolerance accepts the box as the same surface
    loose = DepthGroundTruth(depth_gt.depth0, depth_gt.depth1, depth_gt.K0, depth_gt.K1,
                             depth_gt.T_0to1, occlusion_tolerance=0.5)  # fmt: skip
    assert loose.warp_0to1(pts)[1][in_box].float().mean() > 0.9


def test_missing_depth_and_non_finite_points_are_unknown():
    depth_gt, _ = _plane_pairs(MOTIONS[:1])
    depth_gt.depth0[0, 10:20, 10:20] = 0.0
    depth_gt.depth0[0, 40:50, 60:70] = float("nan")
    pts = torch.tensor([[[15.0, 15.0], [64.6, 44.2], [float("nan"), 3.0], [float("inf"), 5.0],
                         [40.0, 30.0]]], dtype=torch.float64)  # fmt: skip
    w, known = depth_gt.warp_0to1(pts)
    assert known.tolist() == [[False, False, False, False, True]]
    assert torch.isnan(w[0, :4]).all() and torch.isfinite(w[0, 4]).all()


def test_gradients_flow_through_the_depth_warp():
    depth_gt, hom_gt = _plane_pairs(MOTIONS[:1])
    pts = torch.tensor([[[30.3, 20.7], [50.5, 40.1]]], dtype=torch.float64, requires_grad=True)
    w, known = depth_gt.warp_0to1(pts)
    w[known].sum().backward()
    g_depth = pts.grad.clone()
    pts.grad = None
    hom_gt.warp_0to1(pts)[0].sum().backward()
    assert known.all() and torch.allclose(g_depth, pts.grad, atol=1e-6)


def test_homography_warps_are_bit_identical_to_the_losses_operations():
    from keypointlab.geometry import warp_points

    Hm = torch.tensor([[[1.1, 0.05, 3.0], [-0.02, 0.95, -2.0], [1e-4, 0, 1]]])
    kp = torch.rand(1, 100, 2) * 60
    gt = HomographyGroundTruth(Hm)
    assert torch.equal(gt.warp_0to1(kp)[0], warp_points(kp, Hm.to(kp.dtype)))
    assert torch.equal(gt.warp_1to0(kp)[0], warp_points(kp, torch.linalg.inv(Hm)))
    sized = HomographyGroundTruth(Hm, size0=(50, 50), size1=(40, 70))
    w, known = sized.warp_0to1(kp)
    assert torch.equal(known, (w[..., 0] <= 69) & (w[..., 1] <= 39) & (w >= 0).all(-1))
    assert not known.all() and known.any()


def test_to_moves_every_tensor_and_keeps_settings():
    depth_gt, hom_gt = _plane_pairs(MOTIONS[:1])
    moved = depth_gt.to("cpu")
    assert moved is not depth_gt and moved.occlusion_tolerance == depth_gt.occlusion_tolerance
    assert moved.depth1.device.type == "cpu" and hom_gt.to("cpu").size1 == (H, W)


def test_shapes_are_checked():
    depth_gt, _ = _plane_pairs(MOTIONS)
    with pytest.raises(ValueError, match="T_0to1"):
        DepthGroundTruth(depth_gt.depth0, depth_gt.depth1, depth_gt.K0, depth_gt.K1,
                         depth_gt.T_0to1[:1])  # fmt: skip
    with pytest.raises(ValueError, match="points"):
        depth_gt.warp_0to1(torch.zeros(3, 5, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match="H_0to1"):
        HomographyGroundTruth(torch.eye(3))


def test_batch_dispatch_errors_name_what_each_kind_misses():
    with pytest.raises(KeyError) as err:
        ground_truth_from_batch({"image0": 0, "image1": 0, "depth0": 0, "K0": 0, "K1": 0})
    message = str(err.value)
    assert "'H_0to1'" in message and "'depth1', 'T_0to1'" in message
    assert "'K0'" not in message.split("misses")[-1]
    # no sizes from the images: whether points land inside is the losses' concern
    gt = ground_truth_from_batch(
        {"H_0to1": torch.eye(3)[None], "image0": torch.zeros(1, 3, 8, 8), "image1": 0}
    )
    assert gt.warp_0to1(torch.tensor([[[100.0, -5.0]]]))[1].all()


def test_relative_pose_numpy_and_torch_batched():
    rng = np.random.default_rng(4)
    poses = []
    for _ in range(4):
        q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
        T = np.eye(4)
        T[:3, :3], T[:3, 3] = q * np.sign(np.linalg.det(q)), rng.normal(size=3)
        poses.append(T)
    T0, T1 = np.stack(poses[:2]), np.stack(poses[2:])
    rel = relative_pose(T0, T1)
    X_world = np.array([0.3, -1.0, 2.0, 1.0])
    X0 = np.linalg.inv(T0) @ X_world
    np.testing.assert_allclose(rel @ X0[..., None], (np.linalg.inv(T1) @ X_world)[..., None])
    rel_t = relative_pose(torch.from_numpy(T0), torch.from_numpy(T1))
    np.testing.assert_allclose(rel_t.numpy(), rel, atol=1e-12)
