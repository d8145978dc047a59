"""How much a reconstruction depends on COLMAP's RANSAC seed: the database of a finished
``keypointlab reconstruct`` run (its keypoints and matches, so features and matching are
not redone) verified and mapped again with each seed.

    python benchmarks/sfm_seeds.py benchmarks/results/sfm/lund/sift --seeds 0 1 2 3 \\
        --threads 1 --out benchmarks/results/sfm/lund_seeds.md

``reconstruct`` seeds both steps with ``--seed`` (0 by default); COLMAP's own default draws
a new seed for each verification run. Prints and writes one row per seed: registered
images of the largest model, number of models, points.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import pycolmap

from keypointlab.data.multiview import scene_cameras, scene_images
from keypointlab.sfm.reconstruct import verify_and_map


def run(database: Path, image_dir: Path, seed: int, threads: int, known: bool) -> dict:
    """Verification and incremental mapping (:func:`verify_and_map`, as ``reconstruct``
    runs them) of a copy of ``database`` without its two-view geometries, with ``seed``."""
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "database.db"
        shutil.copyfile(database, db)
        handle = pycolmap.Database.open(str(db))
        by_id = {im.image_id: im.name for im in handle.read_all_images()}
        pair_ids = handle.read_all_matches()[0]
        handle.clear_two_view_geometries()
        handle.close()
        pairs = Path(tmp) / "pairs.txt"
        lines = []
        for pair_id in pair_ids:
            i, j = pycolmap.pair_id_to_image_pair(pair_id)
            lines.append(f"{by_id[i]} {by_id[j]}\n")
        pairs.write_text("".join(lines))
        best, models, seconds = verify_and_map(
            pycolmap, db, image_dir, pairs, Path(tmp) / "sparse", seed, threads, known
        )
        return {
            "seed": seed,
            "registered": best.num_reg_images() if best else 0,
            "images": len(by_id),
            "models": models,
            "points": best.num_points3D() if best else 0,
            "seconds": sum(seconds),
        }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("run", type=Path, help="a reconstruct --out folder (with database.db)")
    ap.add_argument("--images", type=Path, help="its image folder (default: from the run's path)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    pycolmap.logging.minloglevel = 2
    images = args.images or Path("../shared/data/sfm") / args.run.parent.name
    image_dir, paths = scene_images(images)
    known = bool(scene_cameras(images, paths))  # known intrinsics stay fixed, as in reconstruct
    lines = [
        f"`python benchmarks/sfm_seeds.py {args.run} --seeds {' '.join(map(str, args.seeds))} "
        f"--threads {args.threads}`: the run's matches verified and mapped again per seed.",
        "",
        "| seed | registered | models | points | verify + mapping s |",
        "|---|---|---|---|---|",
    ]
    for seed in args.seeds:
        r = run(args.run / "database.db", image_dir, seed, args.threads, known)
        lines.append(
            f"| {r['seed']} | {r['registered']}/{r['images']} | {r['models']} | {r['points']} | "
            f"{r['seconds']:.0f} |"
        )
        print(lines[-1], flush=True)
    if args.out:
        args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
