#!/usr/bin/env bash
# KP2D, third round (issue 6): scale augmentation, views rendered from the photograph,
# rotation, and multi-scale extraction. As run on the 2-core CPU, one thread per training,
# two or three trainings at a time. Results: benchmarks/README.md, results/kp2d_round3/.
set -euo pipefail
cd "$(dirname "$0")/.."
run() { OMP_NUM_THREADS=1 keypointlab train "$@" --quiet; }

if [ "${1:-}" = "train" ]; then
  run keypointlab/configs/kp2d_scale.yaml > runs/kp2d_scale.log 2>&1 &  # stopped at 28.6 min
  run keypointlab/configs/kp2d_scale_source.yaml > runs/kp2d_scale_source.log 2>&1 &
  wait
  run keypointlab/configs/kp2d_rot60.yaml > runs/kp2d_rot60.log 2>&1 &  # stopped at 32 min
  run keypointlab/configs/kp2d_rotation.yaml > runs/kp2d_rotation.log 2>&1 &
  # the shipped kp2d's 50-minute checkpoint, 10 more minutes with rotations up to 60 degrees
  mkdir -p runs/kp2d_ft60
  cp runs/kp2d_fullres/ckpt_00002664.pt runs/kp2d_fullres/runs.jsonl runs/kp2d_ft60/
  run keypointlab/configs/kp2d_fullres.yaml --resume train.out=runs/kp2d_ft60 \
    data.homography.max_angle=1.0472 train.max_minutes=60 > runs/kp2d_ft60.log 2>&1 &
  # the same 10 minutes with rotations up to 90 and up to 180 degrees
  for n in ft90 ft180; do
    mkdir -p runs/kp2d_$n
    cp runs/kp2d_fullres/ckpt_00002664.pt runs/kp2d_fullres/runs.jsonl runs/kp2d_$n/
  done
  run keypointlab/configs/kp2d_fullres.yaml --resume train.out=runs/kp2d_ft90 \
    data.homography.max_angle=1.5708 train.max_minutes=60 > runs/kp2d_ft90.log 2>&1 &
  run keypointlab/configs/kp2d_fullres.yaml --resume train.out=runs/kp2d_ft180 \
    data.homography.max_angle=3.1416 data.homography.patch_ratio=0.7 \
    data.homography.perspective_amplitude_x=0.1 data.homography.perspective_amplitude_y=0.1 \
    data.homography.allow_artifacts=true train.max_minutes=60 > runs/kp2d_ft180.log 2>&1 &
  wait
  # noise check (another data seed) and the second stage with kp2d_scale_source's views
  for n in ft60_seed1 ft60_views; do
    mkdir -p runs/kp2d_$n
    cp runs/kp2d_fullres/ckpt_00002664.pt runs/kp2d_fullres/runs.jsonl runs/kp2d_$n/
  done
  run keypointlab/configs/kp2d_fullres.yaml --resume train.out=runs/kp2d_ft60_seed1 \
    data.homography.max_angle=1.0472 train.seed=1 train.max_minutes=60 \
    > runs/kp2d_ft60_seed1.log 2>&1 &
  run keypointlab/configs/kp2d_fullres.yaml --resume train.out=runs/kp2d_ft60_views \
    data.homography.max_angle=1.0472 data.homography.scaling_amplitude=0.6 \
    data.max_side=640 "data.crop_scale=[0.3, 1.0]" data.render_from_source=true \
    train.max_minutes=60 > runs/kp2d_ft60_views.log 2>&1 &
  wait
fi
python benchmarks/training_report.py runs/kp2d_fullres_60min runs/kp2d_ft60 runs/kp2d_ft90 \
  runs/kp2d_ft180 runs/kp2d_scale runs/kp2d_scale_source runs/kp2d_rot60 \
  --scales 1.4142,1,0.7071 --out benchmarks/results/kp2d_round3
# rotation trade-off: the 180-degree config against its upright base
python benchmarks/training_report.py runs/kp2d_scale_source runs/kp2d_rotation \
  --out benchmarks/results/kp2d_rotation
