#!/usr/bin/env bash
# DELF and retrieval (issue 18): train keypointlab/configs/delf.yaml (both stages, one
# thread), ship its best stage-2 checkpoint as delf, draw the stage curves, then the
# retrieval table on ../shared/data/retrieval (46 images, 5 groups, leave-one-out) at x1
# and with 414 distractors (x10: augmented training photographs, webui_sacre_coeur
# excluded since it is the sacre_coeur group). Run from the repository root.
set -euo pipefail
export OMP_NUM_THREADS=1
OUT=benchmarks/results/retrieval
mkdir -p "$OUT"
keypointlab train keypointlab/configs/delf.yaml                 # runs/delf
python benchmarks/stage_curves.py runs/delf --out "$OUT/stages.png"
python benchmarks/validation_curve.py runs/delf --baselines sift --out "$OUT/curve.png"
keypointlab ship runs/delf/best.pt --name delf --force --note "${DELF_NOTE:-}"
python -c "from keypointlab.retrieval.distractors import make_distractors as m; m('../shared/data/train', 'runs/retrieval_distractors', 414, seed=0, exclude=['webui_sacre_coeur'])"
FEATURES="delf delf-global sift kp2d"
keypointlab evaluate --task retrieval --data ../shared/data/retrieval --features $FEATURES \
    --out "$OUT/x1" --quiet > "$OUT/x1.log" 2>&1
keypointlab evaluate --task retrieval --data ../shared/data/retrieval --features $FEATURES \
    --distractors runs/retrieval_distractors --out "$OUT/x10" --quiet > "$OUT/x10.log" 2>&1
# the same x10 database with the exact index, for the search cost without inverted lists
keypointlab evaluate --task retrieval --data ../shared/data/retrieval --features delf sift \
    --distractors runs/retrieval_distractors --index-type flat --out "$OUT/x10_flat" --quiet \
    > "$OUT/x10_flat.log" 2>&1
python benchmarks/retrieval_scaling.py "$OUT/x1" "$OUT/x10" "$OUT/x10_flat" --out "$OUT/scaling.md"
