"""Does homographic adaptation raise a detector's repeatability? Measured on real sequences.

For each detector (a MagicPoint or SuperPoint run), on the protocol of
``shared/PROTOCOL.md`` (repeatability and localization error at 3 px, top-k by score):

- the detector as trained ("before");
- the same network with homographic adaptation at test time: its heatmap aggregated over
  ``--homographies`` random views (:class:`keypointlab.adaptation.AdaptedDetector`), the
  operation that produces the pseudo-labels;

and, as "after", the detector trained on those pseudo-labels (SuperPoint's, given as a
further run). SIFT and ORB are measured in the same run for scale. Keypoints are picked the
same way for every learned detector (the best pixel of each 8x8 cell, top-k by score).

    python benchmarks/adaptation_repeatability.py runs/magicpoint runs/superpoint \
        --data ../shared/data/eval --out benchmarks/results/adaptation
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch

from keypointlab.adaptation import AdaptedDetector
from keypointlab.data.sequences import load_dataset
from keypointlab.evaluation.benchmark import evaluate_features
from keypointlab.evaluation.report import write_atomic
from keypointlab.features import get_extractor
from keypointlab.features.learned import LearnedExtractor
from keypointlab.models.loading import load_run

COLUMNS = ("repeatability", "localization_error", "pairs")


def _table(rows: list[tuple[str, dict]]) -> str:
    lines = ["| detector | " + " | ".join(COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    for name, s in rows:
        cells = [f"{s[c]:.3f}" if isinstance(s[c], float) else str(s[c]) for c in COLUMNS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", help="MagicPoint / SuperPoint runs or checkpoints")
    parser.add_argument("--data", default="../shared/data/eval")
    parser.add_argument("--size", type=int, nargs=2, default=(240, 320))
    parser.add_argument("--top-k", type=int, default=300)
    parser.add_argument("--homographies", type=int, default=20)
    parser.add_argument("--out", default="benchmarks/results/adaptation")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    sequences, skipped = load_dataset(args.data)
    size = tuple(args.size)
    rows: list[tuple[str, dict]] = []

    def measure(name: str, extractor) -> None:
        result = evaluate_features(extractor, sequences, size, args.top_k, skipped)
        rows.append((name, result.summary()))
        logging.info("%s: %s", name, {c: rows[-1][1][c] for c in COLUMNS})

    for run in args.runs:
        loaded = load_run(run)
        model, state = loaded.model, loaded.state
        label = f"{Path(run).name} ({state['method']}, step {state['step']})"
        with torch.inference_mode():
            measure(label, LearnedExtractor(model, label))
            adapted = AdaptedDetector(model, n_homographies=args.homographies)
            measure(f"{label} + adaptation x{args.homographies}", LearnedExtractor(adapted, label))
    for name in ("sift", "orb"):
        measure(name, get_extractor(name))

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    text = [
        "# Repeatability before and after homographic adaptation",
        "",
        f"Data: `{args.data}` ({len(sequences)} sequences), {size[0]}x{size[1]}, "
        f"top-{args.top_k}, threshold 3 px; test-time adaptation with "
        f"{args.homographies} views (identity included).",
        "",
        "Command: `python benchmarks/adaptation_repeatability.py "
        + " ".join(args.runs)
        + f" --data {args.data} --out {args.out}`",
        "",
        _table(rows),
        "",
    ]
    write_atomic(out / "report.md", "\n".join(text))
    print("\n".join(text))


if __name__ == "__main__":
    main()
