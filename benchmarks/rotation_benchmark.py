"""How do features hold up when the image turns? Matching score and H@3 against rotation.

From image 1 of every sequence of ``--data``, the script makes pairs that differ only by an
in-plane rotation: the image is resized to 480x640, rotated about its centre by each angle
(OpenCV, bilinear), and the central ``--crop`` x ``--crop`` square of the original and of
the rotated image form a pair with its exact homography. The square fits inside the image at
every angle, so neither view has empty corners and nothing is resized at evaluation.

Every feature is evaluated on every pair with the protocol of ``shared/PROTOCOL.md``
(``--top-k`` keypoints at the crop's own size), and the script writes a table and a plot of
matching score and homography accuracy at 3 px against the angle.

    python benchmarks/rotation_benchmark.py --data ../shared/data/eval \\
        --features sift orb kp2d --rotations 1 8 --out benchmarks/results/rotation
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import cv2
import matplotlib
import numpy as np

from keypointlab.data.images import read_image
from keypointlab.data.sequences import load_dataset
from keypointlab.evaluation.benchmark import evaluate_features
from keypointlab.evaluation.report import write_atomic
from keypointlab.features import get_extractor
from keypointlab.features.classical import available_opencv_features

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ANGLES = (0, 15, 30, 45, 60, 90, 135, 180)


def make_pairs(data: Path, out: Path, angles: tuple[int, ...], crop: int) -> int:
    """Write ``out/rot{angle:03d}/{sequence}/{1,2}.png`` and ``H_1_2``; returns the count."""
    sequences, _ = load_dataset(data)
    n = 0
    for seq in sequences:
        image = cv2.resize(read_image(seq.images[1]), (640, 480), interpolation=cv2.INTER_AREA)
        centre = ((640 - 1) / 2, (480 - 1) / 2)
        shift = np.eye(3)
        shift[:2, 2] = [(crop - 1) / 2 - centre[0], (crop - 1) / 2 - centre[1]]
        for angle in angles:
            M = np.vstack([cv2.getRotationMatrix2D(centre, angle, 1.0), [0, 0, 1]])
            rotated = cv2.warpAffine(image, M[:2], (640, 480), flags=cv2.INTER_LINEAR)
            folder = out / f"rot{angle:03d}" / seq.name.replace("/", "_")
            folder.mkdir(parents=True, exist_ok=True)
            for name, img in (("1.png", image), ("2.png", rotated)):
                inner = cv2.warpAffine(img, shift[:2], (crop, crop), flags=cv2.INTER_NEAREST)
                cv2.imwrite(str(folder / name), cv2.cvtColor(inner, cv2.COLOR_RGB2BGR))
            H = shift @ M @ np.linalg.inv(shift)
            np.savetxt(folder / "H_1_2", H)
            n += 1
    return n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="../shared/data/eval")
    ap.add_argument("--features", nargs="+", default=["sift", "orb", "kp2d"])
    ap.add_argument(
        "--rotations",
        nargs="+",
        type=int,
        default=[1, 8],
        help="each learned feature is run with each of these (1 = upright)",
    )
    ap.add_argument("--angles", nargs="+", type=int, default=list(ANGLES))
    ap.add_argument("--crop", type=int, default=240)
    ap.add_argument("--top-k", type=int, default=300)
    ap.add_argument("--out", default="benchmarks/results/rotation")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args()

    extractors = []
    for name in args.features:
        if name in available_opencv_features():  # their own orientations
            extractors.append(get_extractor(name))
        else:
            extractors += [get_extractor(name, rotations=k) for k in args.rotations]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows: dict[str, dict[int, tuple[float, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        n = make_pairs(Path(args.data), Path(tmp), tuple(args.angles), args.crop)
        print(f"{n} pairs at {len(args.angles)} angles, {args.crop}x{args.crop}, top-{args.top_k}")
        sequences, _ = load_dataset(tmp)
        for ex in extractors:
            result = evaluate_features(ex, sequences, None, args.top_k, progress=not args.quiet)
            per_angle: dict[int, list[tuple[float, float]]] = {}
            for p in result.pairs:
                angle = int(p.sequence.split("/")[0][3:])
                per_angle.setdefault(angle, []).append(
                    (p.matching_score, float(p.corner_error <= 3))
                )
            rows[ex.name] = {a: tuple(np.mean(v, axis=0)) for a, v in sorted(per_angle.items())}
            print(
                ex.name, " ".join(f"{a}:{ms:.3f}/{h:.2f}" for a, (ms, h) in rows[ex.name].items())
            )

    angles = sorted(args.angles)
    lines = [
        f"# Matching under in-plane rotation ({n} pairs, {args.crop}x{args.crop}, "
        f"top-{args.top_k})",
        "",
        "Matching score / homography accuracy at 3 px, mean over the sequences' image 1.",
        "",
        "| feature | " + " | ".join(f"{a} deg" for a in angles) + " |",
        "|---" * (len(angles) + 1) + "|",
    ]
    for name, by_angle in rows.items():
        cells = [f"{by_angle[a][0]:.3f} / {by_angle[a][1]:.2f}" for a in angles]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    write_atomic(out / "report.md", "\n".join(lines) + "\n")
    write_atomic(
        out / "results.json",
        json.dumps({k: {str(a): v for a, v in r.items()} for k, r in rows.items()}, indent=1),
    )
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for name, by_angle in rows.items():
        for i, ax in enumerate(axes):
            ax.plot(angles, [by_angle[a][i] for a in angles], marker="o", label=name)
    for ax, label in zip(axes, ("matching score", "homography accuracy @3 px"), strict=True):
        ax.set_xlabel("rotation (degrees)")
        ax.set_ylabel(label)
        ax.set_xticks(angles)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "rotation.png", dpi=100)
    print(f"report: {out / 'report.md'}")


if __name__ == "__main__":
    main()
