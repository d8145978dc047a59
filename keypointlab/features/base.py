"""The extractor interface shared by classical and learned features."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np


@dataclass
class Features:
    """Keypoints of one image.

    Attributes:
        keypoints: ``(N, 2)`` float xy in pixels of the image they were extracted from.
        scores: ``(N,)`` float, higher is better.
        descriptors: ``(N, D)`` float32; binary descriptors are unpacked to 0/1 bits so
            that squared Euclidean distance equals Hamming distance.
        image_size: ``(height, width)`` of that image.
    """

    keypoints: np.ndarray
    scores: np.ndarray
    descriptors: np.ndarray
    image_size: tuple[int, int]

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

    def __len__(self) -> int:
        return len(self.keypoints)

    def select(self, index: np.ndarray) -> Features:
        """The subset at ``index`` (indices or boolean mask)."""
        return Features(
            self.keypoints[index], self.scores[index], self.descriptors[index], self.image_size
        )

    def top_k(self, k: int | None) -> Features:
        """The ``k`` best by score; ties keep the extractor's order (stable sort)."""
        if k is None or len(self) <= k:
            order = np.argsort(-self.scores, kind="stable")
        else:
            order = np.argsort(-self.scores, kind="stable")[:k]
        return self.select(order)

    def scaled(self, sx: float, sy: float, image_size: tuple[int, int]) -> Features:
        """Keypoints rescaled by ``(sx, sy)`` for an image resized to ``image_size``."""
        kp = self.keypoints * np.array([sx, sy])
        return Features(kp, self.scores, self.descriptors, image_size)


class Extractor(ABC):
    """Detects and describes keypoints in an RGB ``uint8`` ``(H, W, 3)`` image."""

    name: str = "extractor"

    @abstractmethod
    def extract(self, image: np.ndarray) -> Features:
        """Features of one image (RGB uint8, ``(H, W, 3)``)."""
