#!/usr/bin/env bash
# Relative-pose benchmark (keypointlab evaluate --task pose) on the 7-Scenes RedKitchen
# frames of ../shared/data/depth: up to 100 frame pairs 1..12 positions apart (5..60 raw
# frames) whose view overlap from depth + pose is 0.4..0.8, at 480x640 with the top 1000
# keypoints, mutual nearest-neighbour matches, essential matrix by RANSAC at 1 px.
# One thread (the other core runs other benchmarks). Run from the repository root.
set -euo pipefail
OUT=benchmarks/results/pose
mkdir -p "$OUT"
OMP_NUM_THREADS=1 keypointlab evaluate --task pose --data ../shared/data/depth/7scenes_redkitchen \
    --features sift orb kp2d --size 480x640 --max-pairs 100 --out "$OUT" --quiet \
    2>&1 | tee "$OUT/benchmark.log"
