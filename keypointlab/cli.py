"""The ``keypointlab`` command line. With no arguments it runs the demo (the main job)."""

from __future__ import annotations

import argparse
import functools
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from keypointlab import limits
from keypointlab.errors import InputError, KeypointLabError

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
BAD_INPUT, INTERNAL_ERROR, INTERRUPTED = 2, 1, 130  # exit statuses (see `main`)
# Bad input that a library reports with its own type: (module, class, what it is about).
# Looked up in sys.modules, so none of these is imported just to report an error.
LIBRARY_ERRORS = (
    ("cv2", "error", "OpenCV"),
    ("yaml", "YAMLError", "invalid YAML"),
    ("safetensors", "SafetensorError", "invalid safetensors file"),
)


def _one_line(text: object) -> str:
    return " ".join(line.strip() for line in str(text).splitlines() if line.strip())


def _out_of_memory(exc: BaseException) -> bool:
    """``MemoryError``, or torch's allocation failures (``RuntimeError`` on the CPU,
    ``torch.cuda.OutOfMemoryError`` on a GPU)."""
    if isinstance(exc, MemoryError):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and (
        "out of memory" in text or "can't allocate memory" in text or "not enough memory" in text
    )


def _library_error(exc: BaseException) -> str | None:
    """The one-line message of a library's bad-input error, ``None`` for other types."""
    for module, name, what in LIBRARY_ERRORS:
        cls = getattr(sys.modules.get(module), name, None)
        if isinstance(cls, type) and isinstance(exc, cls):
            if module == "cv2" and getattr(exc, "err", None):  # without file, line, version
                func = str(getattr(exc, "func", ""))
                where = f" (in {func})" if func and len(func) <= 60 else ""  # not templates
                err = "\n".join(line.lstrip("> ") for line in str(exc.err).splitlines())
                return f"{what}: {_one_line(err)}{where}"
            mark = getattr(exc, "problem_mark", None)
            if module == "yaml" and getattr(exc, "problem", None) and mark is not None:
                return f"{what}: {exc.problem} (line {mark.line + 1}, column {mark.column + 1})"
            return f"{what}: {_one_line(exc)}"
    return None


def error_message(exc: BaseException) -> tuple[int, str]:
    """The exit status and the one line :func:`main` prints for ``exc``.

    Bad input (``BAD_INPUT``): KeypointLab's own errors (:mod:`keypointlab.errors`, whose
    messages name the input), ``OSError``, ``KeyError``, ``ValueError`` (with JSON and
    Unicode errors), OpenCV, YAML and safetensors errors, and running out of memory.
    Anything else is a bug (``INTERNAL_ERROR``): its type and message, and a pointer to
    ``--debug``.
    """
    if _out_of_memory(exc):
        detail = f" ({_one_line(exc)})" if str(exc) else ""
        return BAD_INPUT, (
            f"keypointlab: error: out of memory{detail}: an input is too large for this "
            "machine (a smaller image, fewer scales or rotations, or a smaller batch)"
        )
    library = _library_error(exc)
    if library is not None:
        return BAD_INPUT, f"keypointlab: error: {library}"
    if isinstance(exc, USER_ERRORS):
        msg = str(exc)
        if isinstance(exc, KeyError) and not isinstance(exc, KeypointLabError) and exc.args:
            arg = exc.args[0]  # KeyError('model') is a missing entry, not a sentence
            msg = str(arg) if isinstance(arg, str) and " " in arg else f"missing entry {arg!r}"
        elif isinstance(exc, UnicodeError):
            msg = f"not valid UTF-8 text or file name ({exc})"
        elif type(exc).__name__ == "JSONDecodeError":
            msg = f"invalid JSON ({exc})"
        return BAD_INPUT, f"keypointlab: error: {_one_line(msg) or type(exc).__name__}"
    detail = f": {_one_line(exc)}" if str(exc) else ""
    return INTERNAL_ERROR, (
        f"keypointlab: internal error: {type(exc).__name__}{detail} "
        "(run with --debug for the traceback)"
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
    """``"1.41,1,0.71"`` -> ``(1.41, 1.0, 0.71)`` (argparse type of ``--scales``), within
    the limits of :func:`keypointlab.limits.check_scales`."""
    try:
        scales = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--scales {text!r}: give numbers like 1.41,1,0.71"
        ) from None
    try:
        return limits.check_scales(scales, f"--scales {text!r}")
    except InputError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _count(
    flag: str, minimum: int = 1, maximum: int | None = None, why: str = ""
) -> Callable[[str], int]:
    """argparse type of a whole-number option: ``minimum`` to ``maximum`` (see
    :func:`keypointlab.limits.check_count`)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} {text!r}: expected a whole number") from None
        try:
            return limits.check_count(value, flag, minimum, maximum, why)
        except InputError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return parse


def _max_pixels(text: str) -> int:
    """argparse type of ``--max-pixels`` (``40000000``, ``40e6`` or ``40M``)."""
    try:
        return limits.parse_max_pixels(text)
    except InputError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


# Commands that read images take --max-pixels (see keypointlab.limits).
IMAGE_COMMANDS = (
    "demo",
    "evaluate",
    "train",
    "extract",
    "ship",
    "adapt",
    "match",
    "reconstruct",
    "index",
    "query",
)


def _bounded(func: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """``func(args)`` run with ``--max-pixels`` as the pixel limit, if given."""

    @functools.wraps(func)
    def run(args: argparse.Namespace) -> int:
        with limits.override(max_pixels=getattr(args, "max_pixels", None)):
            return func(args)

    return run


def _add_input_limits(p: argparse.ArgumentParser) -> None:
    """``--max-pixels`` on a command that reads images; its function runs under it."""
    p.add_argument(
        "--max-pixels",
        type=_max_pixels,
        default=None,
        metavar="N",
        help=f"largest image (and network input) in pixels, e.g. 100M (default "
        f"{limits.DEFAULT_MAX_PIXELS:,}, or ${limits.ENV_MAX_PIXELS}); larger images "
        "are refused from their header, before decoding",
    )
    p.set_defaults(func=_bounded(p.get_default("func")))


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
        type=_count("--rotations", 1, limits.MAX_ROTATIONS, "one network pass per copy"),
        default=1,
        metavar="K",
        help="also run a learned model on the image turned by 360/K degree steps and pool "
        "the keypoints, for images that may be rotated (e.g. 8; default 1: upright only; "
        "OpenCV features ignore it)",
    )


def cmd_evaluate(args: argparse.Namespace) -> int:
    from keypointlab.io.outputs import check_output_dir, output_lock

    check_output_dir(args.out, inputs=[args.data])  # before any work
    with output_lock(args.out):  # a second evaluate into the same folder fails at once
        return _evaluate(args)


def _evaluate(args: argparse.Namespace) -> int:
    from keypointlab.data.sequences import load_dataset
    from keypointlab.evaluation.benchmark import evaluate_features, parse_size
    from keypointlab.evaluation.report import markdown_table, write_report
    from keypointlab.features import get_extractor
    from keypointlab.features.h5 import FeatureFileExtractor

    if not args.features and not args.features_file:
        raise ValueError("give --features NAME [NAME ...] and/or --features-file FILE")
    if args.task == "pose":
        return _evaluate_pose(args)
    if args.task == "retrieval":
        return _evaluate_retrieval(args)
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
    evaluated = any(r.pairs for r in results)
    if evaluated:  # a table of zeros would read as a result, on screen and on disk
        meta = {"data": str(args.data), "sequences": len(sequences)}
        files = write_report(results, args.out, meta=meta)
        print(markdown_table(results))
    for r in results:
        if r.skipped:
            print(f"{r.method} @ {r.size}: skipped {len(r.skipped)}:")
            for s in r.skipped:
                print(f"  {s.item}: {s.reason}")
            break
    if not evaluated:
        raise ValueError(
            f"{args.data}: no pair could be evaluated (what was skipped and why is listed "
            f"above); no report written to {args.out}"
        )
    print(f"\nreport: {files['markdown']}\nresults: {files['json']}")
    return 0


def _evaluate_retrieval(args: argparse.Namespace) -> int:
    """``evaluate --task retrieval``: leave-one-out retrieval over a folder of groups
    (:mod:`keypointlab.evaluation.retrieval`), top-1000 keypoints unless given."""
    from keypointlab.evaluation.retrieval import (
        evaluate_retrieval,
        load_retrieval_data,
        markdown_table,
        write_retrieval_report,
    )
    from keypointlab.retrieval.global_features import get_retrieval_extractor

    if args.features_file:
        raise ValueError("--task retrieval extracts its own features: give --features only")
    top_k = args.top_k or 1000
    data = load_retrieval_data(args.data, args.distractors)
    extractors = [  # every name checked before any extraction
        get_retrieval_extractor(n, max_keypoints=top_k, **_learned_options(args))
        for n in args.features
    ]
    results = []
    for extractor in extractors:
        results += evaluate_retrieval(
            extractor,
            data,
            args.max_side,
            args.knn,
            args.verify,
            args.ransac_px,
            progress=not args.quiet,
            kind=args.index_type,
        )
    meta = {
        "data": str(args.data),
        "distractors": str(args.distractors) if args.distractors else "",
        "queries": len(data.queries),
        "database": len(data.paths),
        "max_side": args.max_side,
        "top_k": top_k,
        "knn": args.knn,
        "verify": args.verify,
        "ransac_px": args.ransac_px,
        "index_type": args.index_type,
    }
    files = write_retrieval_report(results, data, args.out, meta)
    print(markdown_table(results))
    print(f"\nreport: {files['markdown']}\nresults: {files['json']}")
    return 0


def cmd_index(args: argparse.Namespace) -> int:
    from keypointlab.io.outputs import check_output_dir, output_lock
    from keypointlab.retrieval.global_features import get_retrieval_extractor
    from keypointlab.retrieval.index import build_index

    check_output_dir(args.out, inputs=[args.database])
    extractor = get_retrieval_extractor(
        args.features, max_keypoints=args.max_keypoints, **_learned_options(args)
    )
    with output_lock(args.out):
        index = build_index(
            args.database, extractor, args.max_side, progress=not args.quiet, kind=args.index_type
        )
        options = {"features": args.features, "max_keypoints": args.max_keypoints}
        options.update(scales=args.scales, rotations=args.rotations)
        index.meta["extractor"] = options  # `query` rebuilds the same extractor
        index.save(args.out)
    print(
        f"{args.out}: {index.images} images, {index.descriptors} descriptors of "
        f"{index.feature}, {index.nbytes() / 1e6:.1f} MB"
    )
    return 0


def cmd_query(args: argparse.Namespace) -> int:
    from keypointlab.data.images import read_image
    from keypointlab.retrieval.global_features import get_retrieval_extractor
    from keypointlab.retrieval.index import load_index
    from keypointlab.retrieval.query import query

    index = load_index(args.index)
    options = {**index.meta.get("extractor", {"features": index.feature}), "device": args.device}
    if args.scales is not None:
        options["scales"] = args.scales
    extractor = get_retrieval_extractor(options.pop("features"), **options)
    results = query(
        index,
        extractor,
        read_image(args.image),
        knn=args.knn,
        verify=args.verify,
        ransac_px=args.ransac_px,
        votes_only=args.votes_only,
    )[: args.top]
    print("| rank | image | group | inliers | votes | score |\n|---|---|---|---|---|---|")
    for r, row in enumerate(results, 1):
        row["rank"] = r
        shown = "-" if row["inliers"] < 0 else str(row["inliers"])
        print(
            f"| {r} | {row['image']} | {row['group']} | {shown} | {row['votes']} | "
            f"{row['score']:.3f} |"
        )
    if args.json:
        import json

        from keypointlab.evaluation.report import write_atomic

        write_atomic(
            args.json, json.dumps({"query": str(args.image), "results": results}, indent=1)
        )
    return 0


def _add_index_type(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--index-type",
        choices=["auto", "flat", "ivf"],
        default="auto",
        help="faiss index: flat (exact), ivf (inverted lists, approximate) or auto: flat up "
        "to 200,000 descriptors (default)",
    )


def _add_retrieval_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--knn",
        type=_count("--knn", 1, 1000),
        default=10,
        help="nearest database descriptors per query descriptor (default 10)",
    )
    p.add_argument(
        "--verify",
        type=_count("--verify", 0, 10_000),
        default=30,
        help="best-voted images verified by RANSAC (default 30)",
    )
    p.add_argument(
        "--ransac-px",
        type=float,
        default=15.0,
        help="RANSAC reprojection threshold in pixels at --max-side (default 15)",
    )


def _evaluate_pose(args: argparse.Namespace) -> int:
    """``evaluate --task pose``: relative pose on RGB-D or multi-view pairs (480x640 and
    top-1000 unless given); see :mod:`keypointlab.evaluation.pose`."""
    from keypointlab.data.posepairs import load_pose_pairs
    from keypointlab.evaluation.benchmark import parse_size
    from keypointlab.evaluation.pose import evaluate_pose
    from keypointlab.evaluation.pose_report import pose_markdown_table, write_pose_report
    from keypointlab.features import get_extractor

    if args.features_file:
        raise ValueError("--task pose takes --features NAME, not --features-file")
    ((size, top_k),) = _standard_configs(args.size or "480x640", args.top_k)
    hw = parse_size(size)  # fail before any work on a bad size
    extractors = [get_extractor(name, **_learned_options(args)) for name in args.features]
    pairs = load_pose_pairs(args.data, max_pairs=args.max_pairs)
    results = [evaluate_pose(e, pairs, hw, top_k, progress=not args.quiet) for e in extractors]
    if not any(r.pairs for r in results):
        reasons = "; ".join(f"{s.item}: {s.reason}" for s in results[0].skipped[:3])
        raise ValueError(f"{args.data}: no pair could be evaluated ({reasons}); no report")
    meta = {"task": "pose", "data": str(args.data), "pairs": len(pairs)}
    files = write_pose_report(results, pairs, args.out, meta=meta)
    print(pose_markdown_table(results))
    for r in results:
        for s in r.skipped:
            print(f"{r.method}: skipped {s.item}: {s.reason}")
    print(f"\nreport: {files['markdown']}\nresults: {files['json']}\npairs: {files['pairs']}")
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
    except (MemoryError, RuntimeError) as exc:
        if not _out_of_memory(exc):
            raise
        raise InputError(
            f"{path}: out of memory extracting {extractor.name} features of this {h}x{w} "
            "image (try a smaller image, fewer --scales or --rotations)"
        ) from exc


def cmd_match(args: argparse.Namespace) -> int:
    from keypointlab.api import draw_matches, estimate, load_extractor, match
    from keypointlab.features.export import check_pair_export
    from keypointlab.features.h5 import extractor_record
    from keypointlab.io.outputs import check_output_file
    from keypointlab.viz.plots import figure_format

    inputs = [args.image0, args.image1]
    figure_format(check_output_file(args.out, inputs))  # before any work
    extractor = load_extractor(args.features, **_learned_options(args))
    record = extractor_record(extractor) if args.export else {}
    if args.export:
        check_pair_export(args.export, record, inputs)
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
        _export_pair(args, f0, f1, matches, record)
    return 0


def _export_pair(args: argparse.Namespace, f0, f1, matches, record) -> None:
    """features.h5 and matches.h5 in hloc's layout, keyed by the image file names."""
    from keypointlab.features.export import export_pair

    names = (args.image0.name, args.image1.name)
    paths = export_pair(args.export, names, (f0, f1), matches, record)
    print(f"wrote {paths[0]} and {paths[1]} (hloc layout)")


def cmd_train(args: argparse.Namespace) -> int:
    from keypointlab.training.trainer import train

    record = train(args.config, args.overrides, resume=args.resume, progress=not args.quiet)
    print(json.dumps(record, indent=1))
    return 0


def cmd_extract(args: argparse.Namespace) -> int:
    from keypointlab.features import get_extractor
    from keypointlab.features.export import extract_folder_distributed
    from keypointlab.io.distributed import World, process_group

    world = World.from_env()  # several processes under torchrun: a share of the images each
    options = {**_learned_options(args), "device": world.device(args.device)}
    with process_group(world, options["device"]):
        extractor = get_extractor(args.features, **options)
        report = extract_folder_distributed(
            extractor,
            args.images,
            args.out,
            world,
            max_keypoints=args.max_keypoints,
            resume=args.resume,
            progress=not args.quiet,
        )
    if not world.is_main:
        return 0
    print(
        f"{report.written} images written, {report.reused} already done, "
        f"{len(report.skipped)} skipped -> {args.out}"
    )
    for path, reason in report.skipped:
        print(f"  skipped {path}: {reason}")
    return 0


def cmd_match_pairs(args: argparse.Namespace) -> int:
    from keypointlab.io.distributed import World, process_group
    from keypointlab.matching.pairs import (
        exhaustive_pairs,
        feature_names,
        match_pairs_distributed,
        read_pairs,
    )

    if str(args.pairs) == "exhaustive":
        pairs = exhaustive_pairs(feature_names(args.features))
    else:
        pairs = read_pairs(args.pairs)
    world = World.from_env()  # several processes under torchrun: a share of the pairs each
    device = world.device(args.device)
    with process_group(world, device):
        report = match_pairs_distributed(
            args.features,
            pairs,
            args.out,
            world,
            matcher=args.matcher,
            ratio=args.ratio,
            max_distance=args.max_distance,
            resume=args.resume,
            device=device,
            progress=not args.quiet,
        )
    if world.is_main:
        print(f"{report.written} pairs matched, {report.reused} already done -> {args.out}")
    return 0


def cmd_reconstruct(args: argparse.Namespace) -> int:
    from keypointlab.features import get_extractor
    from keypointlab.io.outputs import check_output_dir, output_lock
    from keypointlab.sfm import reconstruct

    check_output_dir(args.out, inputs=[args.images])  # before any work
    extractor = get_extractor(args.features, **_learned_options(args))
    with output_lock(args.out):
        s = reconstruct(
            args.images,
            extractor,
            args.out,
            pairs=args.pairs,
            matcher=args.matcher,
            max_keypoints=args.max_keypoints,
            progress=not args.quiet,
            extract=_extract_file,
            seed=args.seed,
            tries=args.tries,
        )
    print(
        f"{s['method']}: {s['registered_images']}/{s['images']} images registered, "
        f"{s['points3d']} points, mean track length {s['mean_track_length']:.2f}, "
        f"mean reprojection error {s['mean_reprojection_error']:.3f} px"
    )
    if "centre_error_median" in s.get("cameras", {}):
        c = s["cameras"]
        print(
            f"camera centres after similarity alignment: median error "
            f"{c['centre_error_median']:.3f}, max {c['centre_error_max']:.3f} "
            f"(scene extent {c['scene_extent']:.2f})"
        )
    print(f"model: {args.out / 'sparse' / '0'}\nsummary: {args.out / 'summary.json'}")
    return 0


def cmd_export_onnx(args: argparse.Namespace) -> int:
    from keypointlab.evaluation.benchmark import parse_size
    from keypointlab.features import get_extractor
    from keypointlab.features.onnx import export_onnx
    from keypointlab.io.outputs import check_output_file

    size = parse_size(args.size)
    out = check_output_file(args.out or Path(f"{Path(args.name).stem}.onnx"))  # before loading
    path = export_onnx(get_extractor(args.name), out, size=size or (240, 320))
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
            raise InputError(f"--model-option {item!r}: expected KEY=VALUE")
        try:
            options[key] = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise InputError(f"--model-option {item!r}: invalid YAML ({_one_line(exc)})") from None
    card = ship_model(
        args.run,
        args.name,
        args.eval_data,
        note=args.note,
        scales=args.scales,
        model_options=options,
        weights_of=args.weights_of,
        force=args.force,
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
    from keypointlab.io.outputs import check_output_dir

    check_output_dir(args.out)  # before any work
    run_demo(args.out, features=args.features, progress=not args.quiet)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="keypointlab",
        description="Learn, evaluate and use local image features. "
        "With no command, runs the demo benchmark.",
    )
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="debug logging (errors stay one line)"
    )
    parser.add_argument(
        "--debug",
        action="store_true",
        help="show the traceback of an error instead of one line (for bug reports); "
        "implies --verbose",
    )
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
    p.add_argument(
        "--data",
        type=Path,
        required=True,
        help="folder of HPatches-format sequences (--task pose: see --task)",
    )
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
        type=_count("--top-k"),
        default=None,
        help="keypoints kept per image (default 300, or 1000 at 480x640 and above)",
    )
    p.add_argument("--out", type=Path, default=Path("eval-report"))
    p.add_argument(
        "--task",
        choices=["homography", "pose", "retrieval"],
        default="homography",
        help="homography: HPatches-format sequences (default); pose: relative pose on an "
        "RGB-D folder (7-Scenes, Redwood) or a multi-view folder (images/ + cameras/), "
        "at --size 480x640 unless given; retrieval: a folder of groups (DIR/<group>/*.jpg, "
        "optional DIR/distractors/), each image querying all others (needs faiss-cpu)",
    )
    p.add_argument(
        "--distractors",
        type=Path,
        default=None,
        help="--task retrieval: a folder of distractor images added to the database",
    )
    p.add_argument(
        "--max-side",
        type=_count("--max-side", 16),
        default=640,
        help="--task retrieval: images shrunk to this longer side (default 640)",
    )
    _add_retrieval_options(p)
    _add_index_type(p)
    p.add_argument(
        "--max-pairs",
        type=_count("--max-pairs"),
        default=100,
        help="--task pose: at most this many pairs, evenly spread (default 100)",
    )
    _add_learned_options(p)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("index", help="index a folder of images for retrieval (faiss)")
    p.add_argument("database", type=Path, help="folder of images (searched recursively)")
    p.add_argument("--features", default="sift", help="feature name, e.g. delf, sift, delf-global")
    p.add_argument("--out", type=Path, required=True, help="index folder to write")
    p.add_argument(
        "--max-side",
        type=_count("--max-side", 16),
        default=640,
        help="images resized so their longer side is at most this (default 640); queries too",
    )
    p.add_argument(
        "--max-keypoints",
        type=_count("--max-keypoints"),
        default=1000,
        help="best keypoints kept per image (default 1000)",
    )
    _add_index_type(p)
    _add_learned_options(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_index)

    p = sub.add_parser("query", help="rank an index's images for a query image")
    p.add_argument("image", type=Path, help="the query image")
    p.add_argument("--index", type=Path, required=True, help="folder from `keypointlab index`")
    p.add_argument("--top", type=_count("--top"), default=10, help="results shown (default 10)")
    p.add_argument("--votes-only", action="store_true", help="rank by kNN votes, no RANSAC")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    _add_retrieval_options(p)
    _add_learned_options(p)
    p.set_defaults(func=cmd_query)

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
    p.add_argument("--max-keypoints", type=_count("--max-keypoints"), default=2000)
    p.add_argument("--resume", action="store_true", help="keep images already extracted")
    _add_learned_options(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_extract)

    p = sub.add_parser("match-pairs", help="match image pairs of a features file to HDF5")
    p.add_argument("features", type=Path, help="features .h5 (e.g. from `keypointlab extract`)")
    p.add_argument(
        "--pairs",
        required=True,
        help="text file of 'name0 name1' lines (hloc's format), or 'exhaustive' for all pairs",
    )
    p.add_argument("--out", type=Path, required=True, help="output matches .h5 (hloc layout)")
    p.add_argument("--matcher", default="mnn", choices=["mnn", "nn"], help="default mnn")
    p.add_argument("--ratio", type=float, default=None, help="Lowe ratio test (e.g. 0.8)")
    p.add_argument("--max-distance", type=float, default=None, help="largest descriptor distance")
    p.add_argument("--resume", action="store_true", help="keep pairs already matched")
    p.add_argument("--device", default="cpu", help="torch device of the matching")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_match_pairs)

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
        "--model-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a model config entry, e.g. pyramid=[0.5,1,2] (repeatable)",
    )
    p.add_argument(
        "--weights-of",
        default=None,
        metavar="NAME",
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
    p.add_argument(
        "--num-homographies",
        type=_count("--num-homographies", 1, limits.MAX_HOMOGRAPHIES, "a network pass each"),
        default=20,
        help="views per image (paper: 100)",
    )
    p.add_argument("--threshold", type=float, default=0.015, help="smallest aggregated score")
    p.add_argument("--nms-radius", type=_count("--nms-radius", 0), default=4)
    p.add_argument(
        "--max-keypoints",
        type=_count("--max-keypoints", 0),
        default=1000,
        help="per image (0: all)",
    )
    p.add_argument(
        "--max-side",
        type=_count("--max-side", 0),
        default=320,
        help="downscale longer sides to this (0: never)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_adapt)

    p = sub.add_parser(
        "reconstruct", help="structure from motion of a folder of images (COLMAP, pycolmap)"
    )
    p.add_argument(
        "images", type=Path, help="folder of images, or a scene folder with images/ (cameras/)"
    )
    p.add_argument("--features", default="sift")
    p.add_argument("--matcher", default="mnn", choices=["mnn", "ratio"])
    p.add_argument("--pairs", default="exhaustive", help="exhaustive (default) or retrieval:K")
    p.add_argument(
        "--max-keypoints",
        type=_count("--max-keypoints", 1),
        default=None,
        help="keep the best N keypoints per image",
    )
    p.add_argument("--out", type=Path, default=Path("reconstruction"))
    p.add_argument(
        "--seed",
        type=_count("--seed", 0, 2**31 - 1),
        default=0,
        help="RANSAC seed of COLMAP's verification and mapping (default 0)",
    )
    p.add_argument(
        "--tries",
        type=_count("--tries", 1, 20),
        default=3,
        help="while images are left out, verify and map again with the next seed, up to "
        "this many times in all; the attempt registering the most is kept (default 3)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_learned_options(p)
    p.set_defaults(func=cmd_reconstruct)

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
    for name in IMAGE_COMMANDS:
        _add_input_limits(sub.choices[name])
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status.

    ``0`` on success; ``2`` for bad input (a file, option, config, image, features file,
    checkpoint or device that cannot be used, or an input too large for memory): one line
    ``keypointlab: error: MESSAGE`` naming the input, as for argparse's usage errors; ``1``
    for an internal error (a bug): one line with its type and message and a pointer to
    ``--debug``; ``130`` when interrupted (Ctrl-C). No traceback is printed unless
    ``--debug`` is given, which re-raises the exception; ``--verbose`` only turns on
    debug logging. Both may come before or after the command. :func:`error_message`
    says which exception types count as bad input.
    """
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    for flag, dest in (("--debug", "debug"), ("--verbose", "verbose"), ("-v", "verbose")):
        if flag in extra:  # a global flag after the command: `keypointlab extract ... --debug`
            extra = [e for e in extra if e != flag]
            setattr(args, dest, True)
    # `train CONFIG --resume key=value`: argparse ends the positional list at the option
    if extra and getattr(args, "command", None) == "train":
        overrides = [e for e in extra if "=" in e and not e.startswith("-")]
        args.overrides += overrides
        extra = [e for e in extra if e not in overrides]
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    # --verbose: KeypointLab's debug messages, not every library's
    logger.setLevel(logging.DEBUG if args.verbose or args.debug else logging.NOTSET)
    if args.command is None:  # only global flags were given: the demo, keeping them
        args = parser.parse_args(["demo"], namespace=args)
    try:
        if getattr(args, "device", None) is not None:  # once, before any work
            from keypointlab.devices import check_device

            check_device(args.device, "--device")
        return args.func(args)
    except KeyboardInterrupt:
        if args.debug:
            raise
        print("keypointlab: interrupted", file=sys.stderr)
        return INTERRUPTED
    except Exception as exc:
        if args.debug:
            raise
        status, line = error_message(exc)
        print(line, file=sys.stderr)
        return status


if __name__ == "__main__":
    sys.exit(main())
