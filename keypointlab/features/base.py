"""The extractor interface shared by classical and learned features."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from keypointlab import limits
from keypointlab.data.images import read_image, to_rgb_uint8

ImageInput = str | Path | np.ndarray | torch.Tensor


@dataclass
class Features:
    """Keypoints of one image.

    Attributes:
        keypoints: ``(N, 2)`` float xy in pixels of the image they were extracted from.
        scores: ``(N,)`` float, higher is better.
        descriptors: ``(N, D)`` float32; binary descriptors are unpacked to 0/1 bits so
            that squared Euclidean distance equals Hamming distance.
        image_size: ``(height, width)`` of that image.
        scales: optional ``(N,)`` keypoint size in pixels of that image (the diameter of
            the region described, as OpenCV's ``KeyPoint.size``).
        orientations: optional ``(N,)`` keypoint orientation in radians, from the +x axis
            towards +y in image coordinates (y points down: clockwise on screen, as
            OpenCV's ``KeyPoint.angle`` in degrees).
    """

    keypoints: np.ndarray
    scores: np.ndarray
    descriptors: np.ndarray
    image_size: tuple[int, int]
    scales: np.ndarray | None = None
    orientations: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.keypoints = np.asarray(self.keypoints, dtype=np.float64).reshape(-1, 2)
        self.scores = np.asarray(self.scores, dtype=np.float64).reshape(-1)
        self.descriptors = np.asarray(self.descriptors, dtype=np.float32)
        if self.descriptors.ndim != 2:
            self.descriptors = self.descriptors.reshape(len(self.keypoints), -1)
        n = len(self.keypoints)
        if len(self.scores) != n or len(self.descriptors) != n:
            raise ValueError(
                f"inconsistent features: {n} keypoints, {len(self.scores)} scores, "
                f"{len(self.descriptors)} descriptors"
            )
        for name in ("scales", "orientations"):
            value = getattr(self, name)
            if value is not None:
                value = np.asarray(value, dtype=np.float64).reshape(-1)
                if len(value) != n:
                    raise ValueError(f"inconsistent features: {n} keypoints, {len(value)} {name}")
                setattr(self, name, value)

    def __len__(self) -> int:
        return len(self.keypoints)

    def arrays(self) -> dict[str, np.ndarray]:
        """The per-keypoint arrays by name (optional ones only when present)."""
        out = {"keypoints": self.keypoints, "scores": self.scores, "descriptors": self.descriptors}
        for name in ("scales", "orientations"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        return out

    def select(self, index: np.ndarray) -> Features:
        """The subset at ``index`` (indices or boolean mask)."""
        return Features(
            self.keypoints[index],
            self.scores[index],
            self.descriptors[index],
            self.image_size,
            None if self.scales is None else self.scales[index],
            None if self.orientations is None else self.orientations[index],
        )

    def top_k(self, k: int | None) -> Features:
        """The ``k`` best by score; ties keep the extractor's order (stable sort).

        Raises:
            InputError: ``k`` is not a whole number >= 1 (None keeps all).
        """
        if k is not None:
            k = limits.check_count(k, "top-k")
        if k is None or len(self) <= k:
            order = np.argsort(-self.scores, kind="stable")
        else:
            order = np.argsort(-self.scores, kind="stable")[:k]
        return self.select(order)

    def scaled(self, sx: float, sy: float, image_size: tuple[int, int]) -> Features:
        """Keypoints rescaled by ``(sx, sy)`` for an image resized to ``image_size``
        (scales by the geometric mean of the two factors; orientations kept, exact only
        when ``sx == sy``)."""
        kp = self.keypoints * np.array([sx, sy])
        scales = None if self.scales is None else self.scales * float(np.sqrt(sx * sy))
        return Features(kp, self.scores, self.descriptors, image_size, scales, self.orientations)


def as_rgb_uint8(image: ImageInput) -> np.ndarray:
    """Any supported image input as RGB ``uint8`` ``(H, W, 3)``.

    Accepts a file path, a numpy array (grey ``(H, W)``, RGB or RGBA ``(H, W, C)``;
    uint8, uint16, or float in ``[0, 1]``) or a torch tensor (``(H, W)``, ``(C, H, W)`` or
    ``(1, C, H, W)``, float in ``[0, 1]`` or uint8).

    Raises:
        ImageReadError: an unreadable file, an unsupported shape or dtype, NaN/inf, or a
            float image with values well outside ``[0, 1]`` (0..255 floats: divide by
            255); an :class:`~keypointlab.errors.InputError`.
        ImageTooLargeError: more pixels than :func:`keypointlab.limits.max_pixels`.
    """
    if isinstance(image, (str, Path)):
        return read_image(image)
    if isinstance(image, torch.Tensor):
        t = image.detach().cpu()
        if t.dtype == torch.bfloat16:  # numpy has no bfloat16
            t = t.float()
        if t.ndim == 4:
            if t.shape[0] != 1:
                raise ValueError(f"expected one image, got a batch of shape {tuple(t.shape)}")
            t = t[0]
        if t.ndim == 3 and t.shape[0] in (1, 3, 4):
            t = t.permute(1, 2, 0)
        image = t.numpy()
    if not isinstance(image, np.ndarray):
        raise TypeError(f"unsupported image input of type {type(image).__name__}")
    return to_rgb_uint8(image, f"array of shape {image.shape}")


class Extractor(ABC):
    """Detects and describes keypoints; subclasses implement :meth:`_extract`."""

    name: str = "extractor"

    def extract(self, image: ImageInput) -> Features:
        """Features of one image: a path, numpy array or tensor, grey or colour."""
        return self._extract(as_rgb_uint8(image))

    def extract_path(self, path: str | Path) -> Features:
        """Features of an image file."""
        return self._extract(read_image(path))

    def identity(self) -> dict[str, Any]:
        """What makes this extractor's output what it is (JSON-able): its name and class,
        and in subclasses its settings and a hash of its weights. Stored in feature files
        so that ``extract --resume`` never mixes two extractors in one file."""
        return {"name": self.name, "class": f"{type(self).__module__}.{type(self).__qualname__}"}

    @abstractmethod
    def _extract(self, image: np.ndarray) -> Features:
        """Features of one RGB ``uint8`` ``(H, W, 3)`` image."""
