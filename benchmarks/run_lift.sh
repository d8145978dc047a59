#!/usr/bin/env bash
# LIFT: train the three stages (descriptor, orientation, detector) of
# keypointlab/configs/lift.yaml on one thread (the other core trained LF-Net), ship the
# last stage's best checkpoint on held-out validation as lift, then measure on a quiet
# machine. Run from the repository root.
set -euo pipefail
OMP_NUM_THREADS=1 keypointlab train keypointlab/configs/lift.yaml       # runs/lift
python benchmarks/validation_curve.py runs/lift --baselines sift --out benchmarks/results/lift/curve.png
python benchmarks/stage_curves.py runs/lift --out benchmarks/results/lift/stages.png
NOTE="LIFT (Yi et al. 2016) at CPU widths, trained from scratch (no pretrained network exists here) in the paper's three stages, in reverse order (descriptor, orientation, detector), on patch quadruplets from homographic pairs of ../shared/data/train, centred on SIFT keypoints that are repeatable under the homography (the stand-in for the paper's SfM points); one thread, checkpoint chosen on held-out validation pairs in the last stage."
# not yet run: ship the best detector-stage checkpoint (see runs/lift/validation.jsonl)
# keypointlab ship runs/lift/best.pt --name lift --note "$NOTE"
export OMP_NUM_THREADS=2
python benchmarks/lfnet_benchmark.py --data ../shared/data/eval --out benchmarks/results/lift \
    --title "LIFT benchmark" --features lift lift-upright lift-siftdet sift lfnet kp2d \
    --large lift sift lfnet kp2d --timing lift sift lfnet kp2d 2>&1 | tee benchmarks/results/lift/benchmark.log
