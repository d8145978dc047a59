"""How far RANSAC-inlier SIFT matches on 7-Scenes sit from their depth reprojection, with the
depth camera's K (585 px) for the colour images and with other colour focal lengths: a check
of how well the colour images are registered to depth (see benchmarks/results/pose/NOTES.md).

usage: OMP_NUM_THREADS=1 python benchmarks/pose_colour_check.py [DATA] [--every 10]
"""

from __future__ import annotations

import argparse

import numpy as np

from keypointlab.data.posepairs import load_pose_pairs, load_view_at
from keypointlab.features import get_extractor
from keypointlab.geometry.epipolar import depth_reprojection_errors, estimate_relative_pose
from keypointlab.matching import match_nn


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("data", nargs="?", default="../shared/data/depth/7scenes_redkitchen")
    ap.add_argument("--every", type=int, default=10, help="every n-th benchmark pair")
    a = ap.parse_args()
    pairs = load_pose_pairs(a.data)[:: a.every]
    sift = get_extractor("sift")
    inliers = []
    for p in pairs:
        (im0, d0, K), (im1, d1, _) = (load_view_at(v, (480, 640)) for v in (p.view0, p.view1))
        f0, f1 = sift.extract(im0).top_k(1000), sift.extract(im1).top_k(1000)
        m = match_nn(f0.descriptors, f1.descriptors).numpy()
        i = np.flatnonzero(m >= 0)
        p0, p1 = f0.keypoints[i], f1.keypoints[m[i]]
        est = estimate_relative_pose(p0, p1, K, K)
        inliers.append((p0[est.inliers], p1[est.inliers], d0, d1, K, p.T_0to1))
    print(f"{len(pairs)} pairs; median over pairs of the RANSAC inliers' ...")
    for focal in (500, 525, 550, 585):
        med, within = [], []
        for p0, p1, d0, d1, K, T in inliers:
            Kc = K.copy()
            Kc[0, 0] = Kc[1, 1] = focal
            M = K @ np.linalg.inv(Kc)  # colour pixel -> depth pixel

            def to_depth(p: np.ndarray, M: np.ndarray = M) -> np.ndarray:
                return (np.c_[p, np.ones(len(p))] @ M.T)[:, :2]

            err, known = depth_reprojection_errors(to_depth(p0), to_depth(p1), d0, d1, K, K, T)
            med.append(np.median(err[known]))
            within.append((err[known] <= 5).mean())
        print(
            f"colour focal {focal}: median reprojection error {np.median(med):.1f} px, "
            f"within 5 px {np.median(within):.3f}"
        )


if __name__ == "__main__":
    main()
