"""A fixed held-out part of the training images, and validation pairs built from it.

Checkpoints, settings and defaults must never be chosen on the evaluation set. Instead a
fixed fraction of the (unlabelled) training images is held out with :func:`split_holdout`
and turned into an HPatches-layout benchmark of warped photographs with
:func:`build_validation_benchmark`, which :func:`keypointlab.data.sequences.load_dataset`
loads and the evaluation protocol scores.

The split is a pure function of each image's path relative to the image root and of the
seed: an image is held out when a stable hash (SHA-256, not Python's salted ``hash``) of
``f"{seed}:{relative_posix_path}"`` falls below ``fraction``. It therefore does not depend
on the order or the number of the other files, and adding images never moves an existing
one from one side to the other.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import shutil
import tempfile
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from keypointlab.data.augment import Photometric
from keypointlab.data.images import ImageReadError, list_images, read_image
from keypointlab.data.samples import VIEWPOINT, _write_sequence
from keypointlab.data.sequences import N_IMAGES
from keypointlab.geometry import sample_homography, warp_image

logger = logging.getLogger(__name__)

__all__ = [
    "MARKER_PREFIX",
    "VALIDATION_PHOTOMETRIC",
    "build_validation_benchmark",
    "holdout_paths",
    "is_held_out",
    "split_holdout",
]

#: Bumped whenever the benchmark's content for the same arguments changes, so that an
#: existing benchmark built by an older version is not reused.
BENCHMARK_VERSION = 1
#: Prefix of the completion marker written into a finished validation benchmark.
MARKER_PREFIX = ".complete-holdout"
#: The mild photometric change of the sample benchmark's viewpoint sequences
#: (``keypointlab.data.samples.build_sample_benchmark`` builds the same one locally).
VALIDATION_PHOTOMETRIC = Photometric(
    prob=0.3, primitives=["brightness", "contrast", "gaussian_noise"]
)


def _unit_hash(text: str) -> float:
    """A stable number in ``[0, 1)`` from ``text`` (first 8 bytes of its SHA-256)."""
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def _relative_key(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` with ``/`` separators (the image's identity).

    Raises:
        ValueError: ``path`` is not below ``root``.
    """
    path, root = Path(path), Path(root)
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        pass
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        raise ValueError(f"{path}: not below the image root {root}") from None


def _check_fraction(fraction: float) -> float:
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float, np.floating)):
        raise ValueError(f"holdout fraction must be a number in [0, 1), got {fraction!r}")
    value = float(fraction)
    if not 0.0 <= value < 1.0:  # also rejects NaN
        raise ValueError(f"holdout fraction must be in [0, 1) (0 = none held out), got {value}")
    return value


def is_held_out(relative_path: str, fraction: float, seed: int = 0) -> bool:
    """Whether the image at ``relative_path`` (posix, relative to the image root) is held
    out for ``fraction`` and ``seed``."""
    fraction = _check_fraction(fraction)
    return _unit_hash(f"{seed}:{relative_path}") < fraction


def split_holdout(
    paths: list[Path], root: Path, fraction: float, seed: int = 0
) -> tuple[list[Path], list[Path]]:
    """Split image ``paths`` below ``root`` into ``(train, held_out)``, each in input order.

    The side of an image depends only on its path relative to ``root``, on ``fraction``
    and on ``seed`` (see the module docstring), so the split is fixed: reordering the
    paths or adding and removing other images never moves an image to the other side.
    About ``fraction`` of the images are held out.

    Raises:
        ValueError: ``fraction`` is not in ``[0, 1)``, ``paths`` is empty, a path is not
            below ``root``, or the split would leave no training image.
    """
    fraction = _check_fraction(fraction)
    root = Path(root)
    paths = [Path(p) for p in paths]
    if not paths:
        raise ValueError(f"{root}: no image paths to split")
    train: list[Path] = []
    held_out: list[Path] = []
    for path in paths:
        key = _relative_key(path, root)
        (held_out if _unit_hash(f"{seed}:{key}") < fraction else train).append(path)
    if not train:
        raise ValueError(
            f"holdout fraction {fraction} with seed {seed} holds out all {len(paths)} images "
            f"of {root}; at least one training image is required (use a smaller fraction "
            "or another seed)"
        )
    logger.debug(
        "holdout split of %s: %d train, %d held out (fraction %g, seed %d)",
        root,
        len(train),
        len(held_out),
        fraction,
        seed,
    )
    return train, held_out


def holdout_paths(
    root: str | Path, fraction: float, seed: int = 0, exclude: list[str] | tuple = ()
) -> tuple[list[Path], list[Path]]:
    """``(train_paths, held_out_paths)`` of the images below ``root`` (recursively),
    leaving out those under the subfolders ``exclude`` (paths relative to ``root``, e.g.
    an image group that an evaluation also uses). Excluding images never moves another
    image to the other side of the split.

    Raises:
        FileNotFoundError: ``root`` does not exist or holds no image file.
        ValueError: see :func:`split_holdout`.
    """
    root = Path(root)
    paths = excluded(list_images(root), root, exclude)
    if not paths:
        raise FileNotFoundError(f"{root}: no image files found below this folder")
    return split_holdout(paths, root, fraction, seed)


def excluded(paths: list[Path], root: Path, exclude: list[str] | tuple) -> list[Path]:
    """``paths`` (below ``root``) without those under the subfolders ``exclude``."""
    prefixes = [Path(e).as_posix().strip("/") + "/" for e in exclude if str(e).strip("/")]
    if not prefixes:
        return list(paths)
    return [
        p for p in paths if not any(_relative_key(p, root).startswith(x) for x in prefixes)
    ]


def _center_crop_resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Centre-crop ``image`` to the aspect of ``size = (h, w)`` and resize it to ``size``."""
    h, w = image.shape[:2]
    th, tw = size
    scale = max(th / h, tw / w)
    ch = min(h, max(1, int(round(th / scale))))
    cw = min(w, max(1, int(round(tw / scale))))
    y0, x0 = (h - ch) // 2, (w - cw) // 2
    crop = image[y0 : y0 + ch, x0 : x0 + cw]
    interp = cv2.INTER_AREA if ch > th or cw > tw else cv2.INTER_LINEAR
    return cv2.resize(crop, (tw, th), interpolation=interp)


def _safe_name(key: str) -> str:
    """A folder-name-safe version of a relative image path, without its extension."""
    stem = key.rsplit(".", 1)[0] if "." in key.rsplit("/", 1)[-1] else key
    return re.sub(r"[^A-Za-z0-9]+", "_", stem).strip("_") or "image"


def _sequence_names(keys: list[str]) -> dict[str, str]:
    """``key -> v_<safe name>``, made unique with a short hash where safe names collide."""
    safe = {k: _safe_name(k) for k in keys}
    counts: dict[str, int] = {}
    for name in safe.values():
        counts[name] = counts.get(name, 0) + 1
    out = {}
    for k, name in safe.items():
        if counts[name] > 1:
            name = f"{name}_{hashlib.sha256(k.encode('utf-8')).hexdigest()[:8]}"
        out[k] = f"v_{name}"
    return out


def _check_size(size: tuple[int, int]) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in size)
    except (TypeError, ValueError):
        raise ValueError(f"size must be (height, width), got {size!r}") from None
    if h < 16 or w < 16:
        raise ValueError(f"size {size!r}: each side must be at least 16 pixels")
    return h, w


def _is_replaceable(folder: Path) -> bool:
    """An empty folder, or one holding a validation benchmark written by this module."""
    entries = list(folder.iterdir())
    return not entries or any(e.is_file() and e.name.startswith(MARKER_PREFIX) for e in entries)


def _install(tmp: Path, out: Path, marker_name: str) -> None:
    """Move the finished benchmark ``tmp`` to ``out`` (replacing an older benchmark)."""
    if out.exists():
        if (out / marker_name).is_file():  # another process finished the same benchmark
            shutil.rmtree(tmp, ignore_errors=True)
            return
        if not out.is_dir() or not _is_replaceable(out):
            shutil.rmtree(tmp, ignore_errors=True)
            raise FileExistsError(
                f"{out}: exists and is not a validation benchmark written by "
                "build_validation_benchmark; refusing to replace it (choose another out_dir)"
            )
        logger.info("replacing the validation benchmark in %s (other settings)", out)
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.replace(out, old / out.name)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
        return
    os.replace(tmp, out)


def build_validation_benchmark(
    held_out: list[Path],
    root: Path,
    out_dir: Path,
    size: tuple[int, int] = (240, 320),
    pairs_per_image: int = 1,
    seed: int = 0,
    max_images: int = 60,
    progress: bool = False,
) -> Path:
    """Write validation pairs made from held-out training images into ``out_dir``.

    Each image becomes a viewpoint sequence ``v_<safe relative path>`` in the HPatches
    layout: ``1.png`` is the photo centre-cropped to the aspect of ``size`` and resized to
    ``size = (height, width)``; ``2.png`` ... ``{pairs_per_image + 1}.png`` are random
    homographic warps of it (the sample benchmark's ``VIEWPOINT`` homographies and mild
    photometric change) with ``H_1_N`` mapping pixels of ``1.png`` to ``N.png``. The result
    loads with :func:`keypointlab.data.sequences.load_dataset`.

    At most ``max_images`` images are used, picked in an order fixed by ``seed`` and the
    images' relative paths; unreadable images are skipped with a warning (the next one in
    that order takes their place). Everything is a function of ``seed`` and each image's
    relative path, so the same arguments give byte-identical files.

    The benchmark is written into a temporary sibling folder that is renamed to
    ``out_dir`` when complete, with a completion marker encoding the settings. A complete
    benchmark with the same settings is reused; one written by this function with other
    settings is replaced. Image contents are not part of the marker: delete ``out_dir``
    after editing images in place.

    Args:
        held_out: the held-out image paths (below ``root``), e.g. from :func:`holdout_paths`.
        root: the image root the paths' identities are relative to.
        out_dir: the benchmark folder to write.
        size: ``(height, width)`` of every image written.
        pairs_per_image: pairs ``(1, N)`` per image, 1 to 5.
        seed: seed of the image order, homographies and photometric changes.
        max_images: bound on the number of sequences.
        progress: show a progress bar.

    Returns:
        ``out_dir``.

    Raises:
        ValueError: bad arguments, no held-out image, or a path not below ``root``.
        FileNotFoundError: none of the held-out images is readable.
        FileExistsError: ``out_dir`` exists and holds something else.
    """
    size = _check_size(size)
    if not 1 <= int(pairs_per_image) <= N_IMAGES - 1:
        raise ValueError(f"pairs_per_image must be in [1, {N_IMAGES - 1}], got {pairs_per_image}")
    if int(max_images) < 1:
        raise ValueError(f"max_images must be at least 1, got {max_images}")
    pairs_per_image, max_images = int(pairs_per_image), int(max_images)
    root, out = Path(root), Path(out_dir)
    if not held_out:
        raise ValueError(
            f"{root}: no held-out images to build validation pairs from (holdout fraction 0?)"
        )
    by_key = {_relative_key(Path(p), root): Path(p) for p in held_out}
    keys = sorted(by_key, key=lambda k: (_unit_hash(f"{seed}:select:{k}"), k))

    settings = {
        "version": BENCHMARK_VERSION,
        "seed": seed,
        "size": list(size),
        "pairs_per_image": pairs_per_image,
        "max_images": max_images,
        "viewpoint": repr(VIEWPOINT),
        "photometric": repr(VALIDATION_PHOTOMETRIC),
        "images": sorted(keys),
    }
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode("utf-8")).hexdigest()
    marker_name = (
        f"{MARKER_PREFIX}-seed{seed}-n{min(len(keys), max_images)}-{size[0]}x{size[1]}"
        f"-p{pairs_per_image}-{digest[:12]}"
    )
    if (out / marker_name).is_file():
        logger.info("reusing the validation benchmark in %s", out)
        return out

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        names = _sequence_names(keys)
        written: list[str] = []
        skipped: list[dict[str, str]] = []
        bar = tqdm(total=min(len(keys), max_images), desc="validation pairs", disable=not progress)
        for key in keys:
            if len(written) >= max_images:
                break
            try:
                image = read_image(by_key[key])
            except ImageReadError as exc:
                logger.warning("validation benchmark: skipping unreadable image %s", exc)
                skipped.append({"image": key, "reason": str(exc)})
                continue
            entropy = int.from_bytes(hashlib.sha256(f"{seed}:pairs:{key}".encode()).digest(), "big")
            rng = np.random.default_rng(entropy)
            ref = _center_crop_resize(image, size)
            Hs = [sample_homography(size, rng, VIEWPOINT) for _ in range(pairs_per_image)]
            for n, H in enumerate(Hs, start=2):
                if not np.all(np.isfinite(H)) or not math.isfinite(np.linalg.det(H)):
                    raise RuntimeError(f"{key}: non-finite homography H_1_{n} sampled")
            views = [VALIDATION_PHOTOMETRIC(warp_image(ref, H, size), rng) for H in Hs]
            _write_sequence(tmp / names[key], [ref, *views], Hs)
            written.append(key)
            bar.update(1)
        bar.close()
        if not written:
            raise FileNotFoundError(
                f"{root}: none of the {len(keys)} held-out images is readable "
                f"({len(skipped)} skipped)"
            )
        record = {**settings, "written": written, "skipped": skipped}
        (tmp / marker_name).write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
        _install(tmp, out, marker_name)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info(
        "wrote %d validation sequences (%d pairs) from held-out images of %s to %s "
        "(%d unreadable skipped)",
        len(written),
        len(written) * pairs_per_image,
        root,
        out,
        len(skipped),
    )
    return out
