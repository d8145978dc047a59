"""Image retrieval benchmark: leave-one-out queries over a folder of groups.

Data: ``DIR/<group>/*.jpg`` (two images show the same place when they share a group) and
optionally distractors (``DIR/distractors/`` or a separate folder), which are in the
database but never queries and never positives. Every other image queries the database
without itself; its positives are the other images of its group.

Metrics (pure functions, :func:`average_precision`, :func:`precision_at`): the average
precision of the complete ranking (the mean, over the query's positives, of the precision
at the rank of each), its mean over the queries (mAP), and precision at 1, 5 and 10.
Costs: extraction seconds per image, seconds per query of the search and verification
alone (the part that grows with the database), the index's descriptors and bytes.

Each local feature ``F`` gives two rows from one index: ``F`` (votes, then verification)
and ``F+votes`` (kNN votes only); a global feature (``NAME-global``) one row.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from keypointlab.data.images import list_images
from keypointlab.evaluation.report import write_atomic
from keypointlab.features.base import Extractor
from keypointlab.io.outputs import check_output_dir
from keypointlab.retrieval.index import extract_all, group_of, index_features
from keypointlab.retrieval.query import rank

DISTRACTORS = "distractors"
AT = (1, 5, 10)


def average_precision(relevant: Sequence[bool] | np.ndarray, positives: int | None = None) -> float:
    """Average precision of a ranking whose entries are ``relevant`` (best first):
    ``sum over relevant ranks k of precision@k / positives`` (``positives`` defaults to the
    relevant entries in the ranking; 0 positives gives 0)."""
    rel = np.asarray(relevant, bool)
    total = int(rel.sum()) if positives is None else int(positives)
    if total <= 0:
        return 0.0
    ranks = np.flatnonzero(rel) + 1
    return float(np.sum(np.arange(1, len(ranks) + 1) / ranks) / total)


def precision_at(relevant: Sequence[bool] | np.ndarray, k: int) -> float:
    """Share of relevant entries among the first ``k`` (a shorter ranking counts the
    missing entries as not relevant)."""
    return float(np.asarray(relevant, bool)[:k].sum() / k)


@dataclass
class RetrievalResult:
    """One row of the table: a feature (and ranking mode) over all queries."""

    method: str
    summary: dict[str, Any]
    queries: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class RetrievalData:
    """The database images (relative to ``root`` or absolute for outside distractors),
    their groups (``None`` for distractors) and which are queries."""

    root: Path
    paths: list[Path]
    groups: list[str | None]

    @property
    def queries(self) -> list[int]:
        return [i for i, g in enumerate(self.groups) if g is not None]

    def name(self, i: int) -> str:
        p = self.paths[i]
        return p.relative_to(self.root).as_posix() if p.is_relative_to(self.root) else str(p)


def load_retrieval_data(root: str | Path, distractors: str | Path | None = None) -> RetrievalData:
    """The groups below ``root`` (images directly in ``root`` are refused: they have no
    group), ``root/distractors`` and the images of ``distractors``.

    Raises:
        FileNotFoundError: a folder is missing, or ``root`` holds no group.
        ValueError: a group has one image only (it could never find a positive).
    """
    root = Path(root)
    paths, groups = [], []
    for p in list_images(root):
        g = group_of(p, root)
        if not g:
            raise ValueError(f"{p}: an image directly in {root}; put each image in a group folder")
        paths.append(p)
        groups.append(None if g == DISTRACTORS else g)
    if distractors is not None:
        extra = list_images(distractors)
        paths += extra
        groups += [None] * len(extra)
    named = [g for g in groups if g is not None]
    if not named:
        raise FileNotFoundError(f"{root}: no group folder with images (DIR/<group>/*.jpg)")
    lonely = sorted(g for g in set(named) if named.count(g) < 2)
    if lonely:
        raise ValueError(f"{root}: groups with a single image (no positive to find): {lonely}")
    return RetrievalData(root, paths, groups)


def _row(
    method: str, data: RetrievalData, rankings: list[tuple[int, Any, float]], extra: dict
) -> RetrievalResult:
    rows, aps, pk = [], [], {k: [] for k in AT}
    for q, ranking, seconds in rankings:
        rel = np.array([data.groups[i] == data.groups[q] for i in ranking.images])
        positives = sum(g == data.groups[q] for g in data.groups) - 1
        ap = average_precision(rel, positives)
        aps.append(ap)
        for k in AT:
            pk[k].append(precision_at(rel, k))
        rows.append(
            {
                "query": data.name(q),
                "ap": ap,
                "seconds": seconds,
                "top": [data.name(i) for i in ranking.images[:10]],
                "scores": [float(s) for s in ranking.scores[:10]],
            }
        )
    by_group: dict[str, list[float]] = {}
    for (q, _, _), ap in zip(rankings, aps, strict=True):
        by_group.setdefault(str(data.groups[q]), []).append(ap)
    summary = {
        "map": float(np.mean(aps)),
        "map_by_group": {g: float(np.mean(v)) for g, v in sorted(by_group.items())},
        **{f"precision_at_{k}": float(np.mean(v)) for k, v in pk.items()},
        "queries": len(rankings),
        "seconds_per_query": float(np.mean([s for _, _, s in rankings])),
        "search_seconds_per_query": float(np.mean([r.search_seconds for _, r, _ in rankings])),
        **extra,
    }
    return RetrievalResult(method, summary, rows)


def evaluate_retrieval(
    extractor: Extractor,
    data: RetrievalData,
    max_side: int = 640,
    knn: int = 10,
    verify: int = 30,
    ransac_px: float = 15.0,
    progress: bool = True,
    kind: str = "auto",
) -> list[RetrievalResult]:
    """The rows of ``extractor`` on ``data`` (two for local features, one for global);
    ``kind``: the faiss index (:func:`keypointlab.retrieval.index.index_features`)."""
    feats, extract_seconds = extract_all(
        data.paths, extractor, max_side, progress, f"extracting {extractor.name}"
    )
    names = [data.name(i) for i in range(len(data.paths))]
    groups = [g or "" for g in data.groups]
    meta = {"kind": "global" if getattr(extractor, "is_global", False) else "local"}
    index = index_features(feats, names, groups, extractor.name, meta, kind)
    extra = {
        "database_images": index.images,
        "index_descriptors": index.descriptors,
        "index_bytes": index.nbytes(),
        "index_type": type(index.index).__name__,
        "extract_seconds_per_image": extract_seconds,
    }
    modes = [(extractor.name, False)]
    if not index.is_global:
        modes.append((f"{extractor.name}+votes", True))
    results = []
    for method, votes_only in modes:
        rankings = []
        for q in tqdm(data.queries, desc=f"querying {method}", disable=not progress, leave=False):
            start = time.perf_counter()
            ranking = rank(index, feats[q], knn, verify, ransac_px, votes_only, exclude=q)
            rankings.append((q, ranking, time.perf_counter() - start))
        results.append(_row(method, data, rankings, extra))
    return results


def markdown_table(results: list[RetrievalResult]) -> str:
    """The results as a markdown table."""
    lines = [
        "| features | mAP | P@1 | P@5 | P@10 | queries | database | descriptors | index MB "
        "| extract s/img | query s | of which search s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        s = r.summary
        lines.append(
            f"| {r.method} | {s['map']:.3f} | {s['precision_at_1']:.3f} | "
            f"{s['precision_at_5']:.3f} | {s['precision_at_10']:.3f} | {s['queries']} | "
            f"{s['database_images']} | {s['index_descriptors']} | "
            f"{s['index_bytes'] / 1e6:.2f} | {s['extract_seconds_per_image']:.3f} | "
            f"{s['seconds_per_query']:.4f} | {s.get('search_seconds_per_query', 0):.4f} |"
        )
    return "\n".join(lines)


def group_table(results: list[RetrievalResult]) -> str:
    """mAP per query group, one row per result."""
    groups = sorted({g for r in results for g in r.summary["map_by_group"]})
    lines = ["| features | " + " | ".join(groups) + " |", "|---" * (len(groups) + 1) + "|"]
    for r in results:
        m = r.summary["map_by_group"]
        lines.append(f"| {r.method} | " + " | ".join(f"{m.get(g, 0):.3f}" for g in groups) + " |")
    return "\n".join(lines)


def write_retrieval_report(
    results: list[RetrievalResult],
    data: RetrievalData,
    out_dir: str | Path,
    meta: dict[str, Any] | None = None,
    figure_queries: int = 5,
) -> dict[str, Path]:
    """``results.json``, ``report.md`` and ``top5.png`` (the first row's top 5 for the first
    image of up to ``figure_queries`` groups) in ``out_dir``."""
    from keypointlab.viz.plots import retrieval_figure, save_figure

    out = check_output_dir(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    doc = {
        "task": "retrieval",
        "meta": meta or {},
        "results": [
            {"method": r.method, "summary": r.summary, "queries": r.queries} for r in results
        ],
    }
    files = {"json": write_atomic(out / "results.json", json.dumps(doc, indent=1))}
    first = results[0]
    seen, picks = set(), []
    for row in first.queries:
        group = row["query"].split("/")[0]
        if group not in seen and len(picks) < figure_queries:
            seen.add(group)
            picks.append(row)
    by_name = {data.name(i): (p, data.groups[i]) for i, p in enumerate(data.paths)}
    panels = [
        (by_name[row["query"]], [by_name[t] for t in row["top"][:5]], row["ap"]) for row in picks
    ]
    fig = retrieval_figure(panels, f"{first.method}: top 5 (green: same group)")
    files["figure"] = save_figure(fig, out / "top5.png")
    md = [
        "# KeypointLab retrieval evaluation",
        "",
        ", ".join(f"{k}: {v}" for k, v in (meta or {}).items()),
        "",
        "Leave-one-out: every image of a group queries the database without itself; its "
        "positives are the other images of its group. mAP over complete rankings; "
        "`F` = kNN votes then RANSAC (affine) verification of the best-voted images, "
        "`F+votes` = votes only, `*-global` = one descriptor per image (cosine). Query "
        "seconds are search + verification, without extraction.",
        "",
        markdown_table(results),
        "",
        "mAP of each group's queries:",
        "",
        group_table(results),
        "",
        "![top 5](top5.png)",
        "",
    ]
    files["markdown"] = write_atomic(out / "report.md", "\n".join(md))
    return files
