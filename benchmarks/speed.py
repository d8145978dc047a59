"""Speed benchmark: extraction, matching and training throughput, all measured in one run.

    python benchmarks/speed.py [--out benchmarks/results] [--repeats 7] [--readme README.md]

Writes ``speed.json`` and ``speed.md``; with ``--readme`` also replaces the table between
the ``<!-- speed -->`` markers in the README. Every ratio is against OpenCV SIFT measured in
the same process, so it stays meaningful on another machine.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from keypointlab.data.samples import sample_photo
from keypointlab.features import available_features, get_extractor
from keypointlab.matching import match_nn

SIZES = ((240, 320), (480, 640))
# superpoint is left out: it needs homographic-adaptation labels
TRAIN_METHODS = ("kp2d", "unsuperpoint", "magicpoint", "d2net")
CONFIGS = Path(__file__).resolve().parents[1] / "keypointlab" / "configs"


def median_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def extraction(repeats: int) -> list[dict]:
    names = [n for n in available_features() if n not in ("sift", "orb")]
    rows = []
    for size in SIZES:
        image = sample_photo("astronaut", size)
        base = None
        extractors = [get_extractor(name) for name in ["sift", "orb", *names]]
        # a model whose default runs at several scales is also timed at scale 1
        extractors += [
            get_extractor(name, scales=(1.0,))
            for ex, name in zip(extractors[2:], names, strict=True)
            if ex.name != name
        ]
        # and the rotation-invariant setting of the accurate model (README, Rotations)
        if "kp2d" in names:
            extractors.append(get_extractor("kp2d", rotations=8))
        for ex in extractors:
            t = median_time(lambda ex=ex, im=image: ex.extract(im), repeats)
            base = t if ex.name == "sift" else base
            rows.append(
                {
                    "feature": ex.name,
                    "size": f"{size[0]}x{size[1]}",
                    "ms": 1000 * t,
                    "ratio_to_sift": t / base,
                }
            )
    return rows


def _sift_descriptors(name: str, n: int) -> torch.Tensor:
    import cv2

    image = sample_photo(name, (960, 1280))
    _, desc = cv2.SIFT_create(nfeatures=n, contrastThreshold=0.01).detectAndCompute(image, None)
    return torch.from_numpy(desc[:n].astype(np.float32))


def matching(repeats: int) -> list[dict]:
    """Mutual nearest neighbour, exact pass against the matrix-product pass (its default
    from ``FAST_MIN_PAIRS`` on), and whether they give the same matches: random unit
    descriptors and SIFT's (integer-valued, so full of exact ties) of two photos."""
    rng = np.random.default_rng(0)
    sets = []
    for n in (1000, 4000):
        d0 = torch.nn.functional.normalize(torch.from_numpy(rng.standard_normal((n, 128))), dim=1)
        d1 = torch.nn.functional.normalize(torch.from_numpy(rng.standard_normal((n, 128))), dim=1)
        sets.append(("random unit", d0.float(), d1.float()))
    sets.append(("SIFT", _sift_descriptors("astronaut", 4000), _sift_descriptors("coffee", 4000)))
    rows = []
    for kind, d0, d1 in sets:
        exact = median_time(lambda a=d0, b=d1: match_nn(a, b, fast=False), repeats)
        fast = median_time(lambda a=d0, b=d1: match_nn(a, b, fast=True), repeats)
        same = torch.equal(match_nn(d0, d1, fast=False), match_nn(d0, d1, fast=True))
        same_ratio = torch.equal(
            match_nn(d0, d1, fast=False, ratio=0.8), match_nn(d0, d1, fast=True, ratio=0.8)
        )
        rows.append(
            {
                "descriptors": kind,
                "keypoints": [len(d0), len(d1)],
                "dim": d0.shape[1],
                "ms": 1000 * fast,
                "exact_ms": 1000 * exact,
                "identical": bool(same and same_ratio),
            }
        )
    return rows


_TRAIN_CHILD = """
import json, resource, sys, time, torch
from keypointlab.training.trainer import Trainer, load_config
conf = load_config(sys.argv[1], ["data.workers=0", "train.out=" + sys.argv[2],
                                 "train.validate_every=0", "train.checkpoint_every=100000",
                                 "train.steps=" + sys.argv[3], "data.train=" + sys.argv[4]])
trainer = Trainer(conf, progress=False)
trainer.fit()
steps = conf["train"]["steps"]
def peak_mb():
    # this process's own high-water mark: Linux's ru_maxrss also counts the parent's
    # memory at fork, which the extraction timings above have already raised
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"pairs_per_s": steps * conf["train"]["batch_size"] / trainer.train_seconds,
                  "peak_rss_mb": peak_mb(),
                  "batch_size": conf["train"]["batch_size"], "size": conf["data"]["size"]}))
"""


def training(steps: int, train_data: Path, tmp: Path) -> list[dict]:
    rows = []
    for method in TRAIN_METHODS:
        config = CONFIGS / f"{method}.yaml"
        if not config.is_file():
            continue
        cmd = [
            sys.executable,
            "-c",
            _TRAIN_CHILD,
            str(config),
            str(tmp / method),
            str(steps),
            str(train_data),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            rows.append({"method": method, "error": proc.stderr.strip().splitlines()[-1]})
            continue
        rows.append({"method": method, **json.loads(proc.stdout.strip().splitlines()[-1])})
    return rows


def _extraction_table(result: dict) -> list[str]:
    lines = ["| feature | size | ms / image | ratio to SIFT |", "|---|---|---|---|"]
    return lines + [
        f"| {r['feature']} | {r['size']} | {r['ms']:.1f} | {r['ratio_to_sift']:.2f} |"
        for r in result["extraction"]
    ]


def _matching_table(result: dict) -> list[str]:
    sift = next(
        r["ms"] for r in result["extraction"] if r["feature"] == "sift" and r["size"] == "480x640"
    )
    lines = [
        "| matching (mutual NN, D=128) | descriptors | ms / pair | exact pass ms | "
        "ratio to SIFT extraction at 480x640 | same matches as the exact pass |",
        "|---|---|---|---|---|---|",
    ]
    return lines + [
        f"| {r['keypoints'][0]} x {r['keypoints'][1]} | {r['descriptors']} | {r['ms']:.1f} | "
        f"{r['exact_ms']:.1f} | {r['ms'] / sift:.2f} | {'yes' if r['identical'] else 'NO'} |"
        for r in result["matching"]
    ]


def markdown(result: dict) -> str:
    lines = [*_extraction_table(result), "", *_matching_table(result)]
    lines += [
        "",
        "| training | pairs / s | peak RSS (MB) | batch | crop |",
        "|---|---|---|---|---|",
    ]
    for r in result["training"]:
        if "error" in r:
            lines.append(f"| {r['method']} | error: {r['error']} | | | |")
        else:
            lines.append(
                f"| {r['method']} | {r['pairs_per_s']:.1f} | {r['peak_rss_mb']:.0f} | "
                f"{r['batch_size']} | {r['size'][0]}x{r['size'][1]} |"
            )
    m = result["machine"]
    lines += [
        "",
        f"Measured {m['date']} on {m['cpus']} CPU cores, torch {m['torch']} "
        f"({m['threads']} threads), OpenCV {m['opencv']}; medians of {m['repeats']}.",
    ]
    return "\n".join(lines)


def matching_only(args: argparse.Namespace) -> None:
    """The matching rows beside SIFT's extraction time, measured in this run."""
    image = sample_photo("astronaut", (480, 640))
    sift = get_extractor("sift")
    t = median_time(lambda: sift.extract(image), args.repeats)
    result = {
        "extraction": [{"feature": "sift", "size": "480x640", "ms": 1000 * t, "ratio_to_sift": 1}],
        "matching": matching(args.repeats),
    }
    table = "\n".join([*_extraction_table(result), "", *_matching_table(result)])
    lines = [
        "# Mutual nearest-neighbour matching: exact pass and matrix-product pass",
        "",
        f"`python benchmarks/speed.py --matching-only --repeats {args.repeats}`; torch "
        f"{torch.__version__} with {torch.get_num_threads()} thread(s); medians.",
        "",
        table,
    ]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "matching.md").write_text("\n".join(lines) + "\n")
    (args.out / "matching.json").write_text(json.dumps(result, indent=1))
    print("\n".join(lines))


def _machine(repeats: int) -> dict:
    import os

    import cv2

    return {
        "date": time.strftime("%Y-%m-%d"),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "opencv": cv2.__version__,
        "python": platform.python_version(),
        "repeats": repeats,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--train-steps", type=int, default=20)
    parser.add_argument("--train-data", type=Path, default=Path("../shared/data/train"))
    parser.add_argument("--readme", type=Path, default=None)
    parser.add_argument(
        "--matching-only",
        action="store_true",
        help="only SIFT's extraction at 480x640 and the matching rows, into matching.md",
    )
    args = parser.parse_args()
    if args.matching_only:
        matching_only(args)
        return

    args.out.mkdir(parents=True, exist_ok=True)
    result = {
        "machine": _machine(args.repeats),
        "extraction": extraction(args.repeats),
        "matching": matching(args.repeats),
        "training": training(args.train_steps, args.train_data, Path(tempfile.mkdtemp()))
        if args.train_data.is_dir()
        else [],
        "peak_rss_mb_benchmark": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    (args.out / "speed.json").write_text(json.dumps(result, indent=1))
    table = markdown(result)
    (args.out / "speed.md").write_text(table + "\n")
    print(table)
    if args.readme:
        text = args.readme.read_text()
        new = re.sub(
            r"<!-- speed -->.*<!-- /speed -->",
            f"<!-- speed -->\n{table}\n<!-- /speed -->",
            text,
            flags=re.S,
        )
        args.readme.write_text(new)


if __name__ == "__main__":
    main()
