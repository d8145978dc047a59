"""The main job: a sample benchmark of the available features, as a report folder."""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path

from keypointlab.api import draw_matches, estimate, match
from keypointlab.data.images import read_image, resize_image
from keypointlab.data.samples import build_sample_benchmark
from keypointlab.data.sequences import load_dataset
from keypointlab.evaluation.benchmark import evaluate_features
from keypointlab.evaluation.report import write_report
from keypointlab.features import available_features, get_extractor
from keypointlab.features.classical import available_opencv_features
from keypointlab.viz import save_figure

logger = logging.getLogger(__name__)

DEMO_CONFIGS = (((240, 320), 300), ((480, 640), 1000))
MATCH_PAIRS = (("v_astronaut", 4), ("v_rocket", 6), ("i_coffee", 5))


def default_features() -> list[str]:
    """Shipped learned models first, then SIFT and ORB."""
    learned = [n for n in available_features() if n not in available_opencv_features()]
    return learned + ["sift", "orb"]


def run_demo(
    out_dir: str | Path = "keypointlab-report",
    features: list[str] | None = None,
    progress: bool = True,
) -> Path:
    """Build the sample benchmark, evaluate ``features`` on it and write the report.

    Returns:
        The path of the Markdown report.
    """
    start = time.perf_counter()
    out = Path(out_dir)
    data = build_sample_benchmark(out / "sample-benchmark", progress=progress)
    sequences, skipped = load_dataset(data)
    names = features or default_features()
    extractors = [get_extractor(n) for n in names]
    results = [
        evaluate_features(ex, sequences, size, k, skipped, progress=progress)
        for ex in extractors
        for size, k in DEMO_CONFIGS
    ]
    pictures = ["## Matches on sample pairs (240x320, mutual NN + RANSAC; inliers green)", ""]
    by_name = {s.name: s for s in sequences}
    for ex in extractors:
        for seq_name, n in MATCH_PAIRS:
            seq = by_name[seq_name]
            im0, im1 = (resize_image(read_image(seq.images[i]), (240, 320)) for i in (1, n))
            f0, f1 = ex.extract(im0), ex.extract(im1)
            f0, f1 = f0.top_k(300), f1.top_k(300)
            m = match(f0, f1)
            est = estimate(f0, f1, m)
            fig = draw_matches(im0, im1, f0, f1, m, est)
            fig.suptitle(f"{ex.name}: {seq_name} 1-{n}")
            stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", ex.name)  # kp2d@1.41,1,0.71 -> kp2d_1.41_1_0.71
            rel = f"matches/{stem}_{seq_name}_1-{n}.png"
            save_figure(fig, out / rel)
            pictures.append(f"![{ex.name} {seq_name}]({rel})")
    meta = {
        "data": "scikit-image sample benchmark (seed 0)",
        "sequences": len(sequences),
        "pairs": sum(len(s.pairs()) for s in sequences),
    }
    files = write_report(
        results,
        out,
        title="KeypointLab demo: sample benchmark",
        meta=meta,
        extra_markdown="\n".join(pictures),
    )
    from keypointlab.evaluation.report import markdown_table

    print(markdown_table(results))
    print(f"\nreport: {files['markdown']} ({time.perf_counter() - start:.0f} s)")
    return files["markdown"]
