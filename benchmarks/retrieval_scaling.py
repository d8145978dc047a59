"""How retrieval quality and cost change as the database grows: the ``results.json`` of
``keypointlab evaluate --task retrieval`` at several database sizes, side by side.

    python benchmarks/retrieval_scaling.py benchmarks/results/retrieval/x1 \
        benchmarks/results/retrieval/x10 --out benchmarks/results/retrieval/scaling.md

For each feature: mAP, P@1, database images, index descriptors, type (faiss: exact
``IndexFlatL2`` up to 200,000 descriptors, inverted lists ``IndexIVFFlat`` above) and MB,
and seconds per query (all of it, and the kNN search with the vote count alone) at each
size, and the growth from the first size to each other as a ratio.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="evaluate --task retrieval outputs")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    docs = [json.loads((r / "results.json").read_text()) for r in args.runs]
    lines = [
        "# Retrieval as the database grows",
        "",
        "| features | database | mAP | P@1 | descriptors | index | index MB | query s "
        "| of which search s | query s / first | search s / first | index MB / first |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    first = {r["method"]: r["summary"] for r in docs[0]["results"]}
    for method in first:
        for doc in docs:
            s = next((r["summary"] for r in doc["results"] if r["method"] == method), None)
            if s is None:  # a run without this feature
                continue
            f = first[method]
            lines.append(
                f"| {method} | {s['database_images']} | {s['map']:.3f} | "
                f"{s['precision_at_1']:.3f} | {s['index_descriptors']} | "
                f"{s.get('index_type', '')} | {s['index_bytes'] / 1e6:.1f} | "
                f"{s['seconds_per_query']:.4f} | {s['search_seconds_per_query']:.4f} | "
                f"{s['seconds_per_query'] / f['seconds_per_query']:.1f}x | "
                f"{s['search_seconds_per_query'] / f['search_seconds_per_query']:.1f}x | "
                f"{s['index_bytes'] / f['index_bytes']:.1f}x |"
            )
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
