"""COLMAP's own SIFT pipeline on a folder, as the reference for ``keypointlab reconstruct``:
pycolmap's feature extraction (one shared camera), exhaustive matching and incremental
mapping, all at their defaults.

    python benchmarks/colmap_own_sift.py ../shared/data/sfm/lund/images
"""

from __future__ import annotations

import collections
import sys
import tempfile
import time
from pathlib import Path

import pycolmap


def main() -> None:
    images = Path(sys.argv[1])
    pycolmap.logging.minloglevel = 2
    with tempfile.TemporaryDirectory() as tmp:
        db = str(Path(tmp) / "database.db")
        t0 = time.perf_counter()
        pycolmap.extract_features(db, str(images), camera_mode=pycolmap.CameraMode.SINGLE)
        pycolmap.match_exhaustive(db)
        database = pycolmap.Database.open(db)
        _, geometries = database.read_two_view_geometries()
        configs = collections.Counter(str(g.config) for g in geometries)
        focal = database.read_all_cameras()[0].params[0]
        database.close()
        models = pycolmap.incremental_mapping(db, str(images), tmp)
        best = max(models.values(), key=lambda r: r.num_reg_images(), default=None)
        n = len(list(images.iterdir()))
        reg = best.num_reg_images() if best else 0
        pts = best.num_points3D() if best else 0
        print(f"{images}: {reg}/{n} registered, {pts} points, {time.perf_counter() - t0:.0f} s")
        print(
            f"pairs by configuration (2 calibrated, 3 uncalibrated): {dict(configs)}"
        )
        print(f"focal length prior of the shared camera: {focal:.1f} px")


if __name__ == "__main__":
    main()
