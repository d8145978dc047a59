"""The ``keypointlab`` command line. With no arguments it runs the demo (the main job)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from keypointlab.errors import KeypointLabError

if TYPE_CHECKING:
    from keypointlab.features.base import Extractor, Features

logger = logging.getLogger("keypointlab")

# Errors that are the user's input, reported as one line instead of a traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (
    KeypointLabError,
    FileNotFoundError,
    KeyError,
    ValueError,
    OSError,
)


def _standard_configs(size: str | None, top_k: int | None) -> list[tuple[str, int]]:
    """(size, top-k) pairs: the protocol's two by default, else the one asked for."""
    if size is None:
        return [("240x320", top_k or 300), ("480x640", top_k or 1000)]
    if top_k is None:
        from keypointlab.evaluation.benchmark import parse_size

        hw = parse_size(size)
        top_k = 1000 if hw is not None and hw[0] * hw[1] >= 480 * 640 else 300
    return [(size, top_k)]


def _scales(text: str) -> tuple[float, ...]:
    """``"1.41,1,0.71"`` -> ``(1.41, 1.0, 0.71)`` (argparse type of ``--scales``)."""
    try:
        scales = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--scales {text!r}: give numbers like 1.41,1,0.71"
        ) from None
    if min(scales) <= 0:
        raise argparse.ArgumentTypeError(f"--scales {text!r}: scales must be positive")
    return scales


def _learned_options(args: argparse.Namespace) -> dict[str, Any]:
    """Keyword arguments for learned extractors (OpenCV features ignore them)."""
    return {"device": args.device, "scales": args.scales, "rotations": args.rotations}


def _add_learned_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="cpu", help="torch device for learned features")
    p.add_argument(
        "--scales",
        type=_scales,
        default=None,
        help="image scales a learned model runs at, e.g. 1.41,1,0.71 "
        "(default: the shipped model's own, 1 for checkpoints)",
    )
    p.add_argument(
        "--rotations",
        type=int,
        default=1,
        metavar="K",
        help="also run a learned model on the image turned by 360/K degree steps and pool "
        "the keypoints, for images that may be rotated (e.g. 8; default 1: upright only; "
        "OpenCV features ignore it)",
    )


def cmd_evaluate(args: argparse.Namespace) -> int:
    from keypointlab.data.sequences import load_dataset
    from keypointlab.evaluation.benchmark import evaluate_features, parse_size
    from keypointlab.evaluation.report import markdown_table, write_report
    from keypointlab.features import get_extractor
    from keypointlab.features.h5 import FeatureFileExtractor

    if not args.features and not args.features_file:
        raise ValueError("give --features NAME [NAME ...] and/or --features-file FILE")
    configs = _standard_configs(args.size, args.top_k)
    for size, _ in configs:
        parse_size(size)  # fail before any work on a bad size
    extractors = [get_extractor(name, **_learned_options(args)) for name in args.features]
    extractors += [FeatureFileExtractor(f) for f in args.features_file]
    sequences, skipped = load_dataset(args.data)
    results = []
    for extractor in extractors:
        for size, top_k in configs:
            results.append(
                evaluate_features(
                    extractor, sequences, parse_size(size), top_k, skipped, progress=not args.quiet
                )
            )
    meta = {"data": str(args.data), "sequences": len(sequences)}
    files = write_report(results, args.out, meta=meta)
    evaluated = any(r.pairs for r in results)
    if evaluated:  # a table of zeros would read as a result
        print(markdown_table(results))
    for r in results:
        if r.skipped:
            print(f"{r.method} @ {r.size}: skipped {len(r.skipped)}:")
            for s in r.skipped:
                print(f"  {s.item}: {s.reason}")
            break
    if not evaluated:
        raise ValueError(
            f"{args.data}: no pair could be evaluated; what was skipped and why is listed "
            f"above and in {files['markdown']}"
        )
    print(f"\nreport: {files['markdown']}\nresults: {files['json']}")
    return 0


MIN_MATCH_SIDE = 16  # pixels; smaller images hold no usable keypoints


def _extract_file(extractor: Extractor, path: Path) -> Features:
    """Features of one image file; an image too small to match is an error naming the file."""
    from keypointlab.data.images import read_image

    image = read_image(path)
    h, w = image.shape[:2]
    if min(h, w) < MIN_MATCH_SIDE:
        raise ValueError(
            f"{path}: image of size {h}x{w} is too small to match "
            f"(at least {MIN_MATCH_SIDE} pixels a side)"
        )
    try:
        return extractor.extract(image)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from exc


def cmd_match(args: argparse.Namespace) -> int:
    from keypointlab.api import draw_matches, estimate, load_extractor, match

    extractor = load_extractor(args.features, **_learned_options(args))
    f0, f1 = _extract_file(extractor, args.image0), _extract_file(extractor, args.image1)
    matches = match(f0, f1, ratio=args.ratio)
    est = estimate(f0, f1, matches, method=args.estimator)
    fig = draw_matches(args.image0, args.image1, f0, f1, matches, est)
    from keypointlab.viz import save_figure

    save_figure(fig, args.out)
    print(
        f"{len(f0)} / {len(f1)} keypoints, {len(matches)} matches, "
        f"{est.num_inliers} inliers ({'H found' if est.success else est.reason})"
    )
    if est.success:
        print("H_0to1 =\n" + "\n".join(" ".join(f"{v: .6g}" for v in row) for row in est.H))
    print(f"wrote {args.out}")
    if args.export:
        _export_pair(args, f0, f1, matches)
    return 0


def _export_pair(args: argparse.Namespace, f0, f1, matches) -> None:
    """features.h5 and matches.h5 in hloc's layout, keyed by the image file names."""
    import h5py
    import numpy as np

    from keypointlab.features.h5 import write_features
    from keypointlab.io.h5 import write_matches

    args.export.mkdir(parents=True, exist_ok=True)
    n0, n1 = args.image0.name, args.image1.name
    with h5py.File(args.export / "features.h5", "a") as h5:
        write_features(h5, n0, f0)
        write_features(h5, n1, f1)
    matches0 = np.full(len(f0), -1, dtype=np.int32)
    matches0[matches[:, 0]] = matches[:, 1]
    with h5py.File(args.export / "matches.h5", "a") as h5:
        write_matches(h5, n0, n1, matches0)
    print(f"wrote {args.export / 'features.h5'} and {args.export / 'matches.h5'} (hloc layout)")


def cmd_train(args: argparse.Namespace) -> int:
    from keypointlab.training.trainer import train

    record = train(args.config, args.overrides, resume=args.resume, progress=not args.quiet)
    print(json.dumps(record, indent=1))
    return 0


def cmd_extract(args: argparse.Namespace) -> int:
    from keypointlab.features import get_extractor
    from keypointlab.features.export import extract_folder

    extractor = get_extractor(args.features, **_learned_options(args))
    report = extract_folder(
        extractor,
        args.images,
        args.out,
        max_keypoints=args.max_keypoints,
        resume=args.resume,
        progress=not args.quiet,
    )
    print(
        f"{report.written} images written, {report.reused} already done, "
        f"{len(report.skipped)} skipped -> {args.out}"
    )
    for path, reason in report.skipped:
        print(f"  skipped {path}: {reason}")
    return 0


def cmd_export_onnx(args: argparse.Namespace) -> int:
    from keypointlab.evaluation.benchmark import parse_size
    from keypointlab.features import get_extractor
    from keypointlab.features.onnx import export_onnx

    size = parse_size(args.size)
    path = export_onnx(
        get_extractor(args.name),
        args.out or Path(f"{Path(args.name).stem}.onnx"),
        size=size or (240, 320),
    )
    print(
        f"wrote {path} (input 'image' (1, 3, H, W) in [0, 1]; outputs keypoints, scores, "
        "descriptors per cell)"
    )
    return 0


def cmd_ship(args: argparse.Namespace) -> int:
    import yaml

    from keypointlab.training.ship import ship_model

    options = {}
    for item in args.model_option:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--model-option {item!r}: expected KEY=VALUE")
        options[key] = yaml.safe_load(value)
    card = ship_model(
        args.run, args.name, args.eval_data, note=args.note, scales=args.scales,
        model_options=options, weights_of=args.weights_of, force=args.force,
    )
    print(card.read_text())
    return 0


def cmd_adapt(args: argparse.Namespace) -> int:
    from keypointlab.adaptation import homographic_adaptation, load_trained_model

    net = load_trained_model(args.checkpoint, device=args.device)
    report = homographic_adaptation(
        net,
        args.images,
        args.out,
        n_homographies=args.num_homographies,
        threshold=args.threshold,
        nms_radius=args.nms_radius,
        max_keypoints=args.max_keypoints,
        max_side=args.max_side,
        device=args.device,
        seed=args.seed,
        progress=not args.quiet,
    )
    print(
        f"{report.written} images labelled ({report.keypoints} keypoints), "
        f"{len(report.skipped)} skipped -> {args.out}"
    )
    for path, reason in report.skipped:
        print(f"  skipped {path}: {reason}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from keypointlab.demo import run_demo

    run_demo(args.out, features=args.features, progress=not args.quiet)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="keypointlab",
        description="Learn, evaluate and use local image features. "
        "With no command, runs the demo benchmark.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command")

    p = sub.add_parser("demo", help="sample benchmark of the available features (default)")
    p.add_argument("--out", type=Path, default=Path("keypointlab-report"))
    p.add_argument(
        "--features",
        nargs="+",
        default=None,
        help="features to compare (default: shipped models, SIFT, ORB)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("evaluate", help="evaluate features on sequences with ground truth")
    p.add_argument("--data", type=Path, required=True, help="folder of HPatches-format sequences")
    p.add_argument("--features", nargs="+", default=[], help="feature names, e.g. sift orb")
    p.add_argument(
        "--features-file",
        nargs="+",
        default=[],
        type=Path,
        help="HDF5 file(s) of precomputed features, one group per image path",
    )
    p.add_argument(
        "--size", default=None, help="HEIGHTxWIDTH or 'original' (default: 240x320 and 480x640)"
    )
    p.add_argument(
        "--top-k",
        type=int,
        default=None,
        help="keypoints kept per image (default 300, or 1000 at 480x640 and above)",
    )
    p.add_argument("--out", type=Path, default=Path("eval-report"))
    _add_learned_options(p)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("train", help="train a method from a YAML config")
    p.add_argument("config", type=Path, help="e.g. keypointlab/configs/kp2d.yaml")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.steps=100")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("extract", help="extract features of a folder of images to HDF5")
    p.add_argument("images", type=Path, help="folder of images (searched recursively)")
    p.add_argument("--out", type=Path, required=True, help="output .h5 (hloc layout)")
    p.add_argument("--features", default="sift", help="feature name or checkpoint path")
    p.add_argument("--max-keypoints", type=int, default=2000)
    p.add_argument("--resume", action="store_true", help="keep images already extracted")
    _add_learned_options(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_extract)

    p = sub.add_parser("export-onnx", help="export a learned extractor to ONNX")
    p.add_argument("name", help="shipped model name or checkpoint path")
    p.add_argument("--out", type=Path, default=None, help="output .onnx (default NAME.onnx)")
    p.add_argument("--size", default="240x320", help="HEIGHTxWIDTH of the example input")
    p.set_defaults(func=cmd_export_onnx)

    p = sub.add_parser("ship", help="package a training run as shipped weights + model card")
    p.add_argument(
        "run",
        help="training output folder (its newest checkpoint), a checkpoint, or a shipped "
        "model's name (its weights at other settings, e.g. --model-option)",
    )
    p.add_argument("--name", required=True, help="model name, e.g. kp2d")
    p.add_argument("--eval-data", type=Path, default=Path("../shared/data/eval"))
    p.add_argument("--note", default="", help="a paragraph for the model card")
    p.add_argument(
        "--scales",
        type=_scales,
        default=(1.0,),
        help="the model's default image scales, e.g. 1.41,1,0.71 (measured beside scale 1)",
    )
    p.add_argument(
        "--model-option", action="append", default=[], metavar="KEY=VALUE",
        help="override a model config entry, e.g. pyramid=[0.5,1,2] (repeatable)",
    )
    p.add_argument(
        "--weights-of", default=None, metavar="NAME",
        help="write no weights: use those of the shipped model NAME (same run)",
    )
    p.add_argument("--force", action="store_true", help="replace a shipped model of that name")
    p.set_defaults(func=cmd_ship)

    p = sub.add_parser(
        "adapt", help="homographic adaptation: pseudo-ground-truth keypoints of a folder"
    )
    p.add_argument("checkpoint", type=Path, help="magicpoint/superpoint checkpoint or run folder")
    p.add_argument("images", type=Path, help="folder of images (searched recursively)")
    p.add_argument("--out", type=Path, required=True, help="output labels .h5")
    p.add_argument("--num-homographies", type=int, default=20, help="views per image (paper: 100)")
    p.add_argument("--threshold", type=float, default=0.015, help="smallest aggregated score")
    p.add_argument("--nms-radius", type=int, default=4)
    p.add_argument("--max-keypoints", type=int, default=1000, help="per image (0: all)")
    p.add_argument("--max-side", type=int, default=320, help="downscale longer sides to this")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_adapt)

    p = sub.add_parser("match", help="match two images and draw the inlier matches")
    p.add_argument("image0", type=Path)
    p.add_argument("image1", type=Path)
    p.add_argument("--features", default="sift")
    p.add_argument("--out", type=Path, default=Path("matches.png"))
    p.add_argument("--estimator", default="ransac", choices=["ransac", "magsac", "lmeds"])
    p.add_argument("--ratio", type=float, default=None, help="Lowe ratio test (e.g. 0.8)")
    p.add_argument(
        "--export",
        type=Path,
        default=None,
        help="folder for features.h5 and matches.h5 in hloc's layout",
    )
    _add_learned_options(p)
    p.set_defaults(func=cmd_match)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (2 for bad input, with a one-line message)."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # `train CONFIG --resume key=value`: argparse ends the positional list at the option
    if extra and getattr(args, "command", None) == "train":
        overrides = [e for e in extra if "=" in e and not e.startswith("-")]
        args.overrides += overrides
        extra = [e for e in extra if e not in overrides]
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if args.command is None:
        args = parser.parse_args(["demo", *(argv or [])])
    try:
        return args.func(args)
    except USER_ERRORS as exc:
        if args.verbose:
            raise
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"keypointlab: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
