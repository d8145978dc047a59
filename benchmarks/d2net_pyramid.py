"""Choose D2-Net's inference pyramid on held-out validation pairs (never on the eval set).

The pairs are the ones training validates on: homographic warps of the images that
``data.holdout = 0.1`` (seed 0) keeps out of training, 60 images at 240x320, top-300. Each
pyramid runs the shipped ``d2net`` weights; SIFT is measured on the same pairs.

    python benchmarks/d2net_pyramid.py --out benchmarks/results/d2net
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from keypointlab.data.holdout import build_validation_benchmark, holdout_paths
from keypointlab.data.sequences import load_dataset
from keypointlab.evaluation.benchmark import evaluate_features
from keypointlab.features import get_extractor

PYRAMIDS = ([1.0], [2.0], [1.0, 1.5], [1.0, 2.0], [0.5, 1.0], [0.5, 1.0, 2.0])
KEYS = (
    "repeatability",
    "localization_error",
    "homography_accuracy_3",
    "matching_score",
    "mma_3",
    "extraction_time_per_image",
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--train", type=Path, default=Path("../shared/data/train"))
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/d2net"))
    args = ap.parse_args()
    torch.set_num_threads(2)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        held_out = holdout_paths(args.train, 0.1, 0)[1]
        folder = build_validation_benchmark(held_out, args.train, Path(tmp) / "val", (240, 320))
        sequences, skipped = load_dataset(folder)
        for pyramid in PYRAMIDS:
            ex = get_extractor("d2net")
            ex.net.conf["pyramid"] = pyramid
            ex.name = "d2net pyramid " + ",".join(f"{s:g}" for s in pyramid)
            rows.append(evaluate_features(ex, sequences, (240, 320), 300, skipped, progress=False))
        rows.append(
            evaluate_features(
                get_extractor("sift"), sequences, (240, 320), 300, skipped, progress=False
            )
        )
    table = [
        "| features | pairs | " + " | ".join(KEYS) + " |",
        "|---|---|" + "---|" * len(KEYS),
    ]
    for r in rows:
        s = r.summary()
        table.append(
            f"| {r.method} | {len(r.pairs)} | "
            + " | ".join(
                f"{s[k] * 1000:.0f} ms" if k.endswith("per_image") else f"{s[k]:.3f}" for k in KEYS
            )
            + " |"
        )
    text = "\n".join(
        [
            "# D2-Net pyramid on held-out validation pairs (240x320, top-300)",
            "",
            "`python benchmarks/d2net_pyramid.py` (the pairs training validates on; not the"
            " eval set). Times on the 2-core CPU, per image at 240x320.",
            "",
            *table,
            "",
        ]
    )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "pyramid_validation.md").write_text(text)
    (args.out / "pyramid_validation.json").write_text(
        json.dumps(
            {r.method: {k: r.summary()[k] for k in KEYS} | {"pairs": len(r.pairs)} for r in rows},
            indent=1,
        )
    )
    print(text)


if __name__ == "__main__":
    main()
