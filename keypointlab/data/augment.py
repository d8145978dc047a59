"""Photometric augmentation as named primitives, chosen and parameterised in config.

Each primitive takes a float32 image in ``[0, 255]`` (grey ``(H, W)`` or colour
``(H, W, 3)``) and a ``numpy.random.Generator`` and returns an image of the same shape,
clipped to ``[0, 255]``. :class:`Photometric` applies a random subset in random order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np

Primitive = Callable[[np.ndarray, np.random.Generator], np.ndarray]


def brightness(image: np.ndarray, rng: np.random.Generator, max_delta: float = 50.0) -> np.ndarray:
    """Add a uniform offset in ``[-max_delta, max_delta]``."""
    return np.clip(image + rng.uniform(-max_delta, max_delta), 0, 255)


def contrast(
    image: np.ndarray, rng: np.random.Generator, strength: tuple[float, float] = (0.5, 1.5)
) -> np.ndarray:
    """Scale deviations from the mean by a factor in ``strength``."""
    mean = image.mean()
    return np.clip((image - mean) * rng.uniform(*strength) + mean, 0, 255)


def gaussian_noise(
    image: np.ndarray, rng: np.random.Generator, max_std: float = 10.0
) -> np.ndarray:
    """Additive Gaussian noise with std uniform in ``[0, max_std]``."""
    return np.clip(image + rng.normal(0, rng.uniform(0, max_std), image.shape), 0, 255)


def speckle(image: np.ndarray, rng: np.random.Generator, prob: float = 0.005) -> np.ndarray:
    """Salt-and-pepper noise on a fraction up to ``prob`` of the pixels."""
    p = rng.uniform(0, prob)
    u = rng.random(image.shape[:2])
    out = image.copy()
    out[u < p / 2] = 0
    out[u > 1 - p / 2] = 255
    return out


def shading(
    image: np.ndarray,
    rng: np.random.Generator,
    max_strength: float = 0.5,
    n_ellipses: int = 15,
    kernel: tuple[int, int] = (100, 150),
) -> np.ndarray:
    """Multiply by a smooth random shadow made of blurred ellipses (SuperPoint's shade)."""
    h, w = image.shape[:2]
    mask = np.zeros((h, w), np.uint8)
    for _ in range(n_ellipses):
        ax = int(max(1, rng.uniform(0.02, 0.3) * min(h, w)))
        ay = int(max(1, rng.uniform(0.02, 0.3) * min(h, w)))
        cx, cy = int(rng.uniform(0, w)), int(rng.uniform(0, h))
        cv2.ellipse(mask, (cx, cy), (ax, ay), rng.uniform(0, 90), 0, 360, 255, -1)
    k = int(rng.uniform(*kernel)) | 1
    shade = cv2.GaussianBlur(mask.astype(np.float32), (k, k), 0) / 255.0
    factor = 1 - rng.uniform(-max_strength, max_strength) * shade
    if image.ndim == 3:
        factor = factor[..., None]
    return np.clip(image * factor, 0, 255)


def motion_blur(image: np.ndarray, rng: np.random.Generator, max_kernel: int = 7) -> np.ndarray:
    """Blur along a random direction with a kernel of odd size up to ``max_kernel``."""
    k = int(rng.integers(0, (max_kernel + 1) // 2)) * 2 + 1
    if k < 3:
        return image
    kernel = np.zeros((k, k), np.float32)
    kernel[k // 2, :] = 1.0
    rot = cv2.getRotationMatrix2D((k / 2 - 0.5, k / 2 - 0.5), rng.uniform(0, 180), 1.0)
    kernel = cv2.warpAffine(kernel, rot, (k, k))
    kernel /= max(kernel.sum(), 1e-6)
    return cv2.filter2D(image.astype(np.float32), -1, kernel)


PRIMITIVES: dict[str, Primitive] = {
    "brightness": brightness,
    "contrast": contrast,
    "gaussian_noise": gaussian_noise,
    "speckle": speckle,
    "shading": shading,
    "motion_blur": motion_blur,
}


@dataclass
class Photometric:
    """Applies each named primitive with probability ``prob``, in a random order.

    Args:
        primitives: names from :data:`PRIMITIVES`; an unknown name raises ``KeyError``.
        prob: probability of applying each one.
    """

    primitives: Sequence[str] = field(default_factory=lambda: list(PRIMITIVES))
    prob: float = 0.5

    def __post_init__(self) -> None:
        unknown = [p for p in self.primitives if p not in PRIMITIVES]
        if unknown:
            raise KeyError(f"unknown photometric primitive(s) {unknown}; known: {list(PRIMITIVES)}")

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Augment a uint8 or float image; returns the input's dtype."""
        dtype = image.dtype
        out = image.astype(np.float32)
        for i in rng.permutation(len(self.primitives)):
            if rng.random() < self.prob:
                out = PRIMITIVES[self.primitives[i]](out, rng)
        out = np.clip(out, 0, 255)
        return (out + 0.5).astype(np.uint8) if dtype == np.uint8 else out.astype(dtype)
