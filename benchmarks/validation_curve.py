"""Validation metrics of a training run against minutes of training, beside baselines
measured on the same held-out validation pairs in this process.

    python benchmarks/validation_curve.py runs/d2net --baselines sift kp2d \\
        --out benchmarks/results/d2net/curve.png

Reads ``validation.jsonl`` (written by the trainer every ``train.validate_every`` steps on
pairs of held-out training images, ``<run>/validation``) and evaluates each baseline on
that folder with the run's ``eval.size`` and ``eval.top_k``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from matplotlib.figure import Figure

from keypointlab.data.sequences import load_dataset
from keypointlab.evaluation.benchmark import evaluate_features
from keypointlab.features import get_extractor
from keypointlab.viz import save_figure

METRICS = ("matching_score", "mma_3", "repeatability", "homography_accuracy_3")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("run", type=Path)
    ap.add_argument("--baselines", nargs="*", default=["sift"])
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    rows = [json.loads(x) for x in (args.run / "validation.jsonl").read_text().splitlines() if x]
    conf = json.loads((args.run / "config.json").read_text())
    size, top_k = tuple(conf["eval"]["size"]), int(conf["eval"]["top_k"])
    sequences, skipped = load_dataset(args.run / "validation")
    base = {
        name: evaluate_features(get_extractor(name), sequences, size, top_k, skipped).summary()
        for name in args.baselines
    }
    fig = Figure(figsize=(3.2 * len(METRICS), 3.0), constrained_layout=True)
    for ax, metric in zip(fig.subplots(1, len(METRICS)), METRICS, strict=True):
        ax.plot([r["train_minutes"] for r in rows], [r[metric] for r in rows], "o-", ms=3,
                label=args.run.name)
        for i, (name, s) in enumerate(base.items()):
            ax.axhline(s[metric], ls="--", color=f"C{i + 1}", label=name)
        ax.set_xlabel("training minutes (2-core CPU)")
        ax.set_title(metric)
        ax.grid(alpha=0.3)
    fig.axes[0].legend(fontsize=7)
    fig.suptitle(f"validation: {len(sequences)} held-out pairs, {size[0]}x{size[1]}, top-{top_k}")
    save_figure(fig, args.out)
    table = {"run": [{k: r[k] for k in ("step", "train_minutes", *METRICS)} for r in rows],
             "baselines": {n: {k: s[k] for k in METRICS} for n, s in base.items()}}
    args.out.with_suffix(".json").write_text(json.dumps(table, indent=1))
    print(json.dumps(table["baselines"], indent=1))


if __name__ == "__main__":
    main()
