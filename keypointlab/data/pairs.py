"""Homographic training pairs made from a folder of unlabelled images.

Item ``i`` is a pure function of ``(seed, i)``: it picks an image, a random crop, a random
homography and photometric changes from ``numpy.random.default_rng([seed, i])``. Training
therefore resumes exactly by continuing the index sequence (see :class:`IndexSampler`),
and distributed ranks take disjoint indices.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset, Sampler
from tqdm import tqdm

from keypointlab.data.augment import Photometric
from keypointlab.data.images import list_images, read_images
from keypointlab.geometry import HomographyConfig, sample_homography, warp_image
from keypointlab.geometry.homography import resize_matrix

logger = logging.getLogger(__name__)


def homography_config(conf: dict[str, Any] | HomographyConfig | None) -> HomographyConfig:
    """A :class:`HomographyConfig` from a dict, failing on unknown keys."""
    if conf is None or isinstance(conf, HomographyConfig):
        return conf or HomographyConfig()
    known = {f.name for f in fields(HomographyConfig)}
    unknown = set(conf) - known
    if unknown:
        raise KeyError(f"unknown homography parameter(s) {sorted(unknown)}; known: {sorted(known)}")
    return HomographyConfig(**conf)


def load_image_cache(root: str | Path, max_side: int, progress: bool = True) -> list[np.ndarray]:
    """Read every image below ``root``, downscaled so its longer side is ``<= max_side``.

    Unreadable files are reported and skipped.

    Raises:
        FileNotFoundError: ``root`` is missing or holds no readable image.
    """
    paths = list_images(root)
    images = []
    for _path, image, _ in tqdm(
        read_images(paths),
        total=len(paths),
        desc="loading images",
        disable=not progress,
        leave=False,
    ):
        if image is None:
            continue
        h, w = image.shape[:2]
        s = max_side / max(h, w)
        if s < 1:
            image = cv2.resize(image, (round(w * s), round(h * s)), interpolation=cv2.INTER_AREA)
        images.append(image)
    if not images:
        raise FileNotFoundError(f"{root}: no readable image found")
    logger.info(
        "loaded %d training images from %s (%d skipped)",
        len(images),
        root,
        len(paths) - len(images),
    )
    return images


def random_crop_with_matrix(
    image: np.ndarray, size: tuple[int, int], rng: np.random.Generator, min_scale: float = 0.6
) -> tuple[np.ndarray, np.ndarray]:
    """A random crop with the aspect of ``size`` covering ``[min_scale, 1]`` of the largest
    such crop, resized to ``size = (h, w)``, and the 3x3 matrix mapping ``image`` pixels to
    crop pixels."""
    h, w = image.shape[:2]
    th, tw = size
    full = min(h / th, w / tw)  # largest crop scale in target-pixel units
    s = full * rng.uniform(min_scale, 1.0)
    ch, cw = max(1, int(th * s)), max(1, int(tw * s))
    y0 = int(rng.integers(0, h - ch + 1))
    x0 = int(rng.integers(0, w - cw + 1))
    crop = image[y0 : y0 + ch, x0 : x0 + cw]
    interp = cv2.INTER_AREA if ch > th else cv2.INTER_LINEAR
    shift = np.array([[1, 0, -x0], [0, 1, -y0], [0, 0, 1]], np.float64)
    matrix = resize_matrix((ch, cw), (th, tw)) @ shift
    return cv2.resize(crop, (tw, th), interpolation=interp), matrix


def random_crop(
    image: np.ndarray, size: tuple[int, int], rng: np.random.Generator, min_scale: float = 0.6
) -> np.ndarray:
    """:func:`random_crop_with_matrix` without the matrix."""
    return random_crop_with_matrix(image, size, rng, min_scale)[0]


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """RGB uint8 ``(H, W, 3)`` to float ``(3, H, W)`` in ``[0, 1]``."""
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float() / 255.0


class HomographicPairs(Dataset):
    """Pairs ``(view 0, view 1 = warp of view 0 by H_0to1)`` with photometric changes.

    Args:
        images: decoded RGB images (see :func:`load_image_cache`).
        size: ``(h, w)`` of the views.
        homography: sampler parameters (dict or :class:`HomographyConfig`).
        photometric: augmentation applied to each view independently (None: none).
        seed: base seed; item ``i`` depends only on ``(seed, i)``.
        length: nominal length (the index space is unbounded).

    Items are dicts: ``image0``, ``image1`` float ``(3, h, w)`` in ``[0, 1]`` and
    ``H_0to1`` float32 ``(3, 3)``.
    """

    def __init__(
        self,
        images: list[np.ndarray],
        size: tuple[int, int] = (120, 160),
        homography: dict | HomographyConfig | None = None,
        photometric: Photometric | None = None,
        seed: int = 0,
        length: int = 10**9,
    ) -> None:
        if not images:
            raise ValueError("HomographicPairs needs at least one image")
        self.images = images
        self.size = tuple(size)
        self.homography = homography_config(homography)
        self.photometric = photometric
        self.seed = seed
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.seed, int(index)])
        image = self.images[int(rng.integers(len(self.images)))]
        view0 = random_crop(image, self.size, rng)
        H = sample_homography(self.size, rng, self.homography)
        view1 = warp_image(view0, H, self.size)
        if self.photometric is not None:
            view0, view1 = self.photometric(view0, rng), self.photometric(view1, rng)
        return {
            "image0": to_tensor(view0),
            "image1": to_tensor(view1),
            "H_0to1": torch.from_numpy(H.astype(np.float32)),
        }


class IndexSampler(Sampler[int]):
    """Yields ``start, start + 1, ...`` (strided by ``world`` from ``rank``) for ``total`` items.

    Continuing training from sample ``start`` reproduces exactly the batches an
    uninterrupted run would have seen.
    """

    def __init__(self, start: int, total: int, rank: int = 0, world: int = 1) -> None:
        self.start, self.total, self.rank, self.world = start, total, rank, world

    def __iter__(self) -> Iterator[int]:
        for k in range(self.start, self.total):
            yield k * self.world + self.rank

    def __len__(self) -> int:
        return max(0, self.total - self.start)
