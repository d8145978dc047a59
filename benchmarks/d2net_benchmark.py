"""D2-Net beside SIFT, ORB and KP2D: the protocol's table, MMA at 1..10 px by condition, and
extraction time at 480x640 as a ratio to SIFT, all measured in one run.

The paper's claims are about conditions, so besides the protocol's splits (HPatches ``i_``
illumination, ``v_`` viewpoint) the pairs are grouped by what changes in them: HPatches
sequences by their prefix, the Oxford affine sequences by their documented change (leuven:
light; graf, wall: viewpoint; boat, bark: zoom + rotation; bikes, trees: blur; ubc: JPEG),
anything else as "other". Timing runs every extractor on the first image of each sequence
resized to 480x640, ``--repeats`` times after one warm-up, and reports the median.

    python benchmarks/d2net_benchmark.py --data ../shared/data/eval \\
        --features d2net d2net@2 d2net_ms sift orb kp2d --out benchmarks/results/d2net
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from matplotlib.figure import Figure

from keypointlab.data.images import read_image
from keypointlab.data.sequences import load_dataset
from keypointlab.evaluation.benchmark import BenchmarkResult, evaluate_features
from keypointlab.evaluation.report import markdown_table, sequence_table, write_atomic
from keypointlab.features import get_extractor
from keypointlab.viz import save_figure

PROTOCOL_CONFIGS = (((240, 320), 300), ((480, 640), 1000))
OXFORD = {
    "leuven": "illumination",
    "graf": "viewpoint",
    "wall": "viewpoint",
    "boat": "zoom+rotation",
    "bark": "zoom+rotation",
    "bikes": "blur",
    "trees": "blur",
    "ubc": "jpeg",
}


def condition(sequence: str) -> str:
    """What changes along a sequence (see the module docstring)."""
    name = sequence.split("/")[-1]
    if name.startswith("i_"):
        return "illumination"
    if name.startswith("v_"):
        return "viewpoint"
    return OXFORD.get(name, "other")


def by_condition(result: BenchmarkResult) -> dict[str, dict[str, float | list[float]]]:
    """MMA 1..10, matching score and H@3 averaged over the pairs of each condition."""
    groups: dict[str, list] = {}
    for p in result.pairs:
        groups.setdefault(condition(p.sequence), []).append(p)
    out = {}
    for name, pairs in sorted(groups.items()):
        out[name] = {
            "pairs": len(pairs),
            "mma": [float(v) for v in np.mean([p.mma for p in pairs], axis=0)],
            "matching_score": float(np.mean([p.matching_score for p in pairs])),
            "homography_accuracy_3": float(np.mean([p.corner_error <= 3 for p in pairs])),
        }
    return out


def mma_table(results: list[BenchmarkResult]) -> str:
    """One row per (condition, method): MMA at 1..10 px, MS and H@3."""
    head = "| condition | method | pairs | " + " | ".join(f"@{t}" for t in range(1, 11))
    lines = [head + " | MS | H@3 |", "|---" * 15 + "|"]
    groups = {r.method: by_condition(r) for r in results}
    conditions = sorted({c for g in groups.values() for c in g})
    for c in conditions + ["all"]:
        for r in results:
            if c == "all":
                s = r.summary()
                g = {
                    "pairs": len(r.pairs),
                    "mma": s["mma"],
                    "matching_score": s["matching_score"],
                    "homography_accuracy_3": s["homography_accuracy_3"],
                }
            elif c in groups[r.method]:
                g = groups[r.method][c]
            else:
                continue
            mma = " | ".join(f"{v:.3f}" for v in g["mma"])
            lines.append(
                f"| {c} | {r.method} | {g['pairs']} | {mma} | {g['matching_score']:.3f} | "
                f"{g['homography_accuracy_3']:.2f} |"
            )
    return "\n".join(lines)


def mma_figure(results: list[BenchmarkResult], title: str) -> Figure:
    groups = {r.method: by_condition(r) for r in results}
    conditions = sorted({c for g in groups.values() for c in g}) + ["all"]
    fig = Figure(figsize=(3.2 * len(conditions), 3.2), constrained_layout=True)
    axes = fig.subplots(1, len(conditions), sharey=True)
    t = np.arange(1, 11)
    for ax, c in zip(np.atleast_1d(axes), conditions, strict=True):
        for r in results:
            mma = r.summary()["mma"] if c == "all" else groups[r.method].get(c, {}).get("mma")
            if mma is not None:
                ax.plot(t, mma, marker="o", ms=3, label=r.method)
        ax.set_title(c)
        ax.set_xlabel("threshold (px)")
        ax.grid(alpha=0.3)
    np.atleast_1d(axes)[0].set_ylabel("MMA")
    np.atleast_1d(axes)[0].legend(fontsize=7)
    fig.suptitle(title)
    return fig


def extractor(spec: str, **kwargs):
    """A feature by name, or ``name@scales`` for a learned model at other image scales
    (``d2net@2``: D2-Net on the image upsampled twice)."""
    name, _, scales = spec.partition("@")
    if scales:
        kwargs["scales"] = tuple(float(v) for v in scales.split(","))
    return get_extractor(name, **kwargs)


def timings(names: list[str], sequences: list, repeats: int, build=None) -> dict[str, float]:
    """Median extraction seconds per 480x640 image of each feature (``build(name,
    max_keypoints=...)`` makes its extractor; default :func:`extractor`)."""
    build = build or extractor
    images = [
        cv2.resize(read_image(s.images[1]), (640, 480), interpolation=cv2.INTER_AREA)
        for s in sequences
    ]
    out = {}
    for name in names:
        ex = build(name, max_keypoints=1000)
        ex.extract(images[0])  # warm-up
        times = []
        for _ in range(repeats):
            for im in images:
                t0 = time.perf_counter()
                ex.extract(im)
                times.append(time.perf_counter() - t0)
        out[ex.name] = float(np.median(times))
    return out


TIMING_HEADER = "## Extraction time per 480x640 image (median)"


def timing_table(t: dict[str, float]) -> list[str]:
    sift = t.get("sift")
    note = f"torch threads: {torch.get_num_threads()} (OMP_NUM_THREADS)"
    lines = [TIMING_HEADER, "", note, "", "| feature | ms | x SIFT |", "|---|---|---|"]
    for name, sec in t.items():
        lines.append(f"| {name} | {sec * 1000:.0f} | {f'{sec / sift:.1f}' if sift else '-'} |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("../shared/data/eval"))
    ap.add_argument(
        "--features", nargs="+", default=["d2net", "d2net@2", "d2net_ms", "sift", "orb", "kp2d"]
    )
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/d2net"))
    ap.add_argument(
        "--timing-only",
        action="store_true",
        help="measure the extraction times again and update them in --out's report",
    )
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    sequences, skipped = load_dataset(args.data)
    if args.timing_only:
        record = json.loads((args.out / "results.json").read_text())
        report = (args.out / "report.md").read_text()
        report = report[: report.index(TIMING_HEADER)]
        t = timings(args.features, sequences, args.repeats)
        record["seconds_per_image_480x640"] = t
        record["timing_threads"] = torch.get_num_threads()
        write_atomic(args.out / "results.json", json.dumps(record, indent=1))
        write_atomic(args.out / "report.md", report + "\n".join(timing_table(t)) + "\n")
        print("\n".join(timing_table(t)))
        return
    md = [f"# D2-Net benchmark on `{args.data}`", ""]
    record: dict = {"data": str(args.data), "results": {}, "conditions": {}}
    for size, k in PROTOCOL_CONFIGS:
        tag = f"{size[0]}x{size[1]}"
        results = []
        for n in args.features:
            t0 = time.perf_counter()
            results.append(evaluate_features(extractor(n), sequences, size, k, skipped, False))
            s = results[-1].summary()
            print(
                f"{n} {tag}: MS {s['matching_score']:.3f}, H@3 "
                f"{s['homography_accuracy_3']:.3f} ({time.perf_counter() - t0:.0f} s)",
                flush=True,
            )
        record["results"][tag] = {r.method: r.to_dict()["summary"] for r in results}
        record["conditions"][tag] = {r.method: by_condition(r) for r in results}
        save_figure(mma_figure(results, f"MMA at {tag}, top-{k}"), args.out / f"mma_{tag}.png")
        md += [
            f"## {tag}, top-{k}",
            "",
            markdown_table(results),
            "",
            f"![MMA by condition](mma_{tag}.png)",
            "",
            "### MMA by condition (1..10 px), matching score, H@3",
            "",
            mma_table(results),
            "",
            "### Matching score per sequence",
            "",
            sequence_table(results, "matching_score"),
            "",
        ]
    t = timings(args.features, sequences, args.repeats)
    record["seconds_per_image_480x640"] = t
    md += timing_table(t)
    write_atomic(args.out / "results.json", json.dumps(record, indent=1))
    write_atomic(args.out / "report.md", "\n".join(md) + "\n")
    print(f"wrote {args.out / 'report.md'} and results.json")


if __name__ == "__main__":
    main()
