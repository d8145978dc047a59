"""Structure from motion from any KeypointLab features, by COLMAP's incremental mapper.

``reconstruct(IMAGES, extractor, OUT)``:

1. *features* of every image at its own resolution (any extractor: classical, shipped or a
   checkpoint);
2. *pairs*: ``exhaustive`` (every pair) or ``retrieval:K`` (each image with its ``K`` best
   others by kNN votes of its descriptors in a retrieval index of all images,
   :mod:`keypointlab.retrieval`; without faiss, by a global descriptor: the L2-normalised
   mean of the image's L2-normalised local descriptors);
3. *matches* of each pair by mutual nearest neighbour (``mnn``) or with Lowe's ratio test
   (``ratio``, 0.8) on top;
4. a COLMAP database (``OUT/database.db``) from COLMAP's own image import: with known
   intrinsics (``cameras/``, Strecha format, :mod:`keypointlab.data.multiview`) one camera
   per image, kept fixed; otherwise one shared camera when every image has the same size
   (photos of one camera; COLMAP's AUTO mode gave each photo of a one-phone street walk
   its own camera), else COLMAP's AUTO mode, the focal length from EXIF when present; the
   keypoints (shifted by half a pixel: COLMAP puts the first pixel's centre at 0.5,
   KeypointLab at 0) and the matches; COLMAP's geometric verification
   (``verify_matches``) then its incremental mapping, both RANSAC-seeded by ``seed`` (the
   same inputs and thread count give the same model; on Lund another thread count gave
   another outcome). When the largest model leaves images out, both run
   again with the next seed, up to ``tries`` times in all, and the attempt registering the
   most images is kept (``summary["attempts"]``): on the Lund street walk how many images
   register depends on the seed (2 or 29 of 29, benchmarks/README.md);
5. ``OUT/sparse/0`` (the largest model, COLMAP binary format), ``OUT/summary.json``
   (``registered_images``, ``images``, ``points3d``, ``mean_track_length``,
   ``mean_reprojection_error``, ``seconds`` per stage; with known cameras also the
   camera-centre error after a similarity alignment of the registered centres onto the true
   ones, in the scene's units) and ``OUT/reconstruction.png`` (points and cameras from above
   and from the side).

Every output is written under a temporary name and renamed when whole; ``summary.json``
comes last, so a folder without it is an unfinished run.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from keypointlab import limits
from keypointlab.api import match
from keypointlab.data.images import read_image
from keypointlab.data.multiview import Camera, scene_cameras, scene_images
from keypointlab.errors import InputError
from keypointlab.features.base import Extractor, Features
from keypointlab.geometry.alignment import similarity_transform, upright_rotation
from keypointlab.io.outputs import atomic_output

logger = logging.getLogger(__name__)

MATCHERS = ("mnn", "ratio")
RATIO = 0.8
MAX_IMAGES = 5000  # an exhaustive pair list grows with the square
MAX_TRIES = 20  # verification and mapping attempts (seeds)
FAR_OFF = 10.0  # a camera this many times the median distance from the median centre


def _pycolmap() -> Any:
    try:
        import pycolmap
    except ImportError:
        raise InputError(
            "reconstruct needs pycolmap: pip install 'keypointlab[sfm]' (or pip install pycolmap)"
        ) from None
    pycolmap.logging.minloglevel = 2  # COLMAP's own log: errors only (progress bars are ours)
    return pycolmap


def parse_pairs(spec: str, n_images: int) -> tuple[str, int]:
    """``exhaustive`` or ``retrieval:K`` (``1 <= K < n_images``) -> ``(kind, K)``."""
    if spec == "exhaustive":
        return "exhaustive", 0
    kind, _, k = spec.partition(":")
    if kind == "retrieval" and k.isdigit() and int(k) >= 1:
        return "retrieval", min(int(k), max(n_images - 1, 1))
    raise InputError(f"--pairs {spec!r}: use 'exhaustive' or 'retrieval:K' with K >= 1")


def check_matcher(matcher: str) -> None:
    """``matcher`` must be one of :data:`MATCHERS`."""
    if matcher not in MATCHERS:
        raise InputError(f"--matcher {matcher!r}: use one of {', '.join(MATCHERS)}")


def global_descriptors(features: Sequence[Features]) -> np.ndarray:
    """``(N, D)``: each image's L2-normalised mean of its L2-normalised local descriptors."""
    out = []
    for f in features:
        d = f.descriptors.astype(np.float64)
        d = d / np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-12)
        g = d.mean(0) if len(d) else np.zeros(f.descriptors.shape[1])
        out.append(g / max(np.linalg.norm(g), 1e-12))
    return np.stack(out)


def image_pairs(features: Sequence[Features], kind: str, k: int) -> list[tuple[int, int]]:
    """Index pairs ``(i, j)``, ``i < j``, sorted: all of them, or each image's ``k`` best
    others, made symmetric: by kNN votes of the retrieval index
    (:func:`keypointlab.retrieval.query.rank`, votes only: COLMAP verifies the matches)
    when faiss is installed, else by cosine similarity of :func:`global_descriptors`."""
    n = len(features)
    if kind == "exhaustive":
        return [(i, j) for i in range(n) for j in range(i + 1, n)]
    if importlib.util.find_spec("faiss") is not None:
        neighbours = _voted_neighbours(features, k)
    else:
        logger.info("retrieval pairs by mean descriptors (pip install faiss-cpu for kNN votes)")
        g = global_descriptors(features)
        sim = g @ g.T
        np.fill_diagonal(sim, -np.inf)
        neighbours = [np.argsort(-sim[i], kind="stable")[:k] for i in range(n)]
    return sorted({(min(i, int(j)), max(i, int(j))) for i in range(n) for j in neighbours[i]})


def _voted_neighbours(features: Sequence[Features], k: int) -> list[np.ndarray]:
    """Each image's ``k`` best others by kNN votes of all images' descriptors."""
    from keypointlab.retrieval.index import index_features
    from keypointlab.retrieval.query import rank

    names = [str(i) for i in range(len(features))]
    index = index_features(features, names, [""] * len(features), "reconstruct")
    return [rank(index, f, votes_only=True, exclude=i).images[:k] for i, f in enumerate(features)]


def _known_camera(pycolmap: Any, camera_id: int, known: Camera, size: tuple[int, int]) -> Any:
    """A PINHOLE camera of the known ``K`` (rescaled to ``size`` when the image was resized
    from the camera's), with COLMAP's pixel convention (first pixel centre at 0.5)."""
    h, w = size
    sx, sy = w / known.size[1], h / known.size[0]
    K = known.K
    cam = pycolmap.Camera(
        model="PINHOLE",
        width=w,
        height=h,
        params=[K[0, 0] * sx, K[1, 1] * sy, (K[0, 2] + 0.5) * sx, (K[1, 2] + 0.5) * sy],
    )
    cam.camera_id = camera_id
    cam.has_prior_focal_length = True
    return cam


def _database(
    pycolmap: Any,
    path: Path,
    image_dir: Path,
    names: Sequence[str],
    features: Sequence[Features],
    cameras: dict[str, Camera] | None,
    pairs: Sequence[tuple[int, int]],
    matches: Sequence[np.ndarray],
) -> None:
    """COLMAP's own image import (cameras, rigs and frames; the focal length prior from
    EXIF), the known cameras written over its guesses, then keypoints and matches."""
    if cameras:
        mode = pycolmap.CameraMode.PER_IMAGE  # each its own known camera
    elif len({tuple(f.image_size) for f in features}) == 1:
        mode = pycolmap.CameraMode.SINGLE  # one size: taken as one camera (a walk, a turntable)
    else:
        mode = pycolmap.CameraMode.AUTO
    pycolmap.Database.open(str(path)).close()  # import_images needs the file to exist
    pycolmap.import_images(str(path), str(image_dir), mode, list(names))
    db = pycolmap.Database.open(str(path))
    try:
        by_name = {im.name: im for im in db.read_all_images()}
        ids = []
        for name, f in zip(names, features, strict=True):
            image = by_name.get(name)
            if image is None:
                raise InputError(f"{image_dir / name}: COLMAP could not read this image")
            cam = db.read_camera(image.camera_id)
            if (cam.height, cam.width) != tuple(f.image_size):
                raise InputError(
                    f"{image_dir / name}: COLMAP reads it as {cam.height}x{cam.width}, the "
                    f"features are of a {f.image_size[0]}x{f.image_size[1]} image (an EXIF "
                    "orientation tag? store the image upright)"
                )
            if cameras:
                db.update_camera(
                    _known_camera(pycolmap, image.camera_id, cameras[name], f.image_size)
                )
            db.write_keypoints(image.image_id, (f.keypoints + 0.5).astype(np.float32))
            ids.append(image.image_id)
        for (i, j), m in zip(pairs, matches, strict=True):
            if len(m):
                db.write_matches(ids[i], ids[j], m.astype(np.uint32))
    finally:
        db.close()


def far_off(centres: np.ndarray, factor: float = FAR_OFF) -> np.ndarray:
    """``(M,)`` mask of camera centres ``(M, 3)`` farther from their median than ``factor``
    times the median such distance: registrations that are most likely wrong (a scene is
    rarely ten times wider on one side than its typical camera spread). None below 4."""
    centres = np.asarray(centres, np.float64).reshape(-1, 3)
    if len(centres) < 4:
        return np.zeros(len(centres), bool)
    d = np.linalg.norm(centres - np.median(centres, axis=0), axis=1)
    return d > factor * max(float(np.median(d)), 1e-12)


def _centres(rec: Any) -> np.ndarray:
    return np.array(
        [im.projection_center() for im in rec.images.values() if im.has_pose], np.float64
    ).reshape(-1, 3)


def _model_summary(rec: Any | None) -> dict[str, Any]:
    """The summary's model figures of ``rec`` (zeros when no model was built)."""
    points = int(rec.num_points3D()) if rec is not None else 0
    return {
        "registered_images": int(rec.num_reg_images()) if rec is not None else 0,
        "cameras_far_off": int(far_off(_centres(rec)).sum()) if rec is not None else 0,
        "points3d": points,
        "mean_track_length": float(rec.compute_mean_track_length()) if points else 0.0,
        "mean_reprojection_error": float(rec.compute_mean_reprojection_error()) if points else 0.0,
    }


def camera_centre_errors(
    rec: Any, cameras: dict[str, Camera]
) -> tuple[dict[str, Any], Callable[[np.ndarray], np.ndarray] | None]:
    """Registered camera centres aligned onto the true ones by a similarity: their error
    (median, mean, max, and the share within 1% of the true cameras' extent) and the
    alignment as a function of ``(N, 3)`` points (``None`` below 3 registered cameras)."""
    est, true = [], []
    for image in rec.images.values():
        if image.has_pose and image.name in cameras:
            est.append(np.asarray(image.projection_center(), np.float64))
            true.append(cameras[image.name].centre)
    if len(est) < 3:
        return {"aligned_cameras": len(est)}, None
    true_all = np.stack([c.centre for c in cameras.values()])
    extent = float(np.linalg.norm(true_all.max(0) - true_all.min(0)))
    s, R, t = similarity_transform(np.stack(est), np.stack(true))

    def align(x: np.ndarray) -> np.ndarray:
        return s * np.asarray(x, np.float64).reshape(-1, 3) @ R.T + t

    err = np.linalg.norm(np.stack(true) - align(np.stack(est)), axis=1)
    return {
        "aligned_cameras": len(est),
        "centre_error_median": float(np.median(err)),
        "centre_error_mean": float(err.mean()),
        "centre_error_max": float(err.max()),
        "scene_extent": extent,
        "within_1_percent_of_extent": float((err <= 0.01 * extent).mean()),
    }, align


def _figure(
    rec: Any, cameras: dict[str, Camera] | None, align: Any, path: Path, title: str
) -> None:
    from keypointlab.viz.plots import reconstruction_figure, save_figure

    points = np.array([p.xyz for p in rec.points3D.values()], np.float64).reshape(-1, 3)
    centres = _centres(rec)
    true = None
    if align is not None and cameras:
        points, centres = align(points), align(centres)
        true = np.stack([c.centre for c in cameras.values()])
    elif len(centres):  # COLMAP's frame is its first camera's (y down): turn it upright
        posed = [im for im in rec.images.values() if im.has_pose]
        up = upright_rotation(np.stack([im.cam_from_world().rotation.matrix().T for im in posed]))
        points, centres = points @ up.T, centres @ up.T
    far = far_off(centres)
    save_figure(
        reconstruction_figure(points, centres[~far], true, title, hidden=int(far.sum())), path
    )


def verify_and_map(
    pycolmap: Any,
    db: Path,
    image_dir: Path,
    pairs_txt: Path,
    sparse: Path,
    seed: int,
    threads: int,
    known: bool,
) -> tuple[Any, int, tuple[float, float]]:
    """COLMAP's geometric verification then incremental mapping of ``db``, both seeded by
    ``seed``: the largest model (``None`` without one), the number of models and the
    seconds of each step."""
    t0 = time.perf_counter()
    verify = pycolmap.TwoViewGeometryOptions()
    verify.ransac.random_seed = seed  # COLMAP's default (-1) draws a new seed each run
    pycolmap.verify_matches(str(db), str(pairs_txt), verify)
    t1 = time.perf_counter()
    options = pycolmap.IncrementalPipelineOptions()
    options.num_threads = threads
    options.random_seed = seed
    if known:  # known intrinsics stay fixed
        options.ba_refine_focal_length = False
        options.ba_refine_principal_point = False
        options.ba_refine_extra_params = False
    sparse.mkdir()
    models = pycolmap.incremental_mapping(str(db), str(image_dir), str(sparse), options)
    best = max(models.values(), key=lambda r: r.num_reg_images(), default=None)
    return best, len(models), (t1 - t0, time.perf_counter() - t1)


def reconstruct_from_features(
    image_dir: str | Path,
    names: Sequence[str],
    features: Sequence[Features],
    out: str | Path,
    cameras: dict[str, Camera] | None = None,
    pairs: str = "exhaustive",
    matcher: str = "mnn",
    matches: Sequence[np.ndarray] | None = None,
    pair_list: Sequence[tuple[int, int]] | None = None,
    threads: int = -1,
    progress: bool = True,
    seconds: dict[str, float] | None = None,
    seed: int = 0,
    tries: int = 3,
    method: str = "",
) -> dict[str, Any]:
    """Steps 2-5 of the module docstring from features already extracted (``names[i]`` the
    file name in ``image_dir`` of ``features[i]``); ``matches`` with ``pair_list`` replaces
    the matching step (index pairs into the features of each pair)."""
    pycolmap = _pycolmap()
    check_matcher(matcher)
    limits.check_count(tries, "tries", 1, MAX_TRIES)
    out = Path(out)
    seconds = dict(seconds or {})
    if matches is None:
        kind, k = parse_pairs(pairs, len(names))
        t0 = time.perf_counter()
        pair_list = image_pairs(features, kind, k)
        ratio = RATIO if matcher == "ratio" else None
        matches = [
            match(features[i], features[j], mutual=True, ratio=ratio)
            for i, j in tqdm(pair_list, desc="match", unit="pair", disable=not progress)
        ]
        seconds["match"] = time.perf_counter() - t0
    elif pair_list is None or len(pair_list) != len(matches):
        raise ValueError("reconstruct_from_features: give pair_list with matches, one per pair")
    out.mkdir(parents=True, exist_ok=True)
    work = out / ".work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    try:
        db_path = work / "database.db"
        t0 = time.perf_counter()
        _database(pycolmap, db_path, Path(image_dir), names, features, cameras, pair_list, matches)
        pairs_txt = work / "pairs.txt"
        pairs_txt.write_text("".join(f"{names[i]} {names[j]}\n" for i, j in pair_list))
        seconds["import"] = time.perf_counter() - t0
        seconds["verify"] = seconds["mapping"] = 0.0
        best, best_db, best_seed, n_models, attempts = None, db_path, seed, 0, []
        best_registered = -1
        for attempt in range(tries):
            try_db = work / f"try{attempt}.db"
            shutil.copyfile(db_path, try_db)
            rec, models, sec = verify_and_map(
                pycolmap,
                try_db,
                image_dir,
                pairs_txt,
                work / f"sparse{attempt}",
                seed + attempt,
                threads,
                bool(cameras),
            )
            seconds["verify"] += sec[0]
            seconds["mapping"] += sec[1]
            registered = rec.num_reg_images() if rec is not None else 0
            attempts.append({"seed": seed + attempt, "registered_images": registered})
            if registered > best_registered:
                best, best_db, best_seed, n_models = rec, try_db, seed + attempt, models
                best_registered = registered
            if best_registered == len(names):
                break
        summary: dict[str, Any] = {
            "method": method,
            "images": len(names),
            "pairs": len(pair_list),
            "matches_per_pair": float(np.mean([len(m) for m in matches])) if matches else 0.0,
            "models": n_models,
            **_model_summary(best),
            "intrinsics": "known, fixed" if cameras else "estimated (COLMAP default start)",
            "seconds": {k: round(v, 3) for k, v in seconds.items()},
            "seed": best_seed,
            "attempts": attempts,
        }
        align = None
        if best is not None and cameras:
            summary["cameras"], align = camera_centre_errors(best, cameras)
        shutil.rmtree(out / "sparse", ignore_errors=True)
        (out / "sparse").mkdir()
        if best is not None:
            with atomic_output(out / "sparse" / "0") as tmp:
                tmp.mkdir()
                best.write(str(tmp))
        with atomic_output(out / "database.db") as tmp:
            shutil.copyfile(best_db, tmp)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if best is not None:
        _figure(best, cameras, align, out / "reconstruction.png", _title(summary))
    with atomic_output(out / "summary.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=1))
    return summary


def _title(s: dict[str, Any]) -> str:
    return (
        f"{s['method']}: {s['registered_images']}/{s['images']} images, "
        f"{s['points3d']} points, track {s['mean_track_length']:.2f}, "
        f"reproj. {s['mean_reprojection_error']:.2f} px"
    )


def reconstruct(
    images: str | Path,
    extractor: Extractor,
    out: str | Path,
    pairs: str = "exhaustive",
    matcher: str = "mnn",
    max_keypoints: int | None = None,
    threads: int = -1,
    progress: bool = True,
    extract: Callable[[Extractor, Path], Features] | None = None,
    seed: int = 0,
    tries: int = 3,
) -> dict[str, Any]:
    """Structure from motion of a folder of images (or a scene folder with ``images/`` and
    ``cameras/``) with ``extractor``'s features; returns the summary (module docstring).

    Raises:
        InputError: no images, too many, a bad ``pairs``/``matcher``, a malformed camera
            file, or pycolmap missing.
    """
    _pycolmap()  # fail before any work
    image_dir, paths = scene_images(images)
    if len(paths) > MAX_IMAGES:
        raise InputError(f"{images}: {len(paths)} images, more than the limit of {MAX_IMAGES}")
    if len(paths) < 2:
        raise InputError(f"{images}: structure from motion needs at least 2 images")
    parse_pairs(pairs, len(paths))
    check_matcher(matcher)
    cameras = scene_cameras(images, paths)
    t0 = time.perf_counter()
    features = []
    for path in tqdm(paths, desc=f"extract {extractor.name}", unit="image", disable=not progress):
        f = extract(extractor, path) if extract else extractor.extract(read_image(path))
        if max_keypoints and len(f) > max_keypoints:
            f = f.top_k(max_keypoints)
        features.append(f)
    seconds = {"extract": time.perf_counter() - t0}
    return reconstruct_from_features(
        image_dir,
        [p.name for p in paths],
        features,
        out,
        cameras=cameras,
        pairs=pairs,
        matcher=matcher,
        threads=threads,
        progress=progress,
        seconds=seconds,
        method=extractor.name,
        seed=seed,
        tries=tries,
    )
