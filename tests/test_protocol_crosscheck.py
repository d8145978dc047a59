"""keypointlab's benchmark against the independent reference implementation of the protocol.

(a) a synthetic dataset with known homographies, (b) the shared Oxford data at original size,
(c) the shared Oxford data at 240x320, compared with the figures in PROTOCOL.md.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest
from skimage import data as skdata

from keypointlab.data.images import read_image
from keypointlab.data.sequences import load_dataset
from keypointlab.evaluation.benchmark import BenchmarkResult, evaluate_features
from keypointlab.features import get_extractor
from keypointlab.features.classical import OpenCVExtractor
from keypointlab.features.h5 import FeatureFileExtractor, write_features

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reference_protocol import evaluate_reference  # noqa: E402

EVAL_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "eval"
OXFORD = EVAL_DIR / "oxford"
OPENCV_50 = cv2.__version__.startswith("5.0.")

SCALAR_KEYS = [
    "repeatability",
    "localization_error",
    "matching_score",
    "mma_3",
    "homography_accuracy_1",
    "homography_accuracy_3",
    "homography_accuracy_5",
    "homography_auc_1",
    "homography_auc_3",
    "homography_auc_5",
]
TOL = 1e-6


def _require_oxford() -> Path:
    if not (OXFORD.is_dir() and any(OXFORD.iterdir())):
        pytest.skip(f"shared evaluation data not found at {OXFORD}")
    return OXFORD


def write_sift_features(data_dir: Path, h5_path: Path) -> None:
    """SIFT features of every image of the dataset at its own size, keyed like hloc."""
    sequences, skipped = load_dataset(data_dir)
    assert not skipped
    extractor = OpenCVExtractor("sift", max_keypoints=2000)
    with h5py.File(h5_path, "w") as h5:
        for seq in sequences:
            for i in sorted(seq.images):
                write_features(h5, seq.relative(i), extractor.extract(read_image(seq.images[i])))


def evaluate_both(data_dir: Path, h5_path: Path, top_k: int) -> tuple[BenchmarkResult, dict]:
    sequences, skipped = load_dataset(data_dir)
    extractor = FeatureFileExtractor(h5_path)
    try:
        ours = evaluate_features(extractor, sequences, None, top_k, skipped, progress=False)
    finally:
        extractor.close()
    ref = evaluate_reference(str(data_dir), str(h5_path), top_k)
    return ours, ref


def _close(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    if math.isinf(a) or math.isinf(b):
        return a == b
    return abs(a - b) <= TOL


def assert_agree(ours: BenchmarkResult, ref: dict) -> None:
    assert not ours.skipped
    summary = ours.summary()
    assert summary["pairs"] == ref["pairs"] > 0
    assert summary["pairs_without_localization"] == ref["pairs_without_localization"]
    for key in SCALAR_KEYS:
        assert summary[key] == pytest.approx(ref[key], abs=TOL), key
    np.testing.assert_allclose(summary["mma"], ref["mma"], atol=TOL)
    for split in ("illumination", "viewpoint", "other"):
        s = ours.summary(split)
        assert s["pairs"] == ref["pairs_by_split"][split], split
        np.testing.assert_allclose(s["mma"], ref["mma_by_split"][split], atol=TOL)

    mine = {(p.sequence, tuple(p.pair)): p for p in ours.pairs}
    theirs = {(p["sequence"], tuple(p["pair"])): p for p in ref["per_pair"]}
    assert mine.keys() == theirs.keys()
    for key, p in mine.items():
        r = theirs[key]
        assert p.split == r["split"], key
        for name in ("repeatability", "localization_error", "corner_error", "matching_score"):
            assert _close(getattr(p, name), r[name]), (key, name, getattr(p, name), r[name])
        np.testing.assert_allclose(p.mma, r["mma"], atol=TOL, err_msg=str(key))


# --------------------------------------------------------------------------- (a) synthetic


SYNTH_HOMOGRAPHIES = [
    np.array([[0.9, 0.1, 20.0], [-0.08, 0.95, 10.0], [1e-4, -2e-4, 1.0]]),
    np.array([[1.1, -0.05, -15.0], [0.05, 1.05, -12.0], [-2e-4, 1e-4, 1.0]]),
    np.array([[0.98, 0.0, 3.5], [0.0, 0.98, -2.25], [0.0, 0.0, 1.0]]),
    np.array([[0.7, -0.3, 80.0], [0.3, 0.7, -20.0], [5e-4, 3e-4, 1.0]]),  # strong: may fail
    np.array([[1.3, 0.2, -60.0], [-0.1, 1.25, -40.0], [8e-4, -6e-4, 1.0]]),
]
SYNTH_SIZES = [(240, 320), (260, 300), (220, 340), (240, 320), (250, 330)]


def _write_h(path: Path, H: np.ndarray) -> None:
    path.write_text("\n".join(" ".join(f"{v:.17g}" for v in row) for row in H) + "\n")


def make_synthetic_dataset(root: Path, sizes: list[tuple[int, int]] = SYNTH_SIZES) -> Path:
    """v_astro: five warps (image sizes differ); i_astro: brightness changes, small warps."""
    rgb = skdata.astronaut()[64:448]  # 384 x 512
    img1 = cv2.resize(rgb, (320, 240), interpolation=cv2.INTER_AREA)
    v_dir, i_dir = root / "v_astro", root / "i_astro"
    v_dir.mkdir(parents=True)
    i_dir.mkdir(parents=True)
    cv2.imwrite(str(v_dir / "1.ppm"), cv2.cvtColor(img1, cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(i_dir / "1.png"), cv2.cvtColor(img1, cv2.COLOR_RGB2BGR))
    for n, (H, (h, w)) in enumerate(zip(SYNTH_HOMOGRAPHIES, sizes, strict=True), start=2):
        warped = cv2.warpPerspective(img1, H, (w, h), flags=cv2.INTER_LINEAR)
        cv2.imwrite(str(v_dir / f"{n}.ppm"), cv2.cvtColor(warped, cv2.COLOR_RGB2BGR))
        _write_h(v_dir / f"H_1_{n}", H)
        Hi = np.array([[1.0, 0.0, 2.0 * n], [0.0, 1.0, -1.5 * n], [0.0, 0.0, 1.0]])
        gain = 0.5 + 0.2 * n
        lit = np.clip(img1.astype(np.float32) * gain, 0, 255).astype(np.uint8)
        lit = cv2.warpPerspective(lit, Hi, (320, 240), flags=cv2.INTER_LINEAR)
        cv2.imwrite(str(i_dir / f"{n}.png"), cv2.cvtColor(lit, cv2.COLOR_RGB2BGR))
        _write_h(i_dir / f"H_1_{n}", Hi)
    return root


def test_crosscheck_synthetic(tmp_path):
    data_dir = make_synthetic_dataset(tmp_path / "synthetic")
    h5_path = tmp_path / "sift.h5"
    write_sift_features(data_dir, h5_path)
    with h5py.File(h5_path, "r") as h5:
        assert len(h5["v_astro/1.ppm/keypoints"]) > 200  # top-k below really selects
    ours, ref = evaluate_both(data_dir, h5_path, top_k=200)
    assert len(ours.pairs) == 10
    assert_agree(ours, ref)
    # the dataset is not trivial: the metrics move and most homographies are found
    s = ours.summary()
    assert 0.2 < s["repeatability"] < 1.0
    assert s["homography_accuracy_5"] >= 0.5
    assert len({round(p.repeatability, 6) for p in ours.pairs}) > 3


def test_crosscheck_synthetic_small_top_k_and_empty_image(tmp_path):
    """Few points per image and one image without any feature: still identical, no NaN."""
    data_dir = make_synthetic_dataset(tmp_path / "synthetic")
    h5_path = tmp_path / "sift.h5"
    write_sift_features(data_dir, h5_path)
    with h5py.File(h5_path, "a") as h5:
        group = h5["i_astro/3.png"]
        dim = group["descriptors"].shape[1]
        for name, shape in (("keypoints", (0, 2)), ("scores", (0,)), ("descriptors", (0, dim))):
            del group[name]
            group.create_dataset(name, data=np.zeros(shape, np.float32))
        for name in ("scales", "orientations"):  # per-keypoint too: no keypoint, no value
            if name in group:
                del group[name]
    ours, ref = evaluate_both(data_dir, h5_path, top_k=12)
    assert_agree(ours, ref)
    empty_pair = next(p for p in ours.pairs if p.sequence == "i_astro" and p.pair == (1, 3))
    assert empty_pair.repeatability == 0.0
    assert empty_pair.localization_error is None
    assert empty_pair.corner_error == math.inf
    assert ours.summary()["pairs_without_keypoints"] == 1


def test_crosscheck_feature_file_resized(tmp_path):
    """A feature file evaluated at another size: keypoints and homographies are rescaled.

    The reference works at original sizes, so it gets a copy of the dataset at the target
    size (images only provide their size), homographies scaled by hand and the keypoints
    scaled by hand. Scales are powers of two, anisotropic, so every product is exact.
    """
    data_dir = make_synthetic_dataset(tmp_path / "synthetic", sizes=[(240, 320)] * 5)
    h5_path = tmp_path / "sift.h5"
    write_sift_features(data_dir, h5_path)
    target = (60, 160)
    sx, sy = 0.5, 0.25
    sequences, _ = load_dataset(data_dir)
    extractor = FeatureFileExtractor(h5_path)
    try:
        ours = evaluate_features(extractor, sequences, target, 100, progress=False)
    finally:
        extractor.close()
    assert ours.size == "60x160"

    copy, copy_h5 = tmp_path / "resized", tmp_path / "resized.h5"
    S, S_inv = np.diag([sx, sy, 1.0]), np.diag([1 / sx, 1 / sy, 1.0])
    with h5py.File(h5_path, "r") as src, h5py.File(copy_h5, "w") as dst:
        for seq in sequences:
            (copy / seq.name).mkdir(parents=True)
            for i in seq.images:
                key = f"{seq.name}/{i}.png"
                cv2.imwrite(str(copy / key), np.zeros((*target, 3), np.uint8))
                g, orig = dst.create_group(key), src[seq.relative(i)]
                g["keypoints"] = (orig["keypoints"][()] * [sx, sy]).astype(np.float32)
                g["scores"] = orig["scores"][()]
                g["descriptors"] = orig["descriptors"][()]
            for n, H in seq.homographies.items():
                _write_h(copy / seq.name / f"H_1_{n}", S @ H @ S_inv)
    ref = evaluate_reference(str(copy), str(copy_h5), 100)
    assert_agree(ours, ref)


# --------------------------------------------------------------------------- (b), (c) real data


@pytest.fixture(scope="module")
def oxford_original(tmp_path_factory):
    data_dir = _require_oxford()
    h5_path = tmp_path_factory.mktemp("oxford") / "sift.h5"
    write_sift_features(data_dir, h5_path)
    return evaluate_both(data_dir, h5_path, top_k=300)


@pytest.mark.slow
def test_crosscheck_oxford_original(oxford_original):
    ours, ref = oxford_original
    assert len(ours.pairs) == 20
    assert_agree(ours, ref)


PROTOCOL_FIGURES = {
    # PROTOCOL.md "A cross-check on the shared data", OpenCV 5.0.0 SIFT, top-300
    "original": {
        "repeatability": 0.4242,
        "localization_error": 1.0329,
        "homography_accuracy_1": 0.25,
        "homography_accuracy_3": 0.75,
        "homography_accuracy_5": 0.80,
        "matching_score": 0.2688,
        "mma_3": 0.5141,
    },
    "240x320": {
        "repeatability": 0.6033,
        "localization_error": 0.8251,
        "homography_accuracy_1": 0.65,
        "homography_accuracy_3": 0.85,
        "homography_accuracy_5": 0.85,
        "matching_score": 0.4136,
        "mma_3": 0.6583,
    },
}


def _assert_figures(summary: dict, size: str) -> None:
    if not OPENCV_50:
        pytest.skip(f"PROTOCOL.md figures are for OpenCV 5.0; this is OpenCV {cv2.__version__}")
    assert summary["pairs"] == 20
    for key, value in PROTOCOL_FIGURES[size].items():
        assert summary[key] == pytest.approx(value, abs=5e-4), (size, key, summary[key])


@pytest.mark.slow
def test_protocol_figures_original(oxford_original):
    _assert_figures(oxford_original[0].summary(), "original")


@pytest.mark.slow
def test_protocol_figures_240x320(tmp_path):
    """SIFT at 240x320, top-300 on the shared Oxford data gives PROTOCOL.md's figures.

    The same features, on a copy of the dataset resized beforehand (with the protocol's
    homography rule applied by hand), must also give identical reference figures.
    """
    data_dir = _require_oxford()
    size = (240, 320)
    sequences, skipped = load_dataset(data_dir)
    ours = evaluate_features(get_extractor("sift"), sequences, size, 300, skipped, progress=False)
    assert not ours.skipped
    assert ours.size == "240x320"
    _assert_figures(ours.summary(), "240x320")

    # resized copy for the reference implementation (which works at original sizes)
    small = tmp_path / "oxford_240x320"
    for seq in sequences:
        out = small / seq.name
        out.mkdir(parents=True)
        scales = {}
        for i, path in seq.images.items():
            rgb = read_image(path)
            h, w = rgb.shape[:2]
            scales[i] = (size[1] / w, size[0] / h)
            resized = cv2.resize(rgb, (size[1], size[0]), interpolation=cv2.INTER_AREA)
            cv2.imwrite(str(out / f"{i}.png"), cv2.cvtColor(resized, cv2.COLOR_RGB2BGR))
        for n, H in seq.homographies.items():
            (sx1, sy1), (sxn, syn) = scales[1], scales[n]
            _write_h(
                out / f"H_1_{n}", np.diag([sxn, syn, 1.0]) @ H @ np.diag([1 / sx1, 1 / sy1, 1])
            )
    h5_path = tmp_path / "sift_small.h5"
    write_sift_features(small, h5_path)
    ref = evaluate_reference(str(small), str(h5_path), 300)
    summary = ours.summary()
    for key in SCALAR_KEYS:
        assert summary[key] == pytest.approx(ref[key], abs=TOL), key
    mine = {(p.sequence, tuple(p.pair)): p for p in ours.pairs}
    for r in ref["per_pair"]:
        p = mine[(r["sequence"], tuple(r["pair"]))]
        assert _close(p.repeatability, r["repeatability"])
        assert _close(p.corner_error, r["corner_error"])
        assert _close(p.matching_score, r["matching_score"])
