"""Homographic training pairs made from a folder of unlabelled images.

Item ``i`` is a pure function of ``(seed, i)``: it picks an image, a random crop, a random
homography and photometric changes from ``numpy.random.default_rng([seed, i])``. Training
therefore resumes exactly by continuing the index sequence (see :class:`IndexSampler`),
and distributed ranks take disjoint indices.
"""

from __future__ import annotations

import logging
import math
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
from keypointlab.data.holdout import holdout_paths
from keypointlab.data.images import read_images
from keypointlab.geometry import HomographyConfig, sample_homography, warp_image, warp_points
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


def load_image_cache(
    root: str | Path,
    max_side: int,
    progress: bool = True,
    holdout: float = 0.0,
    holdout_seed: int = 0,
    exclude: list[str] | tuple = (),
) -> list[np.ndarray]:
    """Read every image below ``root`` but the held-out ones, downscaled so its longer side
    is ``<= max_side``.

    ``holdout`` is the fraction of images kept out for validation (a fixed split by path,
    :func:`keypointlab.data.holdout.split_holdout`). Unreadable files are reported and
    skipped. Images under the subfolders ``exclude`` (relative to ``root``) are left out.

    Raises:
        FileNotFoundError: ``root`` is missing or holds no readable image.
    """
    paths = holdout_paths(root, holdout, holdout_seed, exclude)[0]
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
    image: np.ndarray,
    size: tuple[int, int],
    rng: np.random.Generator,
    scale: tuple[float, float] = (0.6, 1.0),
) -> tuple[np.ndarray, np.ndarray]:
    """A random crop with the aspect of ``size`` whose side is a fraction in ``scale`` (drawn
    log-uniformly) of the largest such crop, resized to ``size = (h, w)``, and the 3x3 matrix
    mapping ``image`` pixels to crop pixels."""
    lo, hi = float(scale[0]), float(scale[1])
    if not 0 < lo <= hi <= 1:
        raise ValueError(f"crop scale {scale} must satisfy 0 < min <= max <= 1")
    h, w = image.shape[:2]
    th, tw = size
    full = min(h / th, w / tw)  # largest crop scale in target-pixel units
    s = full * math.exp(rng.uniform(math.log(lo), math.log(hi)))
    ch, cw = max(1, int(th * s)), max(1, int(tw * s))
    y0 = int(rng.integers(0, h - ch + 1))
    x0 = int(rng.integers(0, w - cw + 1))
    crop = image[y0 : y0 + ch, x0 : x0 + cw]
    interp = cv2.INTER_AREA if ch > th else cv2.INTER_LINEAR
    shift = np.array([[1, 0, -x0], [0, 1, -y0], [0, 0, 1]], np.float64)
    matrix = resize_matrix((ch, cw), (th, tw)) @ shift
    return cv2.resize(crop, (tw, th), interpolation=interp), matrix


def random_crop(
    image: np.ndarray,
    size: tuple[int, int],
    rng: np.random.Generator,
    scale: tuple[float, float] = (0.6, 1.0),
) -> np.ndarray:
    """:func:`random_crop_with_matrix` without the matrix."""
    return random_crop_with_matrix(image, size, rng, scale)[0]


def render_view(image: np.ndarray, matrix: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Warp ``image`` by the 3x3 ``matrix`` (image pixels to view pixels) into a view of
    ``size = (h, w)``, low-pass filtering the image first where the warp shrinks it, so that
    a zoomed-out view is not aliased and a zoomed-in one keeps the image's own detail."""
    h, w = size
    center = np.array([[(w - 1) / 2, (h - 1) / 2]])
    src = warp_points(center, np.linalg.inv(matrix))[0]
    # local area scale of the warp at the view centre (numerical Jacobian, 1 px steps)
    d = warp_points(src + np.array([[0, 0], [1, 0], [0, 1]]), matrix)
    k = math.sqrt(abs(np.linalg.det(np.stack([d[1] - d[0], d[2] - d[0]]))))
    if k < 1:
        sigma = 0.6 * math.sqrt(1 / k**2 - 1)
        image = cv2.GaussianBlur(image, (0, 0), sigma)
    return warp_image(image, matrix, size)


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
        crop_scale: range of view 0's side as a fraction of the largest crop of the image
            with the views' aspect (log-uniform).
        render_from_source: render view 1 from the source image through crop and homography
            (anti-aliased, see :func:`render_view`) instead of warping view 0, so a zoomed-in
            view 1 keeps the source's detail rather than view 0's upsampled pixels.

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
        crop_scale: tuple[float, float] = (0.6, 1.0),
        render_from_source: bool = False,
    ) -> None:
        if not images:
            raise ValueError("HomographicPairs needs at least one image")
        self.images = images
        self.size = tuple(size)
        self.homography = homography_config(homography)
        self.photometric = photometric
        self.seed = seed
        self.length = length
        self.crop_scale = (float(crop_scale[0]), float(crop_scale[1]))
        self.render_from_source = bool(render_from_source)

    def __len__(self) -> int:
        return self.length

    def views(
        self, image: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``(view0, view1, H_0to1, crop)`` of ``image``, where ``crop`` maps image pixels
        to view-0 pixels."""
        view0, crop = random_crop_with_matrix(image, self.size, rng, self.crop_scale)
        H = sample_homography(self.size, rng, self.homography)
        if self.render_from_source:
            view1 = render_view(image, H @ crop, self.size)
        else:
            view1 = warp_image(view0, H, self.size)
        return view0, view1, H, crop

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.seed, int(index)])
        image = self.images[int(rng.integers(len(self.images)))]
        view0, view1, H, _ = self.views(image, rng)
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
