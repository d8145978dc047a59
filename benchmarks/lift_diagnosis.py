"""LIFT at other inference settings on held-out validation pairs (never the eval set).

The first 20 images that ``data.holdout = 0.1`` (seed 0) keeps out of training, turned
into homographic pairs at 240x320 as training validates, top-300; each argument is a JSON
dict of model settings applied to the checkpoint's ``conf`` (``sift`` measures SIFT):

    python benchmarks/lift_diagnosis.py runs/lift/ckpt_00004500.pt sift '{}' \\
        '{"detector": "sift"}' '{"detector": "sift", "learned_orientation": false}' \\
        '{"pyramid": [1.0]}' '{"pyramid": [0.7071]}' '{"pyramid": [0.5]}' '{"nms": 9}'
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import torch

from keypointlab.data.holdout import build_validation_benchmark, holdout_paths
from keypointlab.data.sequences import load_dataset
from keypointlab.evaluation.benchmark import evaluate_features
from keypointlab.features import get_extractor

KEYS = ("repeatability", "matching_score", "mma_3", "homography_accuracy_3")


def main() -> None:
    torch.set_num_threads(2)
    train = Path("../shared/data/train")
    checkpoint, settings = sys.argv[1], sys.argv[2:]
    with tempfile.TemporaryDirectory() as tmp:
        held_out = holdout_paths(train, 0.1, 0)[1][:20]
        folder = build_validation_benchmark(held_out, train, Path(tmp) / "val", (240, 320))
        sequences, skipped = load_dataset(folder)
        for spec in settings:
            if spec == "sift":
                ex = get_extractor("sift")
            else:
                ex = get_extractor(checkpoint)
                ex.net.conf.update(json.loads(spec))
            s = evaluate_features(ex, sequences, (240, 320), 300, skipped, progress=False).summary()
            print(spec, {k: round(s[k], 3) for k in KEYS}, flush=True)


if __name__ == "__main__":
    main()
