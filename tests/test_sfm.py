"""Structure from motion: the alignment, the camera files, pairs, and COLMAP's mapping of a
synthetic scene whose cameras are known."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from unittest import mock

import cv2
import numpy as np
import pytest

from keypointlab.cli import main
from keypointlab.data.multiview import Camera, read_strecha_camera, scene_images
from keypointlab.errors import InputError
from keypointlab.features.base import Features
from keypointlab.geometry.alignment import aligned_errors, similarity_transform, upright_rotation

CASTLE = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "sfm" / "castle-P30"


def _rz(deg: float) -> np.ndarray:
    a = np.radians(deg)
    return np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])


def test_similarity_transform_recovers_a_hand_made_one():
    src = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1.0]])
    # x -> 2 * Rz(90) x + (1, 2, 3): (1,0,0) -> (0,2,0) + t = (1, 4, 3), etc.
    dst = np.array([[1, 2, 3], [1, 4, 3], [-1, 2, 3], [1, 2, 5.0]])
    s, R, t = similarity_transform(src, dst)
    assert s == pytest.approx(2.0)
    np.testing.assert_allclose(R, _rz(90), atol=1e-12)
    np.testing.assert_allclose(t, [1, 2, 3], atol=1e-12)
    assert aligned_errors(src, dst).max() < 1e-12
    moved = dst.copy()
    moved[0] += [0, 0, 0.4]  # one centre off: a non-zero error, largest there
    err = aligned_errors(src, moved)
    assert err.argmax() == 0 and 0 < err[0] < 0.4
    with pytest.raises(ValueError):
        similarity_transform(src[:2], dst[:2])


def test_upright_rotation_of_cameras_on_a_tilted_model():
    # Upright cameras in a z-up world, looking roughly along +x; the model's frame is the
    # world turned by some rotation T, as COLMAP's first-camera frame would be.
    cams = []
    for yaw in (-20.0, 0.0, 25.0):
        cam_in_world = np.array([[0, 0, 1.0], [-1, 0, 0], [0, -1, 0]])  # x_c=-y, y_c=-z, z_c=x
        cams.append(_rz(yaw) @ cam_in_world)
    a = np.radians(35)
    T = _rz(70) @ np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    R = upright_rotation(np.stack([T @ c for c in cams]))
    # up comes back as z, the mean view (+x, yaw about 1.7 deg) as y, its right as x
    np.testing.assert_allclose(R @ T @ [0, 0, 1.0], [0, 0, 1], atol=1e-12)
    view = R @ T @ [1.0, 0, 0]
    assert view[1] > 0.999 and abs(view[2]) < 1e-12
    np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-12)
    assert np.linalg.det(R) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="rotations"):
        upright_rotation(np.eye(3))


def test_far_off_cameras_by_hand():
    from keypointlab.sfm.reconstruct import far_off

    # a walk of 9 cameras 1 m apart along x, and one 60 m away: the median distance from
    # the median centre (4, 0, 0) is 2 (cameras at 2 and 6 m), so 60 > 10 * 2 is far off
    walk = np.array([[x, 0, 0] for x in range(9)] + [[4, 60, 0]], float)
    assert far_off(walk).tolist() == [False] * 9 + [True]
    assert not far_off(walk[:9]).any() and not far_off(walk[:3]).any()  # too few to judge


def test_strecha_camera_file_and_its_errors(tmp_path):
    path = tmp_path / "0000.jpg.camera"
    path.write_text("100 0 50\n0 110 40\n0 0 1\n0 0 0\n1 0 0\n0 1 0\n0 0 1\n1 2 3\n100 80\n")
    cam = read_strecha_camera(path)
    assert cam.size == (80, 100) and cam.K[1, 1] == 110
    np.testing.assert_allclose(cam.cam_from_world @ [1, 2, 3, 1], [0, 0, 0, 1])
    np.testing.assert_allclose(cam.world_from_cam @ cam.cam_from_world, np.eye(4), atol=1e-12)
    path.write_text("1 2 3\n")
    with pytest.raises(InputError, match="0000.jpg.camera.*26 finite numbers"):
        read_strecha_camera(path)
    with pytest.raises(InputError, match="no such folder"):
        scene_images(tmp_path / "missing")


def _look_at(centre: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Camera-to-world rotation of a camera at ``centre`` looking at ``target`` (y down)."""
    z = target - centre
    z = z / np.linalg.norm(z)
    x = np.cross(z, [0, 0, 1.0])  # world z up -> image y down
    x = x / np.linalg.norm(x)
    return np.stack([x, np.cross(z, x), z], 1)


def _synthetic_scene(n_cameras: int = 6, n_points: int = 400):
    """Points in a box seen by cameras on an arc around it: per camera its Features
    (projections, pixel centres at 0) and the true camera; matches by point identity."""
    rng = np.random.default_rng(0)
    points = rng.uniform([-2, -2, -1], [2, 2, 1], size=(n_points, 3))
    K = np.array([[500.0, 0, 319.5], [0, 500.0, 239.5], [0, 0, 1]])
    cameras, features, names = {}, [], []
    for i in range(n_cameras):
        a = np.radians(-40 + 80 * i / (n_cameras - 1))
        centre = np.array([10 * np.sin(a), -10 * np.cos(a), 1.5])
        R = _look_at(centre, np.zeros(3))
        cam = R.T @ (points - centre).T
        uv = (K @ cam).T
        uv = uv[:, :2] / uv[:, 2:]
        names.append(f"{i:04d}.png")
        cameras[names[-1]] = Camera(K=K, R=R, centre=centre, size=(480, 640))
        desc = np.eye(n_points, 16, dtype=np.float32)  # unused: matches are given
        features.append(
            Features(uv + rng.normal(0, 0.3, uv.shape), np.ones(n_points), desc, (480, 640))
        )
    pairs = [(i, j) for i in range(n_cameras) for j in range(i + 1, n_cameras)]
    ids = np.arange(n_points)
    matches = [np.stack([ids, ids], 1) for _ in pairs]
    return names, features, cameras, pairs, matches


def _blank_images(tmp_path: Path, names: list[str]) -> Path:
    """An image folder for the synthetic scene: COLMAP's import reads the files' sizes."""
    images = tmp_path / "images"
    images.mkdir()
    for n in names:
        cv2.imwrite(str(images / n), np.zeros((480, 640), np.uint8))
    return images


@pytest.mark.parametrize("known", [True, False])
def test_synthetic_scene_registers_every_camera(tmp_path, known):
    pytest.importorskip("pycolmap", reason="reconstruct needs the sfm extra (pycolmap)")
    from keypointlab.sfm import reconstruct_from_features

    names, features, cameras, pairs, matches = _synthetic_scene()
    images = _blank_images(tmp_path, names)
    out = tmp_path / "out"
    s = reconstruct_from_features(
        images,
        names,
        features,
        out,
        cameras=cameras if known else None,
        matches=matches,
        pair_list=pairs,
        threads=1,
        progress=False,
        method="synthetic",
    )
    assert s["registered_images"] == len(names) == s["images"]
    assert s["points3d"] > 350
    assert s["mean_track_length"] > 5  # every point is seen by (almost) every camera
    assert 0 < s["mean_reprojection_error"] < 1.0  # 0.3 px noise
    if known:  # centres within 2 cm of the true ones (scene about 14 m wide)
        assert s["cameras"]["aligned_cameras"] == len(names)
        assert s["cameras"]["centre_error_max"] < 0.02
    assert json.loads((out / "summary.json").read_text()) == s
    assert (out / "sparse" / "0" / "images.bin").is_file() or any((out / "sparse" / "0").iterdir())
    assert (out / "reconstruction.png").stat().st_size > 10_000
    assert not (out / ".work").exists()


def test_same_seed_same_model_with_outlier_matches(tmp_path):
    """COLMAP's verification draws a fresh RANSAC seed per run by default; reconstruct seeds
    it, so outlier-laden matches give the same model twice."""
    pytest.importorskip("pycolmap", reason="reconstruct needs the sfm extra (pycolmap)")
    from keypointlab.sfm import reconstruct_from_features

    names, features, _, pairs, matches = _synthetic_scene()
    rng = np.random.default_rng(1)
    noisy = []
    for m in matches:  # 40% of each pair's matches replaced by random ones
        m = m.copy()
        k = rng.choice(len(m), int(0.4 * len(m)), replace=False)
        m[k, 1] = rng.permutation(m[k, 1])
        noisy.append(m)
    images = _blank_images(tmp_path, names)
    runs = []
    for out in ("a", "b"):
        s = reconstruct_from_features(
            images,
            names,
            features,
            tmp_path / out,
            matches=noisy,
            pair_list=pairs,
            threads=1,
            progress=False,
            seed=3,
        )
        s.pop("seconds")
        runs.append(s)
    assert runs[0]["seed"] == 3 and runs[0]["registered_images"] == len(names)
    assert runs[0] == runs[1]  # to the last digit of the reprojection error


def test_a_failed_attempt_is_tried_again_with_the_next_seed(tmp_path, monkeypatch):
    pytest.importorskip("pycolmap", reason="reconstruct needs the sfm extra (pycolmap)")
    import importlib

    module = importlib.import_module("keypointlab.sfm.reconstruct")

    real, seeds = module.verify_and_map, []

    def first_fails(pycolmap, db, image_dir, pairs_txt, sparse, seed, threads, known):
        seeds.append(seed)
        if len(seeds) == 1:  # as if the first seed's model registered nothing
            sparse.mkdir()
            return None, 0, (0.0, 0.0)
        return real(pycolmap, db, image_dir, pairs_txt, sparse, seed, threads, known)

    monkeypatch.setattr(module, "verify_and_map", first_fails)
    names, features, _, pairs, matches = _synthetic_scene()
    images = _blank_images(tmp_path, names)

    def run(out, tries):
        return module.reconstruct_from_features(
            images,
            names,
            features,
            tmp_path / out,
            matches=matches,
            pair_list=pairs,
            threads=1,
            progress=False,
            seed=7,
            tries=tries,
        )

    s = run("out", 3)
    assert seeds == [7, 8]  # stopped once every image registered
    assert s["seed"] == 8 and s["registered_images"] == len(names)
    assert s["attempts"] == [
        {"seed": 7, "registered_images": 0},
        {"seed": 8, "registered_images": len(names)},
    ]
    seeds.clear()
    one = run("one", 1)
    assert seeds == [7] and one["registered_images"] == 0 and one["points3d"] == 0
    assert not (tmp_path / "one" / "reconstruction.png").exists()
    with pytest.raises(InputError, match="tries"):
        module.reconstruct_from_features(
            images, names, features, tmp_path / "x", matches=matches, pair_list=pairs, tries=0
        )


def test_retrieval_pairs_are_the_nearest_by_global_descriptor():
    from keypointlab.sfm.reconstruct import image_pairs, parse_pairs

    def f(d):
        return Features(np.zeros((1, 2)), np.ones(1), np.array([d], np.float32), (10, 10))

    # images 0 and 1 alike, 2 and 3 alike: one nearest neighbour each
    feats = [f([1, 0, 0]), f([0.9, 0.1, 0]), f([0, 0, 1]), f([0, 0.1, 0.9])]
    with mock.patch("importlib.util.find_spec", return_value=None):  # no faiss: the fallback
        assert image_pairs(feats, "retrieval", 1) == [(0, 1), (2, 3)]
    assert len(image_pairs(feats, "exhaustive", 0)) == 6
    assert parse_pairs("retrieval:10", 4) == ("retrieval", 3)
    for bad in ("retrieval", "retrieval:0", "nearby:3", "retrieval:x"):
        with pytest.raises(InputError, match="--pairs"):
            parse_pairs(bad, 4)


def test_retrieval_pairs_by_votes_of_the_index():
    pytest.importorskip("faiss", reason="kNN votes need faiss-cpu (the retrieval extra)")
    from keypointlab.sfm.reconstruct import image_pairs

    rng = np.random.default_rng(0)
    words = rng.normal(size=(4, 40, 16)).astype(np.float32)  # 4 places, 40 descriptors each

    def f(place, noise):
        d = words[place] + noise * rng.normal(size=(40, 16)).astype(np.float32)
        return Features(rng.uniform(0, 99, (40, 2)), np.ones(40), d, (100, 100))

    # images 0 and 3 show place 0, 1 and 2 place 1; 4 and 5 places 2 and 3 alone
    feats = [f(0, 0.1), f(1, 0.1), f(1, 0.1), f(0, 0.1), f(2, 0.1), f(3, 0.1)]
    pairs = image_pairs(feats, "retrieval", 1)
    assert (0, 3) in pairs and (1, 2) in pairs
    assert all(not ({a, b} <= {0, 1, 2, 3}) or {a, b} in ({0, 3}, {1, 2}) for a, b in pairs)


def test_cli_errors_name_the_input(tmp_path, capsys):
    assert main(["reconstruct", str(tmp_path / "nothing"), "--out", str(tmp_path / "o")]) == 2
    assert "nothing" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["reconstruct", str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) == 2
    assert "no images" in capsys.readouterr().err


@pytest.mark.skipif(not CASTLE.is_dir(), reason="../shared/data/sfm/castle-P30 is absent")
def test_cli_on_five_castle_views_with_sift(tmp_path, capsys):
    pytest.importorskip("pycolmap", reason="reconstruct needs the sfm extra (pycolmap)")
    scene = tmp_path / "castle5"
    for sub in ("images", "cameras"):
        (scene / sub).mkdir(parents=True)
    for i in range(10, 15):
        shutil.copy(CASTLE / "images" / f"{i:04d}.jpg", scene / "images")
        shutil.copy(CASTLE / "cameras" / f"{i:04d}.jpg.camera", scene / "cameras")
    out = tmp_path / "out"
    args = ["reconstruct", str(scene), "--features", "sift", "--max-keypoints", "2000"]
    assert main([*args, "--out", str(out), "--quiet"]) == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["registered_images"] == 5 and s["points3d"] > 300
    assert s["cameras"]["within_1_percent_of_extent"] == 1.0
    assert "5/5 images registered" in capsys.readouterr().out
