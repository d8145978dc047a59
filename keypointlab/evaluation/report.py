"""Reports of benchmark results: ``results.json``, a Markdown table and figures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from keypointlab.evaluation.benchmark import SPLITS, BenchmarkResult
from keypointlab.io.outputs import atomic_output, check_output_dir
from keypointlab.viz import mma_figure, save_figure, sequence_bars_figure

COLUMNS = [
    ("repeatability", "Rep", "{:.3f}"),
    ("localization_error", "Loc err", "{:.3f}"),
    ("homography_accuracy_1", "H@1", "{:.3f}"),
    ("homography_accuracy_3", "H@3", "{:.3f}"),
    ("homography_accuracy_5", "H@5", "{:.3f}"),
    ("homography_auc_3", "AUC@3", "{:.3f}"),
    ("matching_score", "MS", "{:.3f}"),
    ("mma_3", "MMA@3", "{:.3f}"),
    ("pairs", "pairs", "{}"),
    ("pairs_without_keypoints", "no kp", "{}"),
]


def write_atomic(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file of this writer's own
    (:func:`~keypointlab.io.outputs.atomic_output`), so no half file ever appears, two
    writers never share a temporary file, and a failure leaves nothing behind."""
    path = Path(path)
    with atomic_output(path) as tmp:
        tmp.write_text(text)
    return path


def markdown_table(results: list[BenchmarkResult], split: str | None = None) -> str:
    """One row per (method, size): the protocol metrics plus timing."""
    head = ["method", "size", "top-k"] + [c[1] for c in COLUMNS]
    if split is None:
        head += ["ms/image", "ms/pair"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        s = r.summary(split)
        empty = not s["pairs"]  # no pair evaluated: its zeros are not a result
        row = [r.method, r.size, str(r.top_k)] + [
            "n/a" if empty and k not in ("pairs", "pairs_without_keypoints") else fmt.format(s[k])
            for k, _, fmt in COLUMNS
        ]
        if split is None:
            row += [
                f"{1000 * s['extraction_time_per_image']:.1f}",
                f"{1000 * s['matching_time_per_pair']:.1f}",
            ]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def per_sequence(results: list[BenchmarkResult], metric: str) -> dict[str, dict[str, float]]:
    """label -> {sequence: mean of ``metric`` over its pairs}; corner-error metrics as acc@3."""
    out: dict[str, dict[str, float]] = {}
    for r in results:
        by_seq: dict[str, list[float]] = {}
        for p in r.pairs:
            v = (
                float(p.corner_error <= 3)
                if metric == "homography_accuracy_3"
                else getattr(p, metric)
            )
            by_seq.setdefault(p.sequence, []).append(v)
        out[f"{r.method} {r.size}"] = {k: float(np.mean(v)) for k, v in by_seq.items()}
    return out


def sequence_table(results: list[BenchmarkResult], metric: str) -> str:
    """Markdown table of ``metric`` per sequence (rows) and method (columns)."""
    values = per_sequence(results, metric)
    labels = list(values)
    seqs = sorted({s for v in values.values() for s in v})
    lines = ["| sequence | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]
    for s in seqs:
        lines.append(
            f"| {s} | "
            + " | ".join(
                f"{values[label][s]:.3f}" if s in values[label] else "-" for label in labels
            )
            + " |"
        )
    return "\n".join(lines)


def results_json(results: list[BenchmarkResult], meta: dict[str, Any] | None = None) -> dict:
    """The first run's fields at the top level (``summary``, ``splits``, ``pairs``...) and
    every run under ``runs``, so single-run readers and multi-run readers both work."""
    runs = [r.to_dict() for r in results]
    top: dict[str, Any] = dict(runs[0]) if runs else {"summary": {}}
    top["runs"] = runs
    top["meta"] = meta or {}
    return top


def write_report(
    results: list[BenchmarkResult],
    out_dir: str | Path,
    title: str = "KeypointLab evaluation",
    meta: dict[str, Any] | None = None,
    extra_markdown: str = "",
) -> dict[str, Path]:
    """Write ``results.json``, ``report.md``, MMA curves and per-sequence bars to ``out_dir``.

    Returns:
        name -> path of every file written.

    Raises:
        OutputError: ``out_dir`` is a file or cannot be written.
    """
    out = check_output_dir(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    files["json"] = write_atomic(
        out / "results.json", json.dumps(results_json(results, meta), indent=1)
    )
    sizes = list(dict.fromkeys(r.size for r in results))
    md = [f"# {title}", ""]
    if meta:
        md += [", ".join(f"{k}: {v}" for k, v in meta.items()), ""]
    md += [
        "Metrics as defined in the evaluation protocol (repeatability and matching at 3 px, "
        "homography accuracy at 1/3/5 px corner error, AUC of the corner-error curve, "
        "MMA = mean matching accuracy of mutual nearest neighbours).",
        "",
    ]
    md += ["## All pairs", "", markdown_table(results), ""]
    for size in sizes:
        rs = [r for r in results if r.size == size]
        splits = [s for s in SPLITS if any(p.split == s for r in rs for p in r.pairs)]
        curves = {"all": {r.method: r.summary()["mma"] for r in rs}}
        for split in splits if len(splits) > 1 else []:  # one split would repeat "all"
            curves[split] = {r.method: r.summary(split)["mma"] for r in rs}
        tag = size
        files[f"mma_{tag}"] = save_figure(
            mma_figure(curves, f"MMA at {size}"), out / f"mma_{tag}.png"
        )
        files[f"bars_{tag}"] = save_figure(
            sequence_bars_figure(per_sequence(rs, "matching_score"), "matching score"),
            out / f"sequences_ms_{tag}.png",
        )
        md += [f"## Size {size}", "", f"![MMA curves](mma_{tag}.png)", ""]
        for split in splits:
            md += [f"### Split: {split}", "", markdown_table(rs, split), ""]
        md += [
            "### Matching score per sequence",
            "",
            sequence_table(rs, "matching_score"),
            "",
            f"![matching score per sequence](sequences_ms_{tag}.png)",
            "",
            "### Homography accuracy at 3 px per sequence",
            "",
            sequence_table(rs, "homography_accuracy_3"),
            "",
        ]
    skipped = [s for r in results for s in r.skipped]
    if skipped:
        md += (
            ["## Skipped", ""]
            + [f"- {s.item}: {s.reason}" for s in {(s.item, s.reason): s for s in skipped}.values()]
            + [""]
        )
    if extra_markdown:
        md += [extra_markdown, ""]
    files["markdown"] = write_atomic(out / "report.md", "\n".join(md))
    return files
