"""Reading images of every common format into one representation.

Every image KeypointLab reads becomes an RGB ``uint8`` array of shape ``(H, W, 3)``:
grey images are repeated over the three channels, an alpha channel is dropped and 16-bit
images are scaled to 8 bits. Failures raise :class:`ImageReadError` naming the file.

Every file is bounded before it is decoded (:mod:`keypointlab.limits`): its size in bytes
from the file system, then its pixel count from the image header, so a small file that
decodes to a huge image (a "decompression bomb") or a header that claims one is refused
with :class:`ImageTooLargeError` without allocating its pixels.
"""

from __future__ import annotations

import io
import logging
import re
import struct
import warnings
from collections.abc import Iterable
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from keypointlab import limits
from keypointlab.errors import InputError, LimitError

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".pgm", ".pbm", ".tif", ".tiff", ".bmp")


class ImageReadError(InputError, OSError):
    """An image file that is missing, unreadable, truncated or not an image (an
    ``OSError`` as before, and an :class:`~keypointlab.errors.InputError`)."""


class ImageTooLargeError(ImageReadError, LimitError):
    """An image (file or array) above the pixel or file-size limit of
    :mod:`keypointlab.limits`; raised before its pixels are decoded."""


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PIL_PIXELS = re.compile(r"\((\d+) pixels\)")


# JPEG start-of-frame markers (baseline, progressive, lossless...): all of 0xC0-0xCF but
# DHT (0xC4), JPG (0xC8) and DAC (0xCC)
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    """``(height, width)`` of the first start-of-frame segment of a JPEG stream."""
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # segments without a length
            i += 2
            continue
        if marker in _JPEG_SOF:
            if i + 9 > len(data):
                return None
            height, width = struct.unpack(">HH", data[i + 5 : i + 9])
            return (height, width) if height and width else None
        i += 2 + int.from_bytes(data[i + 2 : i + 4], "big")
    return None


def header_size(data: bytes) -> tuple[int, int] | None:
    """``(height, width)`` the image header of ``data`` declares, without decoding pixels;
    None when no header is recognised.

    PNG (``IHDR``) and JPEG (start of frame) are parsed here, every other format through
    Pillow, which reads only the header when it opens a file. Above its own limit
    (``PIL.Image.MAX_IMAGE_PIXELS``, 89 megapixels) Pillow gives the pixel count only:
    that is returned as ``(pixels, 1)`` when within :func:`keypointlab.limits.max_pixels`.

    Raises:
        ImageTooLargeError: Pillow refused a header above the pixel limit (no file name
            in the message).
    """
    if data[:8] == _PNG_SIGNATURE:
        if data[12:16] != b"IHDR" or len(data) < 24:
            return None
        width, height = struct.unpack(">II", data[16:24])
        return (height, width) if height and width else None
    if data[:2] == b"\xff\xd8":
        return _jpeg_size(data)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                width, height = im.size
    except Image.DecompressionBombError as exc:
        found = _PIL_PIXELS.search(str(exc))
        pixels = int(found.group(1)) if found else 2 * (Image.MAX_IMAGE_PIXELS or 0) + 1
        limits.check_pixel_count(pixels, "the header declares", error=ImageTooLargeError)
        return pixels, 1
    except Exception:  # any failure of a parser on untrusted bytes: no header to trust
        return None
    return (height, width) if height and width else None


def _looks_truncated(data: bytes) -> bool:
    """Cheap end-of-stream checks for the formats whose decoders accept truncated files.

    The format is recognised by its signature, as the decoder does, not by the file name.
    """
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return b"IEND" not in data[-32:]
    if data[:2] == b"\xff\xd8":
        return b"\xff\xd9" not in data.rstrip(b"\x00")[-16:]
    return False


def to_rgb_uint8(image: np.ndarray, name: str = "image") -> np.ndarray:
    """Convert a decoded array (grey, RGB, RGBA; uint8, uint16 or float) to RGB ``uint8``.

    Float images are taken to be in ``[0, 1]``: values a little outside (resampling
    overshoot, within :data:`keypointlab.limits.FLOAT_IMAGE_RANGE`) are clipped, and an
    image with values beyond that (a 0..255 float image), NaN or infinity is refused.
    ``name`` is used in error messages.

    Raises:
        ImageReadError: unsupported shape or dtype, zero size, NaN/inf or out-of-range
            float values.
        ImageTooLargeError: more pixels than :func:`keypointlab.limits.max_pixels`.
    """
    image = np.asarray(image)
    if not image.dtype.isnative:  # e.g. big-endian '>u2' from a 16-bit PGM read by numpy
        image = image.astype(image.dtype.newbyteorder("="))
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[..., 0]
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (3, 4)):
        raise ImageReadError(f"{name}: unsupported image shape {image.shape}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ImageReadError(f"{name}: image has zero size {image.shape}")
    limits.check_pixels(*image.shape[:2], name, error=ImageTooLargeError)
    if image.dtype == np.uint16:
        image = (image.astype(np.float32) / 257.0 + 0.5).astype(np.uint8)
    elif image.dtype in (np.float32, np.float64, np.float16):
        try:
            limits.check_float_image(image, name)
        except InputError as exc:
            raise ImageReadError(str(exc)) from None
        image = (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    elif image.dtype == bool:
        image = image.astype(np.uint8) * 255
    elif image.dtype != np.uint8:
        raise ImageReadError(f"{name}: unsupported image dtype {image.dtype}")
    if image.ndim == 2:
        return np.repeat(image[..., None], 3, axis=2)
    return np.ascontiguousarray(image[..., :3])


def _decode_file(path: Path, what: str, truncated: str) -> np.ndarray:
    """The decoded pixels of ``path`` as stored (``cv2.IMREAD_UNCHANGED``), decoded from
    its bytes so that a truncated file is detected; ``what`` and ``truncated`` name the
    file in the messages.

    The file's size and the pixel count its header declares are checked first
    (:mod:`keypointlab.limits`), so nothing above the limits is read or decoded.

    Raises:
        ImageReadError: the file is missing, empty, truncated, has no image header or
            cannot be decoded.
        ImageTooLargeError: the file or the image it declares is above the limits.
    """
    try:
        limits.check_file_bytes(path.stat().st_size, str(path), error=ImageTooLargeError)
        data = path.read_bytes()
    except OSError as exc:
        if isinstance(exc, ImageReadError):
            raise
        raise ImageReadError(f"{path}: cannot read {what} ({exc.strerror or exc})") from exc
    if not data:
        raise ImageReadError(f"{path}: {what} is empty")
    try:
        size = header_size(data)
    except ImageTooLargeError as exc:
        raise ImageTooLargeError(f"{path}: {exc}") from None
    if size is None:
        raise ImageReadError(f"{path}: not a readable image (no image header recognised)")
    limits.check_pixels(*size, str(path), error=ImageTooLargeError)
    try:
        decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error as exc:
        detail = (exc.err or str(exc)).strip().splitlines()[-1]
        raise ImageReadError(f"{path}: cannot decode the image ({detail})") from None
    if decoded is None:
        raise ImageReadError(f"{path}: not a readable image")
    if _looks_truncated(data):
        raise ImageReadError(f"{path}: {truncated} is truncated")
    return decoded


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file as RGB ``uint8`` ``(H, W, 3)``.

    Accepts jpg, png, ppm/pgm, tif and bmp; grey, RGB, RGBA and 16-bit images.

    Raises:
        ImageReadError: the file is missing, empty, truncated or cannot be decoded.
        ImageTooLargeError: the file or its image is above the limits of
            :mod:`keypointlab.limits` (checked from the header, before decoding).
    """
    path = Path(path)
    decoded = _decode_file(path, "file", "image file")
    if decoded.ndim == 3 and decoded.shape[2] >= 3:
        code = cv2.COLOR_BGRA2RGBA if decoded.shape[2] == 4 else cv2.COLOR_BGR2RGB
        decoded = cv2.cvtColor(decoded, code)
    return to_rgb_uint8(decoded, str(path))


def to_gray(image: np.ndarray) -> np.ndarray:
    """RGB ``uint8`` ``(H, W, 3)`` to grey ``uint8`` ``(H, W)`` (OpenCV's weights)."""
    if image.ndim == 2:
        return image
    return cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize to ``size = (height, width)`` with area interpolation (the protocol's choice)."""
    h, w = size
    if image.shape[:2] == (h, w):
        return image
    return cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA)


def list_images(folder: str | Path, recursive: bool = True) -> list[Path]:
    """Sorted image files in ``folder`` (by extension, case-insensitive).

    Raises:
        FileNotFoundError: ``folder`` does not exist or is not a directory.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder")
    pattern = "**/*" if recursive else "*"
    return sorted(
        p for p in folder.glob(pattern) if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
    )


def read_images(paths: Iterable[Path]) -> Iterable[tuple[Path, np.ndarray | None, str | None]]:
    """Yield ``(path, image, None)`` per readable file and ``(path, None, reason)`` otherwise.

    A bad file is logged and reported, never fatal, so folder-level work finishes the rest.
    """
    for path in paths:
        try:
            yield path, read_image(path), None
        except ImageReadError as exc:
            logger.warning("skipping %s", exc)
            yield path, None, str(exc)


def read_depth(path: str | Path, scale: float = 1000.0) -> np.ndarray:
    """Read a 16-bit single-channel depth PNG as float32 ``(H, W)`` metres.

    Args:
        path: the depth image (e.g. 7-Scenes' ``frame-*.depth.png``, Redwood's ``depth/*.png``).
        scale: stored units per metre (1000 for millimetres). Values are ``raw / scale``;
            0 stays 0, which means missing depth.

    Raises:
        ImageReadError: the file is missing, empty, truncated or undecodable, or not a
            16-bit single-channel image; the message names the file.
        ValueError: ``scale`` is not a positive finite number.
    """
    if not (np.isfinite(scale) and scale > 0):
        raise ValueError(f"depth scale must be positive and finite, got {scale}")
    path = Path(path)
    depth = _decode_file(path, "depth file", "depth file")
    if depth.ndim == 3 and depth.shape[2] == 1:
        depth = depth[..., 0]
    if depth.dtype != np.uint16 or depth.ndim != 2:
        channels = 1 if depth.ndim == 2 else depth.shape[2]
        raise ImageReadError(
            f"{path}: a depth map must be a 16-bit single-channel image, got {depth.dtype} "
            f"with {channels} channel(s)"
        )
    return depth.astype(np.float32) / np.float32(scale)
