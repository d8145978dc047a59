"""The five-line Python API.

>>> import keypointlab as kl
>>> extractor = kl.load_extractor("sift")
>>> f0, f1 = extractor.extract("a.png"), extractor.extract("b.png")
>>> matches = kl.match(f0, f1)
>>> result = kl.estimate(f0, f1, matches)
>>> kl.draw_matches("a.png", "b.png", f0, f1, matches, result).savefig("matches.png")

Errors. Bad input raises the types of :mod:`keypointlab.errors` with the message the
command line prints after ``keypointlab: error:`` (naming the file, option or limit):
:class:`~keypointlab.errors.InputError` (a ``ValueError``) and its subclasses
:class:`~keypointlab.errors.LimitError` (an input above a documented limit) and
:class:`~keypointlab.errors.InputTypeError` (also a ``TypeError``: an argument of the
wrong type), :class:`~keypointlab.errors.OutputError` (an ``OSError``: an output path
that cannot be written), and :class:`keypointlab.data.images.ImageReadError` (an
``OSError`` and an ``InputError``: an image that cannot be read). Unknown names raise
``KeyError`` listing the known ones, missing files ``FileNotFoundError``. Catch
:class:`~keypointlab.errors.KeypointLabError` for all of KeypointLab's own errors.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from matplotlib.figure import Figure

from keypointlab.errors import InputError, InputTypeError
from keypointlab.features.base import Extractor, Features, ImageInput, as_rgb_uint8
from keypointlab.features.registry import get_extractor
from keypointlab.matching import HomographyEstimate, estimate_homography, match_nn, matches_to_pairs
from keypointlab.viz import matches_figure


def load_extractor(name: str = "kp2d_fast", **kwargs: Any) -> Extractor:
    """An extractor by name: ``sift``, ``orb``, a shipped model or a checkpoint path; the
    default, ``kp2d_fast``, is the shipped model that extracts faster than SIFT on a CPU.

    ``kwargs``: ``device`` (``"cpu"``, ``"cuda"``...), ``scales``, ``rotations`` and
    ``max_keypoints`` for learned models (OpenCV features ignore the first three).

    Raises:
        InputTypeError: ``name`` is not a string or path (``load_extractor(None)``).
        KeyError: ``name`` is unknown; the message lists the available names.
        InputError: ``device`` is not available here (the message lists what is); a
            shipped model's ``.json`` or ``.safetensors`` is malformed, truncated or of
            another architecture; a checkpoint cannot be loaded or does not fit its
            model; an option is out of range. The message names the file or option.
        FileNotFoundError: a checkpoint path or run folder that does not exist.

    The extractor's ``extract(image)`` raises
    :class:`~keypointlab.data.images.ImageReadError` for an image that cannot be read
    (missing, truncated, not an image, unsupported shape or dtype), ``TypeError`` for an
    input that is not an image, and :class:`~keypointlab.errors.LimitError` for one above
    the pixel limit.
    """
    return get_extractor(name, **kwargs)


def _check_features(f0: Features, f1: Features) -> None:
    for name, f in (("f0", f0), ("f1", f1)):
        if not isinstance(f, Features):
            raise InputTypeError(
                f"{name}: expected Features (from extractor.extract), got {type(f).__name__}"
            )
    d0, d1 = f0.descriptors.shape[1], f1.descriptors.shape[1]
    if d0 != d1 and len(f0) and len(f1):
        raise InputError(
            f"f0 has {d0}-D descriptors and f1 {d1}-D: features of two different extractors "
            "cannot be matched"
        )


def _pairs(matches: np.ndarray, f0: Features, f1: Features) -> np.ndarray:
    """``matches`` as ``(M, 2)`` int64 index pairs into ``f0`` and ``f1``, checked."""
    try:
        m = np.asarray(matches)
        if m.size and not np.issubdtype(m.dtype, np.integer):
            raise ValueError(f"dtype {m.dtype}")
        m = m.astype(np.int64).reshape(-1, 2)
    except (TypeError, ValueError) as exc:
        raise InputError(
            f"matches: expected (M, 2) integer index pairs (from kl.match), got {exc}"
        ) from None
    for col, (name, n) in enumerate((("f0", len(f0)), ("f1", len(f1)))):
        if len(m) and (m[:, col].min() < 0 or m[:, col].max() >= n):
            raise InputError(
                f"matches: column {col} indexes {name}, which has {n} keypoints, but holds "
                f"values from {m[:, col].min()} to {m[:, col].max()}"
            )
    return m


def match(
    f0: Features,
    f1: Features,
    mutual: bool = True,
    ratio: float | None = None,
    max_distance: float | None = None,
) -> np.ndarray:
    """Nearest-neighbour matches as ``(M, 2)`` index pairs ``(i in f0, j in f1)``.

    Raises:
        InputTypeError: ``f0`` or ``f1`` is not :class:`Features`.
        InputError: their descriptors differ in size (two different extractors).
    """
    _check_features(f0, f1)
    m = match_nn(
        f0.descriptors, f1.descriptors, mutual=mutual, ratio=ratio, max_distance=max_distance
    )
    return matches_to_pairs(m)


def estimate(
    f0: Features, f1: Features, matches: np.ndarray, method: str = "ransac", threshold: float = 3.0
) -> HomographyEstimate:
    """Robust homography ``H_0to1`` from matched keypoints (never raises on few matches).

    Raises:
        InputTypeError: ``f0`` or ``f1`` is not :class:`Features`.
        InputError: ``matches`` are not ``(M, 2)`` integer pairs indexing ``f0`` and ``f1``.
        KeyError: unknown ``method``; the message lists the known ones.
    """
    _check_features(f0, f1)
    matches = _pairs(matches, f0, f1)
    return estimate_homography(
        f0.keypoints[matches[:, 0]], f1.keypoints[matches[:, 1]], method=method, threshold=threshold
    )


def draw_matches(
    image0: ImageInput,
    image1: ImageInput,
    f0: Features,
    f1: Features,
    matches: np.ndarray,
    result: HomographyEstimate | None = None,
) -> Figure:
    """Figure of the matches (inliers green) and the estimated outline of image 0.

    Raises:
        ImageReadError, InputError, InputTypeError: as ``extract`` for the images and
            :func:`estimate` for the features and matches.
    """
    _check_features(f0, f1)
    matches = _pairs(matches, f0, f1)
    inliers = result.inliers if result is not None and result.success else None
    H = result.H if result is not None and result.success else None
    return matches_figure(
        as_rgb_uint8(image0),
        as_rgb_uint8(image1),
        f0.keypoints[matches[:, 0]],
        f1.keypoints[matches[:, 1]],
        inliers,
        H,
    )
