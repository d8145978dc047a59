"""The limits every input is checked against before any work starts.

One place for the bounds that keep a run from taking the machine down (memory, time) or
from silently doing something else than asked. Each check raises
:class:`keypointlab.errors.LimitError` (a ``ValueError``) with one message that names the
input, its value and the limit, so the command line reports it in one line and a folder
skips the item and finishes the rest.

========================  =============  ================================================
limit                     default        why
========================  =============  ================================================
pixels of an image        40,000,000     the decoded image and the largest network input
(:func:`max_pixels`)                     (image x scale^2, or its rotated canvas); see
                                         :data:`DEFAULT_MAX_PIXELS`. Raise it with the
                                         environment variable ``KEYPOINTLAB_MAX_PIXELS``
                                         or the ``--max-pixels`` option.
bytes of an image file    8 bytes per    an uncompressed 16-bit RGBA image at the pixel
                          pixel + 16 MB  limit, plus metadata; checked before reading.
scales                    8 values in    each a network pass on an image resized by it:
                          1/8 .. 4       4 is 16x the pixels (the pixel limit applies).
rotations                 1 .. 36        one network pass per copy, every 10 degrees.
homographies (adapt)      1 .. 1000      one network pass each (the paper uses 100).
keypoints, top-k          >= 1           0 or a negative count would keep nothing or
                                         drop the best silently.
float image values        -1 .. 2        float images are in [0, 1]; a little outside
                                         (resampling overshoot) is clipped, beyond that
                                         the image is refused (0..255 floats: divide
                                         by 255).
========================  =============  ================================================

Nothing here reads files, sets up logging or parses arguments at import time; the pixel
limit is read from the environment when it is asked for.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from keypointlab.errors import InputError, LimitError

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "ENV_MAX_PIXELS",
    "FLOAT_IMAGE_RANGE",
    "MAX_HOMOGRAPHIES",
    "MAX_ROTATIONS",
    "MAX_SCALE",
    "MAX_SCALES",
    "MIN_SCALE",
    "check_count",
    "check_file_bytes",
    "check_finite",
    "check_float_image",
    "check_pixel_count",
    "check_pixels",
    "check_rotations",
    "check_scales",
    "max_file_bytes",
    "max_pixels",
    "override",
    "parse_max_pixels",
]

DEFAULT_MAX_PIXELS = 40_000_000
"""Pixels (height x width) of the largest image read and of the largest network input.

40 megapixels is a 7300 x 5500 photo, larger than most cameras make. Measured on CPU at
20 megapixels, the shipped kp2d and superpoint models and SIFT take 185-212 bytes of
peak memory per pixel (kp2d_fast 45), so an input at the limit needs about 9 GB: well
within a 24 GB machine, with room for the rest of it. The limit applies to the network
input too (the image at its largest scale, or its rotated canvas), so ``--scales`` and
``--rotations`` cannot multiply it. Not covered: D2-Net's detection, whose memory grows
with the square of the pixel count (11 GB at 1.5 megapixels)."""

ENV_MAX_PIXELS = "KEYPOINTLAB_MAX_PIXELS"
"""Environment variable that replaces :data:`DEFAULT_MAX_PIXELS` (a positive integer)."""

BYTES_PER_PIXEL = 8  # 16-bit RGBA, the largest pixel an image file stores uncompressed
HEADER_BYTES = 16 * 2**20  # metadata (EXIF, ICC profiles, thumbnails) beside the pixels

MAX_SCALES = 8
"""Most image scales one extractor runs at (each is a network pass)."""

MIN_SCALE, MAX_SCALE = 0.125, 4.0
"""Allowed image scale values: 1/8 (a 640x480 image becomes 80x60, a handful of 8-pixel
cells) to 4 (16 times the pixels; the pixel limit applies to the result too)."""

MAX_ROTATIONS = 36
"""Most rotated copies (``--rotations K``): one every 10 degrees, a network pass each."""

MAX_HOMOGRAPHIES = 1000
"""Most homographic views per image in adaptation (the SuperPoint paper uses 100)."""

FLOAT_IMAGE_RANGE = (-1.0, 2.0)
"""Values a float image may hold: it is taken to be in ``[0, 1]`` and clipped; values
beyond this range mean another convention (0..255) and are refused."""

_override: dict[str, int] = {}


def parse_max_pixels(text: str | int, what: str = "--max-pixels") -> int:
    """A pixel limit given as text (``"40000000"``, ``"40e6"``, ``"40M"``) as an int >= 1.

    Raises:
        InputError: not a positive whole number of pixels; the message names ``what``.
    """
    value = str(text).strip()
    factor = 1
    if value[-1:].upper() == "M":
        value, factor = value[:-1], 1_000_000
    try:
        number = float(value) * factor
    except ValueError:
        raise InputError(
            f"{what} {text!r}: expected a number of pixels such as 40000000 or 40M"
        ) from None
    if not math.isfinite(number) or number < 1 or number != int(number):
        raise InputError(f"{what} {text!r}: expected a positive whole number of pixels")
    return int(number)


def max_pixels() -> int:
    """The pixel limit in force: :func:`override`, else ``KEYPOINTLAB_MAX_PIXELS``, else
    :data:`DEFAULT_MAX_PIXELS`.

    Raises:
        InputError: ``KEYPOINTLAB_MAX_PIXELS`` is set to something else than a positive
            number of pixels.
    """
    if "max_pixels" in _override:
        return _override["max_pixels"]
    env = os.environ.get(ENV_MAX_PIXELS, "").strip()
    if env:
        return parse_max_pixels(env, f"environment variable {ENV_MAX_PIXELS}")
    return DEFAULT_MAX_PIXELS


@contextmanager
def override(max_pixels: int | None = None) -> Iterator[None]:
    """Use ``max_pixels`` as the pixel limit inside the block (None: leave it as it is).

    The command line wraps each command in it for ``--max-pixels``; the previous limit is
    back when the block ends, also on an exception.
    """
    saved = dict(_override)
    if max_pixels is not None:
        _override["max_pixels"] = parse_max_pixels(max_pixels)
    try:
        yield
    finally:
        _override.clear()
        _override.update(saved)


def _hint() -> str:
    return f"raise it with --max-pixels or {ENV_MAX_PIXELS}"


def check_pixels(height: int, width: int, what: str, error: type[LimitError] = LimitError) -> None:
    """Refuse an image (or network input) of ``height x width`` above :func:`max_pixels`.

    ``what`` names it in the message (a file, an array, "network input at scale 2");
    ``error`` is the type raised (a :class:`LimitError` subclass).
    """
    pixels = int(height) * int(width)
    check_pixel_count(pixels, f"{what}: {int(height)}x{int(width)} =", error)


def check_pixel_count(pixels: int, what: str, error: type[LimitError] = LimitError) -> None:
    """Refuse ``pixels`` above :func:`max_pixels`; the message reads
    ``"{what} {pixels} pixels exceeds the limit of ..."``."""
    limit = max_pixels()
    if pixels > limit:
        raise error(
            f"{what} {pixels:,} pixels, which exceeds the limit of {limit:,} pixels ({_hint()})"
        )


def max_file_bytes() -> int:
    """Largest image file read: 8 bytes per pixel of the pixel limit, plus 16 MB."""
    return BYTES_PER_PIXEL * max_pixels() + HEADER_BYTES


def check_file_bytes(size: int, what: str, error: type[LimitError] = LimitError) -> None:
    """Refuse an image file of ``size`` bytes above :func:`max_file_bytes` (before reading)."""
    limit = max_file_bytes()
    if size > limit:
        raise error(
            f"{what}: file of {size:,} bytes exceeds the limit of {limit:,} bytes for an "
            f"image of at most {max_pixels():,} pixels ({_hint()})"
        )


def check_scales(scales: Iterable[float], what: str = "scales") -> tuple[float, ...]:
    """``scales`` as a tuple of floats, each finite in ``[MIN_SCALE, MAX_SCALE]``, at most
    :data:`MAX_SCALES` of them and at least one.

    Raises:
        LimitError: too many, too small, too large or not finite; names ``what``.
        InputError: not numbers, or none.
    """
    try:
        values = tuple(float(s) for s in scales)
    except (TypeError, ValueError):
        raise InputError(f"{what} {scales!r}: expected numbers such as 1.41,1,0.71") from None
    if not values:
        raise InputError(f"{what}: give at least one scale, such as 1")
    if len(values) > MAX_SCALES:
        raise LimitError(
            f"{what}: {len(values)} scales exceed the limit of {MAX_SCALES} (each is a "
            "network pass)"
        )
    for s in values:
        if not (math.isfinite(s) and MIN_SCALE <= s <= MAX_SCALE):
            raise LimitError(
                f"{what}: scale {s:g} is outside the allowed range {MIN_SCALE:g} to "
                f"{MAX_SCALE:g} (finite, positive)"
            )
    return values


def check_count(
    value: object, what: str, minimum: int = 1, maximum: int | None = None, why: str = ""
) -> int:
    """``value`` as an int in ``[minimum, maximum]`` (keypoints, top-k, views, sizes);
    ``why`` explains the maximum in the message.

    Raises:
        InputError: not a whole number, or below ``minimum``.
        LimitError: above ``maximum``.
    """
    if isinstance(value, bool) or not isinstance(value, (int, np.integer, float, np.floating)):
        raise InputError(f"{what} {value!r}: expected a whole number")
    if not (math.isfinite(value) and int(value) == value):
        raise InputError(f"{what} {value!r}: expected a whole number")
    number = int(value)
    if number < minimum:
        raise InputError(f"{what} {number}: must be at least {minimum}")
    if maximum is not None and number > maximum:
        reason = f" ({why})" if why else ""
        raise LimitError(f"{what} {number}: exceeds the limit of {maximum}{reason}")
    return number


def check_rotations(value: object, what: str = "rotations") -> int:
    """Rotated copies ``K`` as an int in ``1 .. MAX_ROTATIONS``."""
    return check_count(value, what, 1, MAX_ROTATIONS, "one network pass per rotated copy")


def check_finite(array: Any, what: str) -> None:
    """Refuse an array (numpy, or a torch tensor on any device) holding NaN or infinity
    (descriptors, images, keypoints); integer arrays always pass.

    Raises:
        InputError: names ``what`` and how many values are not finite.
    """
    if hasattr(array, "is_floating_point"):  # a torch tensor, checked where it lives
        if not (array.is_floating_point() or array.is_complex()):
            return
        size = array.numel()
        bad = size - int(array.isfinite().sum())
    else:
        a = np.asarray(array)
        if a.dtype.kind not in "fc":
            return
        size = a.size
        bad = size - int(np.count_nonzero(np.isfinite(a)))
    if bad:
        raise InputError(f"{what}: {bad} of {size} values are non-finite (NaN or infinity)")


def check_float_image(image: np.ndarray, what: str) -> None:
    """Refuse a float image with NaN/inf, or with values beyond :data:`FLOAT_IMAGE_RANGE`
    (float images are taken to be in ``[0, 1]``)."""
    check_finite(image, what)
    if image.size == 0:
        return
    lo, hi = float(image.min()), float(image.max())
    if hi > FLOAT_IMAGE_RANGE[1]:
        raise InputError(
            f"{what}: float image has values up to {hi:g}, above 1; float images are "
            "taken to be in [0, 1] (for a 0..255 image divide by 255, or pass it as uint8)"
        )
    if lo < FLOAT_IMAGE_RANGE[0]:
        raise InputError(
            f"{what}: float image has values down to {lo:g}, below 0; float images are "
            "taken to be in [0, 1]"
        )
