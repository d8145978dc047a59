"""Each training stage's own loss against minutes, and the validation metric, for a
multi-stage run (LIFT: descriptor, orientation, detector).

    python benchmarks/stage_curves.py runs/lift --out benchmarks/results/lift/stages.png

Reads ``log.jsonl`` (a record every ``train.log_every`` steps) and ``validation.jsonl`` of
the run, and the stages of its ``config.json``; a stage's curve is the loss term that stage
trains (the record key named like the stage, else ``total``), smoothed over 5 records.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from keypointlab.training.optim import resolve_stages  # noqa: E402
from keypointlab.viz import save_figure  # noqa: E402


def _records(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("run", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--metric", default="matching_score")
    args = ap.parse_args()
    conf = json.loads((args.run / "config.json").read_text())
    stages = resolve_stages(conf["train"]["stages"], conf["train"]["steps"])
    log = _records(args.run / "log.jsonl")
    val = _records(args.run / "validation.jsonl")
    if not log:
        raise SystemExit(f"{args.run / 'log.jsonl'}: no training records")
    fig = Figure(figsize=(4 * (len(stages) + 1), 3.6))
    axes = fig.subplots(1, len(stages) + 1)
    summary = {}
    for ax, st in zip(axes, stages, strict=False):
        rows = [r for r in log if st.start < r["step"] <= st.end]
        key = st.name if rows and st.name in rows[0] else "total"
        x = np.array([r["train_minutes"] for r in rows])
        y = np.array([r[key] for r in rows], dtype=float)
        if len(y) >= 5:
            y_s = np.convolve(y, np.ones(5) / 5, mode="valid")
            ax.plot(x[2 : 2 + len(y_s)], y_s)
        elif len(y):
            ax.plot(x, y)
        ax.set_title(f"stage {st.index + 1}: {st.name} (steps {st.start}-{st.end})", fontsize=9)
        ax.set_xlabel("training minutes")
        ax.set_ylabel(f"{key} loss")
        ax.grid(alpha=0.3)
        if len(y):
            n = max(1, len(y) // 10)
            summary[st.name] = {
                "key": key,
                "steps": [rows[0]["step"], rows[-1]["step"]],
                "first_tenth_mean": float(y[:n].mean()),
                "last_tenth_mean": float(y[-n:].mean()),
            }
    ax = axes[-1]
    if val:
        ax.plot([r["train_minutes"] for r in val], [r[args.metric] for r in val], marker="o")
        for st in stages[1:]:
            at = [r["train_minutes"] for r in log if r["step"] == st.start]
            if at:
                ax.axvline(at[0], color="grey", ls=":")
    ax.set_title(f"validation {args.metric} (stage starts dotted)", fontsize=9)
    ax.set_xlabel("training minutes")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, args.out)
    args.out.with_suffix(".json").write_text(json.dumps(summary, indent=1))
    for name, s in summary.items():
        print(f"{name}: {s['key']} {s['first_tenth_mean']:.3f} -> {s['last_tenth_mean']:.3f}")


if __name__ == "__main__":
    main()
