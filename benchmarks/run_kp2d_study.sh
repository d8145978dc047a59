#!/usr/bin/env bash
# The KP2D / UnsuperPoint study of issue 6, as run on a 2-core CPU (two 1-thread runs at a time).
# Main runs: 50 minutes of training each, validated every 400 steps on ../shared/data/eval.
# Ablations: the same config stopped at the same step count (1200) for a like-for-like comparison.
set -euo pipefail
cd "$(dirname "$0")/.."
run() { OMP_NUM_THREADS=1 keypointlab train "$@" --quiet; }

if [ "${1:-}" = "main" ]; then
  run keypointlab/configs/kp2d.yaml > runs/kp2d.log 2>&1 &
  run keypointlab/configs/unsuperpoint.yaml > runs/unsuperpoint.log 2>&1 &
  wait
fi
if [ "${1:-}" = "ablations" ]; then
  short="train.steps=1200 train.max_minutes=0"
  run keypointlab/configs/kp2d_no_io.yaml $short > runs/kp2d_no_io.log 2>&1 &
  run keypointlab/configs/kp2d_rotation.yaml $short > runs/kp2d_rotation.log 2>&1 &
  wait
  run keypointlab/configs/kp2d_no_cross.yaml $short > runs/kp2d_no_cross.log 2>&1 &
  run keypointlab/configs/kp2d_no_upsample.yaml $short > runs/kp2d_no_upsample.log 2>&1 &
  wait
fi
python benchmarks/training_report.py runs/kp2d runs/unsuperpoint --out benchmarks/results/kp2d_unsuperpoint
