"""Independent, deliberately naive reference implementation of the evaluation protocol.

Written only from ``PROTOCOL.md`` (plus the project's interpretation decisions) and used
solely as a cross-check in tests. It does not import anything from ``keypointlab``.
Clarity over speed: explicit loops, float64 everywhere, images at their original sizes.

Decisions taken where the protocol text leaves room (see also the function docstrings):

* Descriptor nearest neighbours are found on squared Euclidean distances computed
  element-wise in float64 (same argmin as the Euclidean distance, without rounding ties
  that a square root could introduce); ``argmin`` takes the first index on ties.
* A warped point is ``(H @ [x, y, 1])[:2] / (H @ [x, y, 1])[2]`` with no special case for
  points mapped behind the camera.
* Localization error of the dataset is 0.0 when no pair has a value; the number of pairs
  without a value is reported separately.
* A homography estimate whose corner error is not finite counts as a failure (``inf``).
"""

from __future__ import annotations

import os

import cv2
import h5py
import numpy as np

IMAGE_EXTS = ("ppm", "pgm", "png", "jpg", "jpeg", "tif")
THRESHOLD = 3.0
MMA_THRESHOLDS = list(range(1, 11))
HOMOGRAPHY_EPS = (1, 3, 5)


# --------------------------------------------------------------------------- data loading


def _find_image(folder: str, stem: str) -> str | None:
    for ext in IMAGE_EXTS:
        for e in (ext, ext.upper()):
            path = os.path.join(folder, stem + "." + e)
            if os.path.isfile(path):
                return path
    return None


def _sequence_files(folder: str):
    """Return [(image_1_path, image_n_path, H_path, n)] for a sequence folder, or None."""
    for img_stem, h_name in (("{}", "H_1_{}"), ("img{}", "H1to{}p")):
        first = _find_image(folder, img_stem.format(1))
        if first is None:
            continue
        pairs = []
        for n in range(2, 7):
            other = _find_image(folder, img_stem.format(n))
            h_path = os.path.join(folder, h_name.format(n))
            if other is not None and os.path.isfile(h_path):
                pairs.append((first, other, h_path, n))
        if pairs:
            return pairs
    return None


def _find_sequences(data_dir: str):
    """All sequence folders below data_dir (recursively), sorted by relative path."""
    found = []
    for root, dirs, _files in os.walk(data_dir):
        dirs.sort()
        pairs = _sequence_files(root)
        if pairs is not None:
            found.append((root, pairs))
    found.sort(key=lambda item: os.path.relpath(item[0], data_dir))
    return found


def _read_homography(path: str) -> np.ndarray:
    with open(path) as f:
        values = [float(v) for v in f.read().split()]
    return np.array(values, dtype=np.float64).reshape(3, 3)


def _image_size(path: str):
    """(width, height) of the image file at its original size."""
    img = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if img is None:
        raise OSError(f"cannot read image {path}")
    h, w = img.shape[:2]
    return w, h


def _h5_key(path: str, data_dir: str) -> str:
    return os.path.relpath(path, data_dir).replace(os.sep, "/")


def _read_features(h5file, key: str):
    group = h5file[key]
    kps = np.asarray(group["keypoints"][()], dtype=np.float64).reshape(-1, 2)
    n = kps.shape[0]
    scores = np.asarray(group["scores"][()], dtype=np.float64).reshape(-1)
    desc = np.asarray(group["descriptors"][()], dtype=np.float64)
    if n == 0:
        dim = desc.shape[-1] if desc.ndim == 2 else 1
        desc = np.zeros((0, dim), dtype=np.float64)
    else:
        desc = desc.reshape(n, -1)
    if scores.shape[0] != n:
        raise ValueError(f"{key}: {n} keypoints but {scores.shape[0]} scores")
    return kps, scores, desc


# --------------------------------------------------------------------------- geometry helpers


def _warp(points: np.ndarray, H: np.ndarray) -> np.ndarray:
    out = np.zeros((points.shape[0], 2), dtype=np.float64)
    for i in range(points.shape[0]):
        v = H @ np.array([points[i, 0], points[i, 1], 1.0], dtype=np.float64)
        out[i, 0] = v[0] / v[2]
        out[i, 1] = v[1] / v[2]
    return out


def _inside(points: np.ndarray, width: int, height: int) -> np.ndarray:
    """Boolean mask: 0 <= x <= W-1 and 0 <= y <= H-1 (pixel-centre convention)."""
    mask = np.zeros(points.shape[0], dtype=bool)
    for i in range(points.shape[0]):
        x, y = points[i]
        mask[i] = (0.0 <= x <= width - 1) and (0.0 <= y <= height - 1)
    return mask


def _point_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Euclidean distance matrix between point sets a (N,2) and b (M,2)."""
    d = np.zeros((a.shape[0], b.shape[0]), dtype=np.float64)
    for i in range(a.shape[0]):
        d[i] = np.sqrt(((b - a[i]) ** 2).sum(axis=1))
    return d


def _descriptor_sq_distances(d1: np.ndarray, d2: np.ndarray) -> np.ndarray:
    """Squared Euclidean descriptor distances, element-wise in float64."""
    d = np.zeros((d1.shape[0], d2.shape[0]), dtype=np.float64)
    for i in range(d1.shape[0]):
        d[i] = ((d2 - d1[i]) ** 2).sum(axis=1)
    return d


def _top_k(kps, scores, desc, k: int):
    order = np.argsort(-scores, kind="stable")[:k]
    return kps[order], scores[order], desc[order]


def _mutual_nn(d1: np.ndarray, d2: np.ndarray):
    """List of (i, j) with j = argmin_j D_ij and i = argmin_i D_ij."""
    if d1.shape[0] == 0 or d2.shape[0] == 0:
        return []
    D = _descriptor_sq_distances(d1, d2)
    nn12 = np.argmin(D, axis=1)
    nn21 = np.argmin(D, axis=0)
    return [(i, int(nn12[i])) for i in range(D.shape[0]) if nn21[nn12[i]] == i]


# --------------------------------------------------------------------------- per-pair metrics


def _visible_top_k(f1, f2, H, size1, size2, k):
    kps1, sc1, de1 = f1
    kps2, sc2, de2 = f2
    keep1 = _inside(_warp(kps1, H), *size2)
    keep2 = _inside(_warp(kps2, np.linalg.inv(H)), *size1)
    v1 = _top_k(kps1[keep1], sc1[keep1], de1[keep1], k)
    v2 = _top_k(kps2[keep2], sc2[keep2], de2[keep2], k)
    return v1, v2


def _repeatability(v1, v2, H):
    """Return (repeatability, localization_error or None)."""
    kps1, kps2 = v1[0], v2[0]
    n1, n2 = kps1.shape[0], kps2.shape[0]
    if n1 == 0 or n2 == 0:  # no distances at all (covers N1 + N2 == 0)
        return 0.0, None
    D = _point_distances(_warp(kps1, H), kps2)
    row_min = D.min(axis=1)
    col_min = D.min(axis=0)
    c1 = int((row_min <= THRESHOLD).sum())
    c2 = int((col_min <= THRESHOLD).sum())
    rep = (c1 + c2) / (n1 + n2)
    close = [float(v) for v in row_min if v <= THRESHOLD]
    close += [float(v) for v in col_min if v <= THRESHOLD]
    loc = float(np.mean(close)) if close else None
    return float(rep), loc


def _corner_error(v1, v2, H, size1) -> float:
    matches = _mutual_nn(v1[2], v2[2])
    if len(matches) < 4:
        return float("inf")
    p1 = np.array([v1[0][i] for i, _ in matches], dtype=np.float64)
    p2 = np.array([v2[0][j] for _, j in matches], dtype=np.float64)
    cv2.setRNGSeed(0)
    H_est, _mask = cv2.findHomography(p1, p2, cv2.RANSAC, 3.0, maxIters=5000)
    if H_est is None:
        return float("inf")
    w, h = size1
    corners = np.array([[0, 0], [w - 1, 0], [0, h - 1], [w - 1, h - 1]], dtype=np.float64)
    est = _warp(corners, np.asarray(H_est, dtype=np.float64))
    true = _warp(corners, H)
    err = float(np.mean(np.sqrt(((est - true) ** 2).sum(axis=1))))
    return err if np.isfinite(err) else float("inf")


def _one_way_matching_score(kps_a, desc_a, kps_b, desc_b, H_b_to_a, size_a) -> float:
    """NN from each point of a into b; the match is warped back into a and checked."""
    if kps_a.shape[0] == 0 or kps_b.shape[0] == 0:
        return 0.0
    D = _descriptor_sq_distances(desc_a, desc_b)
    nn = np.argmin(D, axis=1)
    warped = _warp(kps_b[nn], H_b_to_a)
    vis = _inside(warped, *size_a)
    dist = np.sqrt(((warped - kps_a) ** 2).sum(axis=1))
    correct = vis & (dist < THRESHOLD)
    return int(correct.sum()) / max(int(vis.sum()), 1)


def _matching_score(t1, t2, H, size1, size2) -> float:
    s1 = _one_way_matching_score(t1[0], t1[2], t2[0], t2[2], np.linalg.inv(H), size1)
    s2 = _one_way_matching_score(t2[0], t2[2], t1[0], t1[2], H, size2)
    return (s1 + s2) / 2.0


def _mma(t1, t2, H):
    matches = _mutual_nn(t1[2], t2[2])
    if not matches:
        return [0.0 for _ in MMA_THRESHOLDS]
    p1 = np.array([t1[0][i] for i, _ in matches], dtype=np.float64)
    p2 = np.array([t2[0][j] for _, j in matches], dtype=np.float64)
    err = np.sqrt(((_warp(p1, H) - p2) ** 2).sum(axis=1))
    return [float((err <= thr).sum()) / len(matches) for thr in MMA_THRESHOLDS]


# --------------------------------------------------------------------------- aggregation


def _auc(errors, threshold: float) -> float:
    """glue-factory style AUC of the corner-error recall curve up to ``threshold``."""
    errors = np.sort(np.asarray(errors, dtype=np.float64))
    n = errors.shape[0]
    if n == 0:
        return 0.0
    recall = (np.arange(n) + 1) / n
    errors = np.concatenate([[0.0], errors])
    recall = np.concatenate([[0.0], recall])
    last_index = int(np.searchsorted(errors, threshold))
    r = np.concatenate([recall[:last_index], [recall[last_index - 1]]])
    e = np.concatenate([errors[:last_index], [threshold]])
    area = 0.0
    for i in range(1, e.shape[0]):
        area += (e[i] - e[i - 1]) * (r[i] + r[i - 1]) / 2.0
    return float(area / threshold)


def _split(sequence_name: str) -> str:
    if sequence_name.startswith("i_"):
        return "illumination"
    if sequence_name.startswith("v_"):
        return "viewpoint"
    return "other"


def _mean(values) -> float:
    return float(np.mean(values)) if len(values) else 0.0


def evaluate_reference(data_dir: str, features_h5: str, top_k: int) -> dict:
    """Evaluate the features in ``features_h5`` on the sequences below ``data_dir``.

    Images are evaluated at their original sizes. Returns the dataset means (plain means
    over pairs; localization error over the pairs that have one) plus ``per_pair``
    details. Extra keys (beyond the
    required ones): ``mma_by_split`` (split -> list of 10 floats) and ``pairs_by_split``.
    """
    per_pair = []
    with h5py.File(features_h5, "r") as h5file:
        for folder, pairs in _find_sequences(data_dir):
            seq = os.path.relpath(folder, data_dir).replace(os.sep, "/")
            for path1, path2, h_path, n in pairs:
                H = _read_homography(h_path)
                size1 = _image_size(path1)
                size2 = _image_size(path2)
                f1 = _read_features(h5file, _h5_key(path1, data_dir))
                f2 = _read_features(h5file, _h5_key(path2, data_dir))

                v1, v2 = _visible_top_k(f1, f2, H, size1, size2, top_k)
                rep, loc = _repeatability(v1, v2, H)
                corner = _corner_error(v1, v2, H, size1)

                t1 = _top_k(*f1, top_k)
                t2 = _top_k(*f2, top_k)
                ms = _matching_score(t1, t2, H, size1, size2)
                mma = _mma(t1, t2, H)

                per_pair.append(
                    {
                        "sequence": seq,
                        "split": _split(os.path.basename(folder)),
                        "pair": (1, n),
                        "repeatability": rep,
                        "localization_error": loc,
                        "corner_error": corner,
                        "matching_score": float(ms),
                        "mma": mma,
                    }
                )

    corner_errors = [p["corner_error"] for p in per_pair]
    locs = [p["localization_error"] for p in per_pair if p["localization_error"] is not None]
    result = {
        "repeatability": _mean([p["repeatability"] for p in per_pair]),
        "localization_error": _mean(locs),
        "matching_score": _mean([p["matching_score"] for p in per_pair]),
        "pairs": len(per_pair),
        "pairs_without_localization": len(per_pair) - len(locs),
    }
    for eps in HOMOGRAPHY_EPS:
        hits = [1.0 if e <= eps else 0.0 for e in corner_errors]
        result[f"homography_accuracy_{eps}"] = _mean(hits)
        result[f"homography_auc_{eps}"] = _auc(corner_errors, float(eps))
    result["mma"] = [_mean([p["mma"][t] for p in per_pair]) for t in range(len(MMA_THRESHOLDS))]
    result["mma_3"] = result["mma"][2]
    result["mma_by_split"] = {}
    result["pairs_by_split"] = {}
    for split in ("illumination", "viewpoint", "other"):
        chosen = [p for p in per_pair if p["split"] == split]
        result["pairs_by_split"][split] = len(chosen)
        result["mma_by_split"][split] = [
            _mean([p["mma"][t] for p in chosen]) for t in range(len(MMA_THRESHOLDS))
        ]
    result["per_pair"] = per_pair
    return result
