"""Reading images of every common format into one representation.

Every image KeypointLab reads becomes an RGB ``uint8`` array of shape ``(H, W, 3)``:
grey images are repeated over the three channels, an alpha channel is dropped and 16-bit
images are scaled to 8 bits. Failures raise :class:`ImageReadError` naming the file.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

import cv2
import numpy as np

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".pgm", ".pbm", ".tif", ".tiff", ".bmp")


class ImageReadError(OSError):
    """An image file that is missing, unreadable, truncated or not an image."""


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

    Float images are taken to be in ``[0, 1]``. ``name`` is used in error messages.
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
    if image.dtype == np.uint16:
        image = (image.astype(np.float32) / 257.0 + 0.5).astype(np.uint8)
    elif image.dtype in (np.float32, np.float64, np.float16):
        if not np.all(np.isfinite(image)):
            raise ImageReadError(f"{name}: image has non-finite values")
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

    Raises:
        ImageReadError: the file is missing, empty, truncated or cannot be decoded.
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ImageReadError(f"{path}: cannot read {what} ({exc.strerror or exc})") from exc
    if not data:
        raise ImageReadError(f"{path}: {what} is empty")
    decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
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
