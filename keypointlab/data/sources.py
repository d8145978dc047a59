"""Training data sources, chosen by the trainer's ``data.source`` config key.

A source is a builder ``(data_conf, images_or_none, seed) -> Dataset`` registered under a
name; sources that train on the folder ``data.train`` set ``needs_images`` and receive
its decoded images (see :func:`keypointlab.data.pairs.load_image_cache`), the others get
``None`` and read what they need themselves. Every dataset item is a pure function of
``(seed, index)`` (see :mod:`keypointlab.data.pairs`), so training resumes exactly.

Sources:

``pairs`` (default)
    :class:`~keypointlab.data.pairs.HomographicPairs` of ``data.train``: ``image0``,
    ``image1``, ``H_0to1``. The self-supervised methods (KP2D, UnsuperPoint) train on it.
``synthetic``
    :class:`SyntheticTraining`: synthetic shapes with exact corner labels
    (:class:`~keypointlab.data.synthetic.SyntheticShapes`), warped by a random homography
    (``data.homography``) and photometrically augmented (``data.photometric``): ``image``
    ``(1, H, W)``, ``keypoint_map`` and ``valid_mask`` ``(H, W)``. MagicPoint trains on it.
``adapted_pairs``
    :class:`AdaptedPairs`: homographic pairs of ``data.train`` with the pseudo-ground-truth
    keypoints of ``data.labels`` (an HDF5 file written by ``keypointlab adapt``) carried
    through the crop and the homography: ``image0``, ``image1``, ``H_0to1``,
    ``keypoint_map0/1`` and ``valid_mask0/1`` ``(H, W)``. SuperPoint (and MagicPoint in
    later rounds) trains on it.

Other modules register their own: ``depth_pairs`` (:mod:`keypointlab.data.depth`, RGB-D
frames with known poses) and ``instances`` (:mod:`keypointlab.data.instances`, two views of
a training photograph with the photograph's index as class label; DELF trains on it).

Keypoint maps hold 1 at the pixel ``round(xy)`` of each keypoint inside the view and its
valid region; valid masks are 1 where the view shows the source image, eroded by
``VALID_BORDER`` pixels (interpolation at the border is unreliable).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import h5py
import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from keypointlab.data.augment import Photometric
from keypointlab.data.holdout import holdout_paths
from keypointlab.data.images import list_images, read_images
from keypointlab.data.pairs import (
    HomographicPairs,
    homography_config,
    load_image_cache,
    to_tensor,
)
from keypointlab.data.synthetic import SyntheticShapes, points_to_map
from keypointlab.geometry import inside_image, sample_homography, warp_image, warp_points
from keypointlab.geometry.homography import resize_matrix
from keypointlab.io.h5 import read_keypoint_group, safe_key
from keypointlab.registry import Registry

logger = logging.getLogger(__name__)

VALID_BORDER = 3  # px eroded from the valid region of a warped view

Builder = Callable[[dict[str, Any], "list[np.ndarray] | None", int], Dataset]


@dataclass(frozen=True)
class Source:
    """A registered data source: its builder and whether it takes ``data.train``'s images."""

    build: Builder
    needs_images: bool


SOURCES: Registry[Source] = Registry("data source", "keypointlab.data")


def register_source(name: str, build: Builder, needs_images: bool) -> None:
    """Add a data source (``data.source: name``), where the dataset is defined."""
    SOURCES.register(name, Source(build, needs_images), module=build.__module__)


def get_source(name: str) -> Source:
    """The source called ``name``; unknown names raise ``KeyError`` listing the known."""
    return SOURCES.get(name)


def build_dataset(data_conf: dict[str, Any], seed: int, progress: bool = True) -> Dataset:
    """The training dataset of the trainer's ``data`` config (``data.source``, default
    ``pairs``), loading ``data.train`` first when the source needs its images."""
    source = get_source(data_conf.get("source", "pairs"))
    images = None
    if source.needs_images:
        images = load_image_cache(
            data_conf["train"],
            data_conf["max_side"],
            progress=progress,
            holdout=data_conf.get("holdout", 0.0),
            holdout_seed=data_conf.get("holdout_seed", 0),
            exclude=data_conf.get("exclude", ()),
        )
    return source.build(data_conf, images, seed)


def _photometric(data_conf: dict[str, Any]) -> Photometric | None:
    p = data_conf.get("photometric")
    return Photometric(**p) if p else None


# ------------------------------------------------------------------------ helpers


def valid_mask(H: np.ndarray, size: tuple[int, int], border: int = VALID_BORDER) -> np.ndarray:
    """float32 ``(h, w)`` mask of the view-1 pixels that come from inside view 0 (same
    ``size``) under ``H``, eroded by ``border`` pixels."""
    ones = np.full(size, 255, np.uint8)
    mask = (warp_image(ones, H, size) == 255).astype(np.uint8)
    if border > 0:
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * border + 1,) * 2)
        mask = cv2.erode(mask, kernel, borderType=cv2.BORDER_CONSTANT, borderValue=1)
    return mask.astype(np.float32)


def keypoint_map(points: np.ndarray, size: tuple[int, int], valid: np.ndarray) -> np.ndarray:
    """float32 ``(h, w)`` map with 1 at ``round(xy)`` of the ``(N, 2)`` points that lie in
    the image and in its ``valid`` region."""
    points = np.asarray(points, np.float64).reshape(-1, 2)
    points = points[inside_image(points, size)]
    ij = np.rint(points).astype(np.int64)
    points = points[valid[ij[:, 1], ij[:, 0]] > 0.5]
    return points_to_map(points, size)


# ---------------------------------------------------------------------- synthetic


class SyntheticTraining(Dataset):
    """Synthetic shapes, homographically and photometrically augmented (MagicPoint).

    Item ``i`` is ``SyntheticShapes(size, seed=seed)[i]`` warped by a homography drawn
    from ``numpy.random.default_rng([seed, i, 1])`` (so the shapes match the plain
    dataset's), its corners warped alike. Items: ``image`` float ``(1, h, w)`` in
    ``[0, 1]``, ``keypoint_map`` and ``valid_mask`` float ``(h, w)``.
    """

    def __init__(
        self,
        size: tuple[int, int] = (120, 160),
        homography: dict | None = None,
        photometric: Photometric | None = None,
        seed: int = 0,
        length: int = 10**9,
        border: int = VALID_BORDER,
    ) -> None:
        self.size = (int(size[0]), int(size[1]))
        self.shapes = SyntheticShapes(self.size, length=length, seed=seed)
        self.homography = homography_config(homography)
        self.photometric = photometric
        self.seed = seed
        self.border = border

    def __len__(self) -> int:
        return len(self.shapes)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        item = self.shapes[index]
        image = (item["image"][0].numpy() * 255.0 + 0.5).astype(np.uint8)
        rng = np.random.default_rng([self.seed, int(index), 1])
        H = sample_homography(self.size, rng, self.homography)
        view = warp_image(image, H, self.size)
        valid = valid_mask(H, self.size, self.border)
        if self.photometric is not None:
            view = self.photometric(view, rng)
        points = warp_points(item["keypoints"].numpy().astype(np.float64), H)
        return {
            "image": torch.from_numpy(view).float().div_(255.0).unsqueeze(0),
            "keypoint_map": torch.from_numpy(keypoint_map(points, self.size, valid)),
            "valid_mask": torch.from_numpy(valid),
        }


def _build_synthetic(conf: dict[str, Any], images: Any, seed: int) -> Dataset:
    return SyntheticTraining(tuple(conf["size"]), conf["homography"], _photometric(conf), seed)


# ------------------------------------------------------------------------- pairs


def _build_pairs(conf: dict[str, Any], images: list[np.ndarray] | None, seed: int) -> Dataset:
    if images is None:
        raise ValueError("the 'pairs' source needs the images of data.train")
    return HomographicPairs(
        images, tuple(conf["size"]), conf["homography"], _photometric(conf), seed, **_views(conf)
    )


def _views(conf: dict[str, Any]) -> dict[str, Any]:
    """The view-making settings of the ``data`` config, as keyword arguments."""
    return {
        "crop_scale": tuple(conf["crop_scale"]),
        "render_from_source": conf["render_from_source"],
    }


# ----------------------------------------------------------------- adapted pairs


def load_labelled_images(
    root: str | Path,
    labels: str | Path,
    max_side: int,
    progress: bool = True,
    holdout: float = 0.0,
    holdout_seed: int = 0,
) -> tuple[list[np.ndarray], list[np.ndarray], list[str]]:
    """The images below ``root`` that have keypoints in the ``labels`` HDF5 file.

    Images are downscaled like :func:`~keypointlab.data.pairs.load_image_cache` (longer
    side ``<= max_side``) and their keypoints, stored in the original image's pixels, are
    mapped alike. Unreadable and unlabelled images are reported and skipped, and so are the
    held-out ones (``holdout``, see :func:`keypointlab.data.pairs.load_image_cache`).

    Returns:
        ``(images, keypoints, keys)``: RGB uint8 images, ``(N, 2)`` float64 xy keypoints in
        their pixels and the images' keys in the labels file.

    Raises:
        FileNotFoundError: ``root`` or ``labels`` is missing, or no image has labels.
        ValueError: a label's stored image size differs from the image's.
    """
    root, labels = Path(root), Path(labels)
    if not labels.is_file():
        raise FileNotFoundError(
            f"{labels}: no such labels file (data.labels; write it with `keypointlab adapt`)"
        )
    paths = holdout_paths(root, holdout, holdout_seed)[0] if holdout else list_images(root)
    images, keypoints, keys, unlabelled = [], [], [], 0
    with h5py.File(labels, "r") as h5:
        for path, image, _ in tqdm(
            read_images(paths), total=len(paths), desc="loading images", disable=not progress
        ):
            if image is None:
                continue
            key = safe_key(path.relative_to(root).as_posix())
            if key not in h5 or "keypoints" not in h5[key]:
                unlabelled += 1
                continue
            group = read_keypoint_group(h5, key, required=("keypoints",))
            kp = np.asarray(group["keypoints"], np.float64).reshape(-1, 2)
            h, w = image.shape[:2]
            if "image_size" in group and tuple(group["image_size"]) != (h, w):
                raise ValueError(
                    f"{labels}: labels of {key} are for an image of size "
                    f"{tuple(group['image_size'])}, but {path} is {(h, w)}"
                )
            s = max_side / max(h, w)
            if s < 1:
                new = (round(h * s), round(w * s))
                image = cv2.resize(image, new[::-1], interpolation=cv2.INTER_AREA)
                kp = warp_points(kp, resize_matrix((h, w), new))
            images.append(image)
            keypoints.append(kp)
            keys.append(key)
    if unlabelled:
        logger.warning("%d image(s) of %s have no labels in %s: skipped", unlabelled, root, labels)
    if not images:
        raise FileNotFoundError(f"{root}: no readable image with labels in {labels}")
    logger.info("loaded %d labelled training images from %s", len(images), root)
    return images, keypoints, keys


class AdaptedPairs(HomographicPairs):
    """:class:`~keypointlab.data.pairs.HomographicPairs` with keypoint labels.

    Args:
        images: decoded RGB images.
        keypoints: per image, ``(N, 2)`` xy pseudo-ground-truth keypoints in its pixels.
        size, homography, photometric, seed, length, crop_scale, render_from_source: as
            for ``HomographicPairs``.
        border: pixels eroded from view 1's valid region.

    Items: ``image0``, ``image1`` float ``(3, h, w)``, ``H_0to1`` ``(3, 3)``,
    ``keypoint_map0``, ``keypoint_map1``, ``valid_mask0`` (ones: view 0 is a crop) and
    ``valid_mask1`` float ``(h, w)``. The labels of view 0 are the image's keypoints
    through the crop; those of view 1 are view 0's warped by ``H_0to1``.
    """

    def __init__(
        self,
        images: list[np.ndarray],
        keypoints: list[np.ndarray],
        size: tuple[int, int] = (120, 160),
        homography: dict | None = None,
        photometric: Photometric | None = None,
        seed: int = 0,
        length: int = 10**9,
        border: int = VALID_BORDER,
        crop_scale: tuple[float, float] = (0.6, 1.0),
        render_from_source: bool = False,
    ) -> None:
        super().__init__(
            images, size, homography, photometric, seed, length, crop_scale, render_from_source
        )
        if len(keypoints) != len(images):
            raise ValueError(f"{len(images)} images but {len(keypoints)} keypoint arrays")
        self.keypoints = [np.asarray(k, np.float64).reshape(-1, 2) for k in keypoints]
        self.border = border

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.seed, int(index)])
        k = int(rng.integers(len(self.images)))
        view0, view1, H, crop = self.views(self.images[k], rng)
        if self.photometric is not None:
            view0, view1 = self.photometric(view0, rng), self.photometric(view1, rng)
        valid0 = np.ones(self.size, np.float32)
        valid1 = valid_mask(H, self.size, self.border)
        kp0 = warp_points(self.keypoints[k], crop)
        kp0 = kp0[inside_image(kp0, self.size)]
        kp1 = warp_points(kp0, H)
        return {
            "image0": to_tensor(view0),
            "image1": to_tensor(view1),
            "H_0to1": torch.from_numpy(H.astype(np.float32)),
            "keypoint_map0": torch.from_numpy(keypoint_map(kp0, self.size, valid0)),
            "keypoint_map1": torch.from_numpy(keypoint_map(kp1, self.size, valid1)),
            "valid_mask0": torch.from_numpy(valid0),
            "valid_mask1": torch.from_numpy(valid1),
        }


def _build_adapted_pairs(conf: dict[str, Any], images: Any, seed: int) -> Dataset:
    if not conf.get("labels"):
        raise ValueError(
            "data.source 'adapted_pairs' needs data.labels: the HDF5 file written by "
            "`keypointlab adapt CHECKPOINT IMAGES_DIR --out labels.h5`"
        )
    images, keypoints, _ = load_labelled_images(
        conf["train"],
        conf["labels"],
        conf["max_side"],
        holdout=conf.get("holdout", 0.0),
        holdout_seed=conf.get("holdout_seed", 0),
    )
    return AdaptedPairs(
        images,
        keypoints,
        tuple(conf["size"]),
        conf["homography"],
        _photometric(conf),
        seed,
        **_views(conf),
    )


register_source("pairs", _build_pairs, needs_images=True)
register_source("synthetic", _build_synthetic, needs_images=False)
register_source("adapted_pairs", _build_adapted_pairs, needs_images=False)
