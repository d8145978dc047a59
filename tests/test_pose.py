"""The relative-pose benchmark: pose errors, AUC, essential-matrix estimation, matching
precision, pair sampling and ``keypointlab evaluate --task pose``, each against a case
computed by hand."""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from keypointlab.cli import main
from keypointlab.data.depth import load_rgbd_frames
from keypointlab.data.posepairs import (
    OVERLAP_RANGE,
    load_pose_pairs,
    load_strecha_views,
    rgbd_pairs,
    rgbd_views,
)
from keypointlab.errors import InputError
from keypointlab.evaluation.pose import ViewData, evaluate_pose, evaluate_pose_pair, pose_auc
from keypointlab.features import Features, get_extractor
from keypointlab.geometry.epipolar import (
    depth_overlap,
    depth_reprojection_errors,
    epipolar_distance,
    estimate_relative_pose,
    fundamental_from_pose,
    pose_error,
    rotation_error,
    translation_angle_error,
)

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
KITCHEN = SHARED / "depth" / "7scenes_redkitchen"
SUMMARY_KEYS = {
    "pose_auc_5", "pose_auc_10", "pose_auc_20", "pairs", "matching_precision",
    "matches_per_pair", "extraction_time_per_image",
}  # fmt: skip
K = np.array([[100.0, 0, 79.5], [0, 100.0, 59.5], [0, 0, 1]])  # 120x160 views


def _rot(axis: str, deg: float) -> np.ndarray:
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    if axis == "y":
        return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])  # z


def _pose(R: np.ndarray, t) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = R, t
    return T


# --- pose errors and AUC -----------------------------------------------------------------


def test_rotation_error_of_a_known_10_degree_rotation():
    assert rotation_error(_rot("y", 10), np.eye(3)) == pytest.approx(10, abs=1e-9)
    assert rotation_error(np.eye(3), _rot("y", 10)) == pytest.approx(10, abs=1e-9)
    assert rotation_error(_rot("z", 30), _rot("z", 20)) == pytest.approx(10, abs=1e-9)
    assert rotation_error(_rot("z", 20), _rot("z", 20)) == pytest.approx(0, abs=1e-6)


def test_translation_angle_error_is_up_to_sign_and_scale():
    t = np.array([1.0, 0, 0])
    assert translation_angle_error([1, 1, 0], t) == pytest.approx(45)
    assert translation_angle_error([-3, -3, 0], t) == pytest.approx(45)  # 135 -> 45
    assert translation_angle_error([-2, 0, 0], t) == pytest.approx(0, abs=1e-6)  # 180 -> 0
    assert translation_angle_error([0, 5, 0], t) == pytest.approx(90)
    assert translation_angle_error([0, 0, 0], t) == math.inf  # no direction
    assert translation_angle_error([0, 1, 0], [0, 0, 1e-9], min_gt_norm=1e-6) == 0.0


def test_pose_error_is_the_larger_of_rotation_and_translation_errors():
    T = _pose(np.eye(3), [0, 0, 1])
    t20 = [math.sin(math.radians(20)), 0, math.cos(math.radians(20))]
    assert pose_error(_rot("y", 10), t20, T) == pytest.approx(20)  # translation larger
    assert pose_error(_rot("y", 10), [0, 0, -2], T) == pytest.approx(10)  # rotation larger


def test_pose_auc_on_a_hand_computed_list():
    # sorted errors 1, 3, 8, inf (a failure); recall 1/4, 2/4, 3/4, 1.
    # curve (0, 0) (1, .25) (3, .5) (8, .75), trapezoids:
    #   [0, 1]: .125   [1, 3]: .75   [3, 5]: 1.0 (flat at .5)     -> AUC@5  = 1.875 / 5 = .375
    #   [3, 8]: 3.125  [8, 10]: 1.5 (flat at .75)                 -> AUC@10 = 5.5 / 10  = .55
    #   [8, 20]: 9.0 (flat at .75)                                -> AUC@20 = 13 / 20   = .65
    aucs = pose_auc([8.0, math.inf, 1.0, 3.0])
    np.testing.assert_allclose(aucs, [0.375, 0.55, 0.65])
    assert pose_auc([]) == [0.0, 0.0, 0.0]
    assert pose_auc([math.inf] * 3) == [0.0, 0.0, 0.0]


# --- essential matrix --------------------------------------------------------------------


K_VGA = np.array([[500.0, 0, 319.5], [0, 500.0, 239.5], [0, 0, 1]])  # 480x640 views


def _project(X: np.ndarray, T: np.ndarray, K: np.ndarray) -> np.ndarray:
    Xc = X @ T[:3, :3].T + T[:3, 3]
    p = Xc @ K.T
    return p[:, :2] / p[:, 2:]


def test_essential_matrix_recovers_a_known_pose_despite_outliers():
    # exact projections: RANSAC keeps its best minimal sample without a refit (SuperGlue's
    # protocol), so pixel noise would cost a degree or two here
    rng = np.random.default_rng(0)
    X = rng.uniform([-2, -1.5, 3], [2, 1.5, 8], (150, 3))  # in front of both cameras
    T = _pose(_rot("y", 8) @ _rot("z", 3), [0.6, 0.1, 0.2])
    x0, x1 = _project(X, np.eye(4), K_VGA), _project(X, T, K_VGA)
    x1[:15] = rng.uniform([0, 0], [640, 480], (15, 2))  # 10% outliers
    est = estimate_relative_pose(x0, x1, K_VGA, K_VGA, threshold=1.0)
    assert est.success
    assert pose_error(est.R, est.t, T) < 1.0
    assert rotation_error(est.R, T[:3, :3]) < 1.0
    assert est.inliers[15:].mean() > 0.9 and est.inliers[:15].sum() <= 3
    few = estimate_relative_pose(x0[:4], x1[:4], K_VGA, K_VGA)
    assert not few.success and "need 5" in few.reason and few.R is None


def test_an_opencv_error_inside_ransac_is_a_failed_pair(monkeypatch):
    """OpenCV's five-point solver asserts on some near-degenerate samples (DELF's grid
    keypoints on castle-P30 hit it on every seed): the pair fails, the run goes on."""
    import cv2

    from keypointlab.geometry import epipolar

    def raises(*args, **kwargs):
        raise cv2.error("std::abs(coeffs[n].re) + std::abs(coeffs[n].im) > DBL_EPSILON")

    monkeypatch.setattr(epipolar.cv2, "findEssentialMat", raises)
    rng = np.random.default_rng(0)
    x0 = rng.uniform(0, 600, (50, 2))
    est = estimate_relative_pose(x0, x0 + 5, K_VGA, K_VGA)
    assert not est.success and est.R is None and not est.inliers.any()
    assert est.reason.startswith("OpenCV: ") and "DBL_EPSILON" in est.reason


def test_epipolar_distance_of_a_sideways_motion_is_the_vertical_offset():
    # camera moved along x: epipolar lines are the image rows, distance = |y1 - y0|
    F = fundamental_from_pose(_pose(np.eye(3), [0.3, 0, 0]), K, K)
    p0 = np.array([[10.0, 20.0], [50.0, 60.0]])
    p1 = np.array([[30.0, 23.0], [70.0, 60.0]])
    np.testing.assert_allclose(epipolar_distance(p0, p1, F), [3.0, 0.0], atol=1e-9)


# --- depth: precision and overlap --------------------------------------------------------


def test_depth_reprojection_precision_on_a_constant_depth_pair():
    # depth 2 m everywhere, camera 1 at x = -0.2 m, i.e. X1 = X0 + (0.2, 0, 0): a view-0
    # pixel moves by f * 0.2 / 2 = +10 px in x. 6 matches right, 3 wrong by 10 px, 1 at
    # a pixel without depth (not counted): precision 6 / 9.
    depth = np.full((120, 160), 2.0, np.float32)
    depth0 = depth.copy()
    depth0[100, 20] = 0
    T = _pose(np.eye(3), [0.2, 0, 0])
    p0 = np.array([[20.0 + 10 * k, 30.0 + 5 * k] for k in range(9)] + [[20.0, 100.0]])
    p1 = p0 + [10.0, 0]
    p1[6:9, 0] += 10  # wrong by 10 px
    err, known = depth_reprojection_errors(p0, p1, depth0, depth, K, K, T)
    np.testing.assert_allclose(err[:6], 0, atol=1e-9)
    np.testing.assert_allclose(err[6:9], 10, atol=1e-9)
    assert known.tolist() == [True] * 9 + [False] and err[9] == math.inf
    # the same through the benchmark's per-pair metrics: one-hot descriptors match i to i
    eye = np.eye(10, dtype=np.float32)
    f0 = Features(p0, np.arange(10, 0, -1), eye, (120, 160))
    f1 = Features(p1, np.arange(10, 0, -1), eye, (120, 160))
    v0, v1 = ViewData(f0, depth0, K), ViewData(f1, depth, K)
    values = evaluate_pose_pair(v0, v1, T, top_k=10)
    assert values["num_matches"] == 10 and values["num_checked"] == 9
    assert values["precision"] == pytest.approx(6 / 9)


def test_depth_overlap_of_a_sideways_shift():
    # constant depth 2 m, shift of 40 px along x in a 160 px wide view: 120 / 160 = .75 of
    # view 0 lands inside view 1; with no depth in view 1 nothing is seen (occlusion check)
    depth = np.full((120, 160), 2.0)
    T = _pose(np.eye(3), [-0.8, 0, 0])  # x1 = x0 - 40
    assert depth_overlap(depth, depth, K, K, T, step=1) == pytest.approx(0.75, abs=0.01)
    assert depth_overlap(depth, np.zeros_like(depth), K, K, T) == 0.0
    both = depth_overlap(depth, np.stack([depth, depth]), K, np.stack([K, K]),
                         np.stack([T, np.eye(4)]), step=1)  # fmt: skip
    np.testing.assert_allclose(both, [0.75, 1.0], atol=0.01)


# --- data --------------------------------------------------------------------------------


def _texture(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    noise = cv2.GaussianBlur(rng.uniform(0, 255, (h, w)).astype(np.float32), (0, 0), 2.0)
    noise = cv2.normalize(noise, None, 0, 255, cv2.NORM_MINMAX)
    return cv2.cvtColor(noise.astype(np.uint8), cv2.COLOR_GRAY2BGR)


def _seven_scenes(folder: Path, n: int = 6, shift: int = 20) -> None:
    """A 7-Scenes folder: a textured wall at 2 m seen by a camera moving along x, ``shift``
    px (0.4 m) per frame, so frames 2..4 apart overlap .75 to .5."""
    h, w = 120, 160
    folder.mkdir(parents=True, exist_ok=True)
    np.savetxt(folder / "camera-intrinsics.txt", K)
    wall = _texture(h, w + shift * n)
    for i in range(n):
        stem = folder / f"frame-{i:06d}"
        cv2.imwrite(f"{stem}.color.png", wall[:, i * shift : i * shift + w])
        cv2.imwrite(f"{stem}.depth.png", np.full((h, w), 2000, np.uint16))
        np.savetxt(f"{stem}.pose.txt", _pose(np.eye(3), [i * shift * 2.0 / K[0, 0], 0, 0]))


def test_rgbd_pairs_keep_the_overlap_range_deterministically(tmp_path):
    _seven_scenes(tmp_path)
    views = rgbd_views(load_rgbd_frames(tmp_path))
    pairs = rgbd_pairs(views)
    gaps = {(int(p.view1.name[-6:]) - int(p.view0.name[-6:])) for p in pairs}
    assert gaps == {2, 3, 4}  # overlap .75, .625, .5; gap 1 (.875) and 5 (.375) are out
    assert all(OVERLAP_RANGE[0] <= p.overlap <= OVERLAP_RANGE[1] for p in pairs)
    assert [p.name for p in rgbd_pairs(views)] == [p.name for p in pairs]
    few = rgbd_pairs(views, max_pairs=3)
    assert len(few) == 3 and few[0].name == pairs[0].name and few[-1].name == pairs[-1].name


def _strecha(folder: Path, text: str) -> Path:
    (folder / "images").mkdir(parents=True)
    (folder / "cameras").mkdir()
    cv2.imwrite(str(folder / "images" / "0000.jpg"), _texture(60, 80))
    path = folder / "cameras" / "0000.jpg.camera"
    path.write_text(text)
    return path


def test_strecha_views_have_camera_to_world_poses(tmp_path):
    # Strecha: R camera to world, t the centre; X projects to K @ R.T @ (X - t)
    R = _rot("y", 30)
    c = np.array([1.0, 2.0, 3.0])
    rows = [*K.tolist(), [0, 0, 0], *R.tolist(), c.tolist()]
    _strecha(tmp_path, "\n".join(" ".join(f"{v:.12g}" for v in r) for r in rows) + "\n160 120\n")
    (view,) = load_strecha_views(tmp_path)
    assert view.name == "0000" and view.size == (120, 160) and view.frame is None
    np.testing.assert_allclose(view.K, K)
    X = np.array([0.5, -1.0, 9.0])
    x_cam = np.linalg.inv(view.pose) @ np.append(X, 1)
    np.testing.assert_allclose(x_cam[:3], R.T @ (X - c), atol=1e-12)


# --- command line ------------------------------------------------------------------------


def test_cli_pose_on_a_synthetic_rgbd_folder(tmp_path, capsys):
    data, out = tmp_path / "scene", tmp_path / "out"
    _seven_scenes(data)
    args = ["evaluate", "--task", "pose", "--data", str(data), "--features", "sift",
            "--size", "120x160", "--top-k", "300", "--out", str(out), "--quiet"]  # fmt: skip
    assert main(args) == 0
    results = json.loads((out / "results.json").read_text())
    summary = results["summary"]
    assert SUMMARY_KEYS <= set(summary)
    assert summary["pairs"] == 9 and results["precision_by"] == "depth"
    assert 0 <= summary["pose_auc_5"] <= summary["pose_auc_10"] <= summary["pose_auc_20"] <= 1
    assert summary["matching_precision"] > 0.8  # a textured wall, pure translation
    lines = (out / "pairs.txt").read_text().splitlines()
    assert lines[1].split() == ["frame-000000", "frame-000002", "0.7500"]
    assert len(lines) == 1 + 9
    report = (out / "report.md").read_text()
    assert "AUC@5" in report and "| sift | 120x160 | 300 |" in report
    assert "AUC@20" in capsys.readouterr().out


@pytest.mark.parametrize(
    "make, expect",
    [
        (lambda d: None, "no such folder"),
        (lambda d: d.mkdir(), "not a pose dataset"),
        (lambda d: _strecha(d, "1 0 0\n0 1 0\n"), "0000.jpg.camera: a Strecha camera file"),
        (lambda d: _strecha(d, "x y z\n"), "0000.jpg.camera: not a Strecha camera file"),
    ],
)
def test_cli_pose_bad_input_is_one_line_naming_it(tmp_path, capsys, make, expect):
    data = tmp_path / "data"
    make(data)
    args = ["evaluate", "--task", "pose", "--data", str(data), "--features", "orb",
            "--out", str(tmp_path / "out"), "--quiet"]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("keypointlab: error:") and expect in err and "Traceback" not in err
    assert not (tmp_path / "out" / "results.json").exists()


def test_malformed_camera_raises_input_error_naming_it(tmp_path):
    R = np.diag([1.0, 1.0, 2.0])  # not a rotation
    rows = [*K.tolist(), [0, 0, 0], *R.tolist(), [0, 0, 0]]
    _strecha(tmp_path, "\n".join(" ".join(map(str, r)) for r in rows) + "\n160 120\n")
    with pytest.raises(InputError, match="0000.jpg.camera: R is not a rotation"):
        load_pose_pairs(tmp_path)


# --- shared data -------------------------------------------------------------------------


@pytest.mark.skipif(not KITCHEN.is_dir(), reason=f"shared RGB-D data not found at {KITCHEN}")
def test_sift_pose_on_shared_redkitchen_frames():
    views = rgbd_views(load_rgbd_frames(KITCHEN))[:30]  # the first 150 frames
    pairs = rgbd_pairs(views, max_pairs=3)
    assert len(pairs) == 3
    assert all(OVERLAP_RANGE[0] <= p.overlap <= OVERLAP_RANGE[1] for p in pairs)
    result = evaluate_pose(get_extractor("sift"), pairs, (240, 320), 500, progress=False)
    s = result.summary()
    assert s["pairs"] == 3 and s["matches_per_pair"] > 50
    assert s["pose_auc_20"] > 0  # at least one pair within 20 degrees
    assert len(load_pose_pairs(SHARED / "sfm" / "castle-P30", max_pairs=5)) == 5
