#!/usr/bin/env bash
# D2-Net: train (55 min on the 2-core CPU), ship best.pt as d2net and d2net_ms (same
# weights, the paper's pyramid), then measure. Run from the repository root.
set -euo pipefail
export OMP_NUM_THREADS=2
keypointlab train keypointlab/configs/d2net.yaml                # runs/d2net, best.pt on validation
python benchmarks/validation_curve.py runs/d2net --baselines sift kp2d \
    --out benchmarks/results/d2net/curve.png
NOTE="D2-Net (Dusmanu et al. 2019) at CPU widths, trained from scratch (no pretrained VGG exists here) on homographic pairs of ../shared/data/train for 55 minutes; checkpoint chosen on held-out validation pairs. Single-scale; d2net_ms is the same weights on the paper's image pyramid at the levels chosen on validation pairs (1, 2; benchmarks/results/d2net/pyramid_validation.md)."
keypointlab ship runs/d2net/best.pt --name d2net --note "$NOTE"
python benchmarks/d2net_pyramid.py --out benchmarks/results/d2net   # pyramid levels on validation
keypointlab ship d2net --name d2net_ms --model-option "pyramid=[1,2]" --note "$NOTE" --force
python benchmarks/d2net_benchmark.py --data ../shared/data/eval --out benchmarks/results/d2net \
    --features d2net d2net@2 d2net_ms sift orb kp2d 2>&1 | tee benchmarks/results/d2net/benchmark.log
