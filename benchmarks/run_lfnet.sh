#!/usr/bin/env bash
# LF-Net: train (55 min on this CPU), ship best.pt (chosen on held-out validation pairs) as
# lfnet, then measure. Run from the repository root. Everything here ran on one thread
# (OMP_NUM_THREADS=1, --threads 1) while the other core trained LIFT; the benchmark's
# times are ratios to SIFT measured in the same run on one thread each.
set -euo pipefail
export OMP_NUM_THREADS=1
keypointlab train keypointlab/configs/lfnet.yaml                # runs/lfnet, best.pt on validation
python benchmarks/validation_curve.py runs/lfnet --baselines sift kp2d \
    --out benchmarks/results/lfnet/curve.png
NOTE="LF-Net (Ono et al. 2018) at CPU widths (0.18 M parameters), trained from scratch (no pretrained network exists here) on homographic pairs of ../shared/data/train (rotations up to 180 degrees, zoom up to 2.5x) for 55 minutes on one thread (the other core ran another training), 1213 steps of 8 pairs; checkpoint chosen on held-out validation pairs (step 900)."
keypointlab ship runs/lfnet/best.pt --name lfnet --note "$NOTE"
python benchmarks/lfnet_benchmark.py --data ../shared/data/eval --out benchmarks/results/lfnet \
    --threads 1 2>&1 | tee benchmarks/results/lfnet/benchmark.log
