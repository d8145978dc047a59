"""Extraction throughput of ``keypointlab extract`` on one process and under ``torchrun``.

    OMP_NUM_THREADS=1 python benchmarks/distributed_throughput.py \
        [--data ../shared/data/train] [--images 40] [--features sift kp2d] [--procs 1 2]

Takes ``--images`` images evenly spaced over the sorted image list of ``--data`` (linked,
not copied, into a temporary folder), runs the command ``--repeats`` times per feature and
process count (the median counts; each time also on 4 of the images, for the fixed cost)
with ``OMP_NUM_THREADS=1`` in every process, and writes ``throughput.md``,
``throughput.json`` and ``throughput.log`` (the commands' output) to ``--out``. Times are
wall clock of the whole command (interpreter and torch start, model load, extraction,
merge), so they are what a user waits for. The merged file of every multi-process run is
compared with the single-process file: same groups, same root attributes,
``np.array_equal`` arrays.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import torch

from keypointlab.data.images import list_images

ROOT = Path(__file__).resolve().parents[1]
FEW = 4  # images of the short run that measures a command's fixed cost


def pick_images(data: Path, count: int, folder: Path) -> list[Path]:
    """Link ``count`` images evenly spaced over the sorted list of ``data`` into ``folder``."""
    paths = list_images(data)
    if len(paths) < count:
        raise SystemExit(f"{data}: {len(paths)} images, fewer than {count}")
    chosen = [paths[round(i * (len(paths) - 1) / max(count - 1, 1))] for i in range(count)]
    folder.mkdir(parents=True, exist_ok=True)
    for i, path in enumerate(chosen):
        (folder / f"{i:03d}_{path.name}").symlink_to(path.resolve())
    return chosen


def run(cmd: list[str], log) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    log.write(f"$ OMP_NUM_THREADS=1 {' '.join(cmd)}\n")
    start = time.perf_counter()
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    seconds = time.perf_counter() - start
    log.write(result.stdout + result.stderr + f"[exit {result.returncode}, {seconds:.2f} s]\n\n")
    log.flush()
    if result.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{result.stderr[-2000:]}")
    return seconds


def same_file(a: Path, b: Path) -> bool:
    """Same groups, datasets (``np.array_equal``, same dtype) and root attributes."""

    def walk(path: Path):
        items: dict[str, np.ndarray | None] = {}
        with h5py.File(path, "r") as h5:
            h5.visititems(
                lambda n, o: items.__setitem__(n, o[()] if isinstance(o, h5py.Dataset) else None)
            )
            return items, dict(h5.attrs)

    (da, aa), (db, ab) = walk(a), walk(b)
    if sorted(da) != sorted(db) or aa != ab:
        return False
    for key, value in da.items():
        other = db[key]
        if (value is None) != (other is None):
            return False
        if value is not None and (value.dtype != other.dtype or not np.array_equal(value, other)):
            return False
    return True


def command(procs: int, images: Path, features: str, out: Path) -> list[str]:
    args = ["extract", str(images), "--features", features, "--out", str(out), "--quiet"]
    if procs == 1:
        return [sys.executable, "-m", "keypointlab.cli", *args]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    return [*launcher, "--nproc_per_node", str(procs), "-m", "keypointlab.cli", *args]


def markdown(rows: list[dict], meta: dict) -> str:
    lines = [
        "# Extraction throughput: one process and torchrun",
        "",
        f"`python benchmarks/distributed_throughput.py` on {meta['images']} images of "
        f"`{meta['data']}` (evenly spaced over its sorted list, {meta['pixels']}), "
        f"{meta['cpus']} CPU cores, `OMP_NUM_THREADS=1` per process, torch {meta['torch']}, "
        f"{meta['date']}. Median of {meta['repeats']} runs of the whole command (start, "
        "model load, extraction, merge of the shards).",
        "",
        "| features | processes | seconds | images/s | speed-up | seconds, "
        f"{FEW} images | images/s beyond those | merged file equals 1 process |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        same = "-" if r["procs"] == 1 else ("yes" if r["equal_to_single"] else "**no**")
        lines.append(
            f"| {r['features']} | {r['procs']} | {r['seconds']:.1f} | {r['images_per_s']:.2f} "
            f"| {r['speedup']:.2f}x | {r['seconds_few']:.1f} | "
            f"{_rate(r['marginal_images_per_s'])} | {same} |"
        )
    fixed = {r["procs"]: r["seconds_few"] for r in rows if r["features"] == rows[0]["features"]}
    lines += [
        "",
        f"Fixed cost of a run ({rows[0]['features']}, {FEW} images): "
        + ", ".join(f"{s:.1f} s with {p} process{'es' if p > 1 else ''}" for p, s in fixed.items())
        + "; more processes only pay once a run's extraction time is well above "
        "that difference.",
        "",
        f'"images/s beyond those" is ({meta["images"]} - {FEW}) / (seconds - seconds of a '
        f"run on {FEW} of the images): the rate once the fixed cost of a run (interpreter, "
        "torch and, under torchrun, the rendezvous and process group) is paid.",
        "",
        f"**Note:** {meta['note'] or '(none given)'}",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "train")
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--features", nargs="+", default=["sift", "kp2d"])
    parser.add_argument("--procs", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--repeats", type=int, default=3, help="runs of each; the median counts")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/distributed")
    parser.add_argument(
        "--note",
        default="",
        help="how loaded the machine was during the runs (written into the report)",
    )
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp, open(args.out / "throughput.log", "w") as log:
        images = Path(tmp) / "images"
        chosen = pick_images(args.data, args.images, images)
        sizes = [_size(p) for p in chosen]
        few = Path(tmp) / "few"  # every 10th image: the fixed cost of a run
        few.mkdir()
        few_out = Path(tmp) / "few.h5"
        for link in sorted(images.iterdir())[:: max(args.images // FEW, 1)][:FEW]:
            (few / link.name).symlink_to(link.resolve())
        for features in args.features:
            single = None
            for procs in sorted(args.procs):
                out = Path(tmp) / f"{features}-{procs}.h5"
                times, fixed_times = [], []
                for _ in range(args.repeats):  # alternating, so a change of load hits both
                    times.append(run(command(procs, images, features, out), log))
                    fixed_times.append(run(command(procs, few, features, few_out), log))
                seconds, fixed = statistics.median(times), statistics.median(fixed_times)
                row = {
                    "features": features,
                    "procs": procs,
                    "all_seconds": times,
                    "all_seconds_few": fixed_times,
                    "seconds": seconds,
                    "images_per_s": args.images / seconds,
                    "seconds_few": fixed,
                    # None: the difference is within the noise of the fixed cost
                    "marginal_images_per_s": (
                        (args.images - FEW) / (seconds - fixed) if seconds > fixed else None
                    ),
                }
                if procs == 1:
                    single = out
                    row["equal_to_single"] = True
                else:
                    row["equal_to_single"] = bool(single and same_file(single, out))
                base = next((r for r in rows if r["features"] == features and r["procs"] == 1), row)
                row["speedup"] = base["seconds"] / seconds
                rows.append(row)
                print(json.dumps(row))
    pixels = np.array([h * w for h, w in sizes])
    meta = {
        "data": os.path.relpath(args.data, ROOT),
        "images": args.images,
        "pixels": f"{pixels.min() / 1e6:.2f}-{pixels.max() / 1e6:.2f} MP, median "
        f"{np.median(pixels) / 1e6:.2f} MP",
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "repeats": args.repeats,
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "note": args.note,
    }
    (args.out / "throughput.json").write_text(json.dumps({"meta": meta, "runs": rows}, indent=1))
    (args.out / "throughput.md").write_text(markdown(rows, meta))
    print(markdown(rows, meta))


def _rate(value: float | None) -> str:
    return "n/a (within noise)" if value is None else f"{value:.2f}"


def _size(path: Path) -> tuple[int, int]:
    from keypointlab.data.images import read_image

    return read_image(path).shape[:2]


if __name__ == "__main__":
    main()
