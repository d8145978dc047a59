"""Reports of the relative-pose benchmark: ``results.json``, ``report.md`` and the fixed
pair list ``pairs.txt``, each written atomically."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from keypointlab.data.posepairs import PosePair, pairs_text
from keypointlab.evaluation.pose import (
    AUC_THRESHOLDS,
    DEPTH_THRESHOLD,
    EPIPOLAR_THRESHOLD,
    RANSAC_THRESHOLD,
    PoseBenchmarkResult,
)
from keypointlab.evaluation.report import results_json, write_atomic
from keypointlab.io.outputs import check_output_dir

COLUMNS = [
    *[(f"pose_auc_{t}", f"AUC@{t}", "{:.3f}") for t in AUC_THRESHOLDS],
    ("matching_precision", "precision", "{:.3f}"),
    ("matches_per_pair", "matches", "{:.0f}"),
    ("inliers_per_pair", "inliers", "{:.0f}"),
    ("pairs", "pairs", "{}"),
    ("pairs_failed", "failed", "{}"),
]


def pose_markdown_table(results: Sequence[PoseBenchmarkResult]) -> str:
    """One row per (method, size): pose AUC, precision, matches and timing."""
    head = ["method", "size", "top-k"] + [c[1] for c in COLUMNS] + ["ms/image"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        s = r.summary()
        empty = not s["pairs"]  # no pair evaluated: its zeros are not a result
        row = [r.method, r.size, str(r.top_k)] + [
            "n/a" if empty and k not in ("pairs", "pairs_failed") else fmt.format(s[k])
            for k, _, fmt in COLUMNS
        ]
        row.append(f"{1000 * s['extraction_time_per_image']:.1f}")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def _protocol(results: Sequence[PoseBenchmarkResult]) -> str:
    by = results[0].precision_by if results else "depth"
    precision = (
        f"a match is correct when its view-0 keypoint, back-projected with depth and moved "
        f"by the true pose, lands within {DEPTH_THRESHOLD:g} px of its match (only matches "
        "whose point has depth, lands inside view 1 and is not occluded are counted)"
        if by == "depth"
        else f"a match is correct when its symmetric epipolar distance under the true pose "
        f"is within {EPIPOLAR_THRESHOLD:g} px"
    )
    return (
        "Mutual nearest-neighbour matches of the top-k keypoints; essential matrix by "
        f"RANSAC at {RANSAC_THRESHOLD:g} px with the known intrinsics, then recoverPose. Pose "
        "error = max(rotation error, translation angle error up to sign), degrees; "
        f"AUC@t = area under its recall curve up to t degrees over t (failed pairs are "
        f"never recalled). Precision: mean over pairs; {precision}."
    )


def write_pose_report(
    results: Sequence[PoseBenchmarkResult],
    pairs: Sequence[PosePair],
    out_dir: str | Path,
    meta: dict[str, Any] | None = None,
    title: str = "KeypointLab relative-pose evaluation",
) -> dict[str, Path]:
    """Write ``results.json``, ``report.md`` and ``pairs.txt`` to ``out_dir``.

    Returns:
        name -> path of every file written.

    Raises:
        OutputError: ``out_dir`` is a file or cannot be written.
    """
    out = check_output_dir(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {"pairs": write_atomic(out / "pairs.txt", pairs_text(pairs))}
    files["json"] = write_atomic(
        out / "results.json", json.dumps(results_json(list(results), meta), indent=1)
    )
    md = [f"# {title}", ""]
    if meta:
        md += [", ".join(f"{k}: {v}" for k, v in meta.items()), ""]
    md += [_protocol(results), "", "## All pairs", "", pose_markdown_table(results), ""]
    overlaps = [p.overlap for p in pairs if p.overlap is not None]
    if overlaps:
        md += [
            f"{len(pairs)} pairs (`pairs.txt`), overlap {min(overlaps):.2f} to "
            f"{max(overlaps):.2f} (fraction of view 0 seen by view 1).",
            "",
        ]
    skipped = [s for r in results for s in r.skipped]
    if skipped:
        md += (
            ["## Skipped", ""]
            + [f"- {s.item}: {s.reason}" for s in {(s.item, s.reason): s for s in skipped}.values()]
            + [""]
        )
    files["markdown"] = write_atomic(out / "report.md", "\n".join(md))
    return files
