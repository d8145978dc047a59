"""Cross-check: KeypointLab's evaluation against an independent implementation of the protocol.

    python benchmarks/protocol_crosscheck.py --data ../shared/data/eval/oxford

Extracts SIFT (the protocol's settings) into an HDF5 features file, evaluates it with
``keypointlab evaluate --features-file ... --size original`` and with the naive
implementation in ``tests/reference_protocol.py`` (written from PROTOCOL.md alone), and
reports the largest difference of every summary metric.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import h5py

from keypointlab.cli import main as cli
from keypointlab.data.images import read_image
from keypointlab.data.sequences import load_dataset
from keypointlab.features import get_extractor
from keypointlab.features.h5 import write_features

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from reference_protocol import evaluate_reference  # noqa: E402

KEYS = (
    "repeatability",
    "localization_error",
    "homography_accuracy_1",
    "homography_accuracy_3",
    "homography_accuracy_5",
    "matching_score",
    "mma_3",
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=Path("../shared/data/eval/oxford"))
    parser.add_argument("--top-k", type=int, default=300)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/protocol_crosscheck"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    h5_path = args.out / "sift_features.h5"
    sequences, _ = load_dataset(args.data)
    sift = get_extractor("sift")
    with h5py.File(h5_path, "w") as h5:
        for seq in sequences:
            for i in seq.images:
                write_features(h5, seq.relative(i), sift.extract(read_image(seq.images[i])))
    cli(
        [
            "evaluate",
            "--features-file",
            str(h5_path),
            "--data",
            str(args.data),
            "--size",
            "original",
            "--top-k",
            str(args.top_k),
            "--out",
            str(args.out / "keypointlab"),
            "--quiet",
        ]
    )
    ours = json.loads((args.out / "keypointlab" / "results.json").read_text())["summary"]
    ref = evaluate_reference(str(args.data), str(h5_path), args.top_k)
    lines = ["| metric | KeypointLab | independent | abs diff |", "|---|---|---|---|"]
    worst = 0.0
    for k in KEYS:
        d = abs(ours[k] - ref[k])
        worst = max(worst, d)
        lines.append(f"| {k} | {ours[k]:.6f} | {ref[k]:.6f} | {d:.1e} |")
    mma = max(abs(a - b) for a, b in zip(ours["mma"], ref["mma"], strict=True))
    worst = max(worst, mma)
    lines += [
        "",
        f"pairs: {ours['pairs']} vs {ref['pairs']}; MMA@1..10 max diff {mma:.1e}; "
        f"largest difference {worst:.1e} ({'agree' if worst <= 1e-6 else 'DISAGREE'} "
        "to 1e-6)",
    ]
    h5_path.unlink()
    text = "\n".join(lines)
    (args.out / "crosscheck.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
