"""Report a training run: protocol metrics against minutes of CPU training, beside SIFT/ORB.

Reads ``validation.jsonl`` written by the trainer (``train.validate_every``), evaluates the
run's last checkpoint and the OpenCV baselines on the same data in this process, and
writes ``curve.png``, ``report.md`` and ``results.json`` to ``--out``.

    python benchmarks/training_report.py runs/kp2d --data ../shared/data/eval --out benchmarks/kp2d
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from keypointlab.data.sequences import load_dataset
from keypointlab.evaluation import metrics as M
from keypointlab.evaluation.benchmark import evaluate_features
from keypointlab.evaluation.report import markdown_table, sequence_table, write_report
from keypointlab.features import get_extractor
from keypointlab.features.learned import scales_label
from keypointlab.viz import save_figure

METRICS = (
    ("homography_accuracy_3", "homography accuracy @3px"),
    ("matching_score", "matching score"),
)


def folder_table(results: list) -> str:
    """Matching score and H@3 over the pairs of each dataset folder (``oxford/boat`` ->
    ``oxford``), one row per method; the ratio to SIFT's matching score beside it."""

    def folder_means(result) -> dict[str, dict[str, float]]:
        groups: dict[str, list] = {}
        for p in result.pairs:
            groups.setdefault(p.sequence.split("/")[0], []).append(p)
        out = {}
        for folder, pairs in groups.items():
            errors = np.array([p.corner_error for p in pairs])
            out[folder] = {
                "matching_score": float(np.mean([p.matching_score for p in pairs])),
                "homography_accuracy_3": M.homography_accuracy(errors, 3),
                "pairs": len(pairs),
            }
        return out

    means = {r.method: folder_means(r) for r in results}
    folders = sorted({f for m in means.values() for f in m})
    sift = means.get("sift", {})
    lines = ["| method | folder | pairs | MS | MS / SIFT | H@3 |", "|---|---|---|---|---|---|"]
    for folder in folders:
        for method, m in means.items():
            if folder not in m:
                continue
            v = m[folder]
            ref = sift.get(folder, {}).get("matching_score")
            ratio = f"{v['matching_score'] / ref:.2f}" if ref else "-"
            lines.append(
                f"| {method} | {folder} | {v['pairs']} | {v['matching_score']:.3f} | {ratio} "
                f"| {v['homography_accuracy_3']:.3f} |"
            )
    return "\n".join(lines)


def curve_figure(runs: dict[str, list[dict]], baselines: dict[str, dict]) -> Figure:
    """One panel per metric: each run's validation curve, baselines as horizontal lines."""
    fig = Figure(figsize=(11, 4))
    axes = fig.subplots(1, len(METRICS))
    for ax, (key, label) in zip(axes, METRICS, strict=True):
        for name, records in runs.items():
            ax.plot(
                [r["train_minutes"] for r in records],
                [r[key] for r in records],
                marker="o",
                ms=3,
                label=name,
            )
        for k, (name, summary) in enumerate(baselines.items()):
            ax.axhline(summary[key], color=f"C{k + len(runs)}", ls="--", label=name)
        ax.set_xlabel("training time [min]")
        ax.set_ylabel(label)
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    axes[-1].legend(fontsize=8)
    return fig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("runs", nargs="+", type=Path, help="training output folders")
    parser.add_argument("--data", type=Path, default=Path("../shared/data/eval"))
    parser.add_argument("--size", default="240x320")
    parser.add_argument("--top-k", type=int, default=300)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument(
        "--scales",
        default=None,
        help="also evaluate every run at these image scales, e.g. 1.4142,1,0.7071",
    )
    args = parser.parse_args()
    scales = tuple(float(v) for v in args.scales.split(",")) if args.scales else None

    h, w = (int(v) for v in args.size.split("x"))
    sequences, skipped = load_dataset(args.data)
    results = []
    extractors = [get_extractor("sift"), get_extractor("orb")]
    for run in args.runs:
        extractors.append(get_extractor(str(run)))
        extractors[-1].name = run.name
        if scales:
            extractors.append(get_extractor(str(run), scales=scales))
            extractors[-1].name = f"{run.name}@{scales_label(scales)}"
    for ex in extractors:
        results.append(evaluate_features(ex, sequences, (h, w), args.top_k, skipped))
    curves = {}
    for run in args.runs:
        path = run / "validation.jsonl"
        if path.is_file():
            curves[run.name] = [json.loads(line) for line in path.read_text().splitlines()]
    baselines = {r.method: r.summary() for r in results[:2]}
    args.out.mkdir(parents=True, exist_ok=True)
    save_figure(curve_figure(curves, baselines), args.out / "curve.png")
    extra = [
        "## Training curves",
        "",
        "![curves](curve.png)",
        "",
        "## By dataset folder",
        "",
        folder_table(results),
        "",
        "## Matching score per sequence",
        "",
        sequence_table(results, "matching_score"),
        "",
        "## Homography accuracy @3px per sequence",
        "",
        sequence_table(results, "homography_accuracy_3"),
        "",
    ]
    write_report(
        results,
        args.out,
        title="Training report",
        meta={"data": str(args.data), "runs": ", ".join(map(str, args.runs))},
        extra_markdown="\n".join(extra),
    )
    print(markdown_table(results))


if __name__ == "__main__":
    main()
