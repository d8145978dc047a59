"""LF-Net beside SIFT, ORB and KP2D under pure rotation, pure zoom and on the eval set.

- *Rotation* (0-180 degrees) and *zoom* (1-3x) pairs from image 1 of every sequence of
  ``--data``: the image resized to 480x640, turned (or zoomed) about its centre, and the
  central 240x240 square of both views with the exact homography (see
  ``rotation_benchmark.py``; the zoomed view shows the centre magnified, so all of it is in
  view 1). Matching score and H@3 per angle / zoom, top-300.
- *Orientation error*: for features with orientations, over the keypoints of view 1 whose
  warped position has a mutual-nearest keypoint of view 2 within 3 px, the difference of
  their orientations minus the rotation the homography applies there (median in degrees,
  share within 15 degrees).
- *Eval set* at both protocol sizes, boat per pair, and extraction time per 480x640 image
  (median) as a ratio to SIFT, all in one run.

``lfnet-upright`` is the same network with every keypoint taken upright at scale 1 (the
paper's question: does the learned scale and orientation help?); ``kp2d+rot8`` is kp2d with
7 rotated copies.

    python benchmarks/lfnet_benchmark.py --data ../shared/data/eval --out benchmarks/results/lfnet
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from matplotlib.figure import Figure

sys.path.insert(0, str(Path(__file__).resolve().parent))
from d2net_benchmark import timings  # noqa: E402
from rotation_benchmark import make_pairs  # noqa: E402

from keypointlab.data.images import read_image  # noqa: E402
from keypointlab.data.sequences import load_dataset  # noqa: E402
from keypointlab.evaluation.benchmark import evaluate_features  # noqa: E402
from keypointlab.evaluation.report import markdown_table, write_atomic  # noqa: E402
from keypointlab.features import get_extractor  # noqa: E402
from keypointlab.geometry.groundtruth import HomographyGroundTruth  # noqa: E402
from keypointlab.geometry.homography import warp_points  # noqa: E402
from keypointlab.viz import save_figure  # noqa: E402

ANGLES = (0, 15, 30, 45, 60, 90, 135, 180)
ZOOMS = (1.0, 1.5, 2.0, 2.5, 3.0)
FEATURES = ("lfnet", "lfnet-upright", "sift", "orb", "kp2d", "kp2d+rot8")


ABLATIONS = {  # name -> (shipped model, model settings changed at inference)
    "lfnet-upright": ("lfnet", {"learned_orientation": False, "learned_scale": False}),
    "lift-upright": ("lift", {"learned_orientation": False}),
    "lift-siftdet": ("lift", {"detector": "sift"}),
}


def extractor(spec: str, **kwargs):
    if spec in ABLATIONS:
        model, settings = ABLATIONS[spec]
        ex = get_extractor(model, **kwargs)
        ex.net.conf.update(settings)
        ex.name = spec
        return ex
    if spec.endswith("+rot8"):
        return get_extractor(spec[: -len("+rot8")], rotations=8, **kwargs)
    return get_extractor(spec, **kwargs)


def make_zoom_pairs(data: Path, out: Path, zooms: tuple[float, ...], crop: int) -> int:
    """``out/zoom{z*10:03.0f}/{sequence}/{1,2}.png`` and ``H_1_2``."""
    sequences, _ = load_dataset(data)
    n = 0
    for seq in sequences:
        image = cv2.resize(read_image(seq.images[1]), (640, 480), interpolation=cv2.INTER_AREA)
        c = ((640 - 1) / 2, (480 - 1) / 2)
        shift = np.eye(3)
        shift[:2, 2] = [(crop - 1) / 2 - c[0], (crop - 1) / 2 - c[1]]
        for z in zooms:
            M = np.array([[z, 0, (1 - z) * c[0]], [0, z, (1 - z) * c[1]], [0, 0, 1.0]])
            H = shift @ M @ np.linalg.inv(shift)
            folder = out / f"zoom{round(z * 10):03d}" / seq.name.replace("/", "_")
            folder.mkdir(parents=True, exist_ok=True)
            v1 = cv2.warpAffine(image, shift[:2], (crop, crop), flags=cv2.INTER_AREA)
            v2 = cv2.warpAffine(image, (shift @ M)[:2], (crop, crop), flags=cv2.INTER_LINEAR)
            for name, img in (("1.png", v1), ("2.png", v2)):
                cv2.imwrite(str(folder / name), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
            np.savetxt(folder / "H_1_2", H)
            n += 1
    return n


def orientation_errors(ex, sequences, radius: float = 3.0) -> np.ndarray:
    """Degrees, over the repeatable keypoints of every pair (see the module)."""
    errors = []
    for seq in sequences:
        for i, j in seq.pairs():
            H = seq.homographies[j]
            f1 = ex.extract(read_image(seq.images[i]))
            if f1.orientations is None:
                return np.zeros(0)  # a feature without orientations
            f2 = ex.extract(read_image(seq.images[j]))
            if not len(f1.keypoints) or not len(f2.keypoints):
                continue
            w = warp_points(f1.keypoints.astype(np.float64), H)
            d = np.linalg.norm(w[:, None] - f2.keypoints[None], axis=-1)
            a, b = d.argmin(1), d.argmin(0)
            mutual = (b[a] == np.arange(len(a))) & (d[np.arange(len(a)), a] <= radius)
            gt = HomographyGroundTruth(torch.as_tensor(H, dtype=torch.float64)[None])
            _, _, turn, _ = gt.local_frames(
                torch.as_tensor(f1.keypoints, dtype=torch.float64)[None]
            )
            diff = f2.orientations[a] - f1.orientations - turn[0].numpy()
            wrapped = np.abs((diff + math.pi) % (2 * math.pi) - math.pi)
            errors.append(np.degrees(wrapped[mutual]))
    return np.concatenate(errors) if errors else np.zeros(0)


def per_level(result, prefix: str) -> dict[str, tuple[float, float]]:
    levels: dict[str, list[tuple[float, float]]] = {}
    for p in result.pairs:
        level = p.sequence.split("/")[0][len(prefix) :]
        levels.setdefault(level, []).append((p.matching_score, float(p.corner_error <= 3)))
    return {k: tuple(float(x) for x in np.mean(v, axis=0)) for k, v in sorted(levels.items())}


def curve_figure(rows: dict, xs: list, xlabel: str, title: str) -> Figure:
    fig = Figure(figsize=(10, 4))
    axes = fig.subplots(1, 2)
    for name, by in rows.items():
        for i, ax in enumerate(axes):
            ax.plot(xs, [by[k][i] for k in by], marker="o", label=name)
    for ax, label in zip(axes, ("matching score", "homography accuracy @3 px"), strict=True):
        ax.set_xlabel(xlabel)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(title)
    return fig


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("../shared/data/eval"))
    ap.add_argument("--features", nargs="+", default=list(FEATURES))
    ap.add_argument("--timing", nargs="+", default=["lfnet", "sift", "orb", "kp2d"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/lfnet"))
    ap.add_argument("--threads", type=int, default=2, help="torch threads (SIFT uses one)")
    ap.add_argument(
        "--large", nargs="+", help="features also evaluated at 480x640 (default: all but +rot8)"
    )
    ap.add_argument("--title", default="LF-Net benchmark")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    record: dict = {"rotation": {}, "zoom": {}, "orientation_error": {}, "eval": {}}
    md = [f"# {args.title} on `{args.data}` ({args.threads} torch threads)", ""]
    with tempfile.TemporaryDirectory() as tmp:
        n_rot = make_pairs(args.data, Path(tmp) / "rot", ANGLES, 240)
        n_zoom = make_zoom_pairs(args.data, Path(tmp) / "zoom", ZOOMS, 240)
        rot, _ = load_dataset(Path(tmp) / "rot")
        zoom, _ = load_dataset(Path(tmp) / "zoom")
        for spec in args.features:
            ex = extractor(spec)
            t0 = time.perf_counter()
            r = evaluate_features(ex, rot, None, 300, progress=False)
            z = evaluate_features(ex, zoom, None, 300, progress=False)
            record["rotation"][ex.name] = per_level(r, "rot")
            record["zoom"][ex.name] = per_level(z, "zoom")
            e_rot, e_zoom = orientation_errors(ex, rot), orientation_errors(ex, zoom)
            if len(e_rot) or len(e_zoom):  # features with orientations
                record["orientation_error"][ex.name] = {
                    name: {
                        "median_degrees": float(np.median(e)) if len(e) else None,
                        "within_15_degrees": float(np.mean(e <= 15)) if len(e) else None,
                        "keypoints": int(len(e)),
                    }
                    for name, e in (("rotation", e_rot), ("zoom", e_zoom))
                }
            print(
                f"{ex.name}: rotation and zoom done ({time.perf_counter() - t0:.0f} s)", flush=True
            )
    for kind, levels, unit in (("rotation", ANGLES, "deg"), ("zoom", ZOOMS, "x")):
        rows = record[kind]
        keys = list(next(iter(rows.values())))
        label = [f"{a} {unit}" for a in levels]
        md += [
            f"## {kind.capitalize()} ({n_rot if kind == 'rotation' else n_zoom} pairs, 240x240, "
            "top-300): matching score / H@3",
            "",
            "| feature | " + " | ".join(label) + " |",
            "|---" * (len(label) + 1) + "|",
        ]
        for name, by in rows.items():
            md.append(
                f"| {name} | " + " | ".join(f"{by[k][0]:.3f} / {by[k][1]:.2f}" for k in keys) + " |"
            )
        md += ["", f"![{kind}]({kind}.png)", ""]
        save_figure(
            curve_figure(rows, list(levels), f"{kind} ({unit})", kind), args.out / f"{kind}.png"
        )
    md += [
        "## Orientation error on repeatable keypoints (3 px)",
        "",
        "| feature | pairs | median (deg) | within 15 deg | keypoints |",
        "|---|---|---|---|---|",
    ]
    for name, by in record["orientation_error"].items():
        for kind, e in by.items():
            med = "-" if e["median_degrees"] is None else f"{e['median_degrees']:.1f}"
            share = "-" if e["within_15_degrees"] is None else f"{e['within_15_degrees']:.2f}"
            md.append(f"| {name} | {kind} | {med} | {share} | {e['keypoints']} |")
    sequences, skipped = load_dataset(args.data)
    results = []
    for size, k in (((240, 320), 300), ((480, 640), 1000)):
        for spec in args.features:
            if size[0] > 240 and (spec not in args.large if args.large else "+rot8" in spec):
                continue  # +rot8 takes 13x the time; the rotation table above covers it
            results.append(evaluate_features(extractor(spec), sequences, size, k, skipped, False))
            s = results[-1].summary()
            print(f"{results[-1].method} {size}: MS {s['matching_score']:.3f}", flush=True)
    record["eval"] = {f"{r.method} {r.size}": r.summary() for r in results}
    md += [
        "",
        f"## `{args.data}`",
        "",
        markdown_table(results),
        "",
        "### oxford/boat per pair",
        "",
        "| feature | size | pair | MS | corner error |",
        "|---|---|---|---|---|",
    ]
    boat = {}
    for r in results:
        for p in r.pairs:
            if p.sequence.endswith("boat"):
                boat.setdefault(f"{r.method} {r.size}", []).append(
                    (p.pair, p.matching_score, p.corner_error)
                )
                md.append(
                    f"| {r.method} | {r.size} | {p.pair} | {p.matching_score:.3f} | "
                    f"{p.corner_error:.1f} |"
                )
    record["boat"] = boat
    t = timings(args.timing, sequences, args.repeats, extractor)
    record["seconds_per_image_480x640"] = t
    md += [
        "",
        "## Extraction time per 480x640 image (median)",
        "",
        "| feature | ms | x SIFT |",
        "|---|---|---|",
    ]
    for name, sec in t.items():
        md.append(f"| {name} | {sec * 1000:.0f} | {sec / t['sift']:.1f} |")
    write_atomic(args.out / "results.json", json.dumps(record, indent=1, default=str))
    write_atomic(args.out / "report.md", "\n".join(md) + "\n")
    print(f"wrote {args.out / 'report.md'}")


if __name__ == "__main__":
    main()
