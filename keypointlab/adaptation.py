"""Homographic adaptation (DeTone et al. 2018): pseudo-ground-truth keypoints for real images.

The SuperPoint recipe in KeypointLab (CPU-sized configs, each step one command):

1. **MagicPoint** learns corners on synthetic shapes with exact labels::

       keypointlab train keypointlab/configs/magicpoint.yaml

2. **Homographic adaptation** turns MagicPoint into a labeller of real images: for every
   image of a folder, its detector heatmap is averaged over many random homographies and
   the local maxima become the image's pseudo-ground-truth keypoints, written to HDF5::

       keypointlab adapt runs/magicpoint ../shared/data/train --out runs/magicpoint/labels.h5

3. **SuperPoint** (detector + descriptor) trains jointly on homographic pairs of those
   images, the labels following each view (``data.source: adapted_pairs``)::

       keypointlab train keypointlab/configs/superpoint.yaml \\
           data.labels=runs/magicpoint/labels.h5

4. Optionally repeat: adapt again with the newer detector (step 2 with ``runs/superpoint``)
   and retrain on the new labels (step 3, or MagicPoint with ``data.source=adapted_pairs``),
   as the paper does for two rounds.

Aggregation (one image, :func:`aggregate_heatmap`). The image (downscaled so its longer
side is ``<= max_side``, padded to a multiple of 8) is warped by ``N - 1`` random
homographies ``H_i`` (the identity is the ``N``-th view, as in the reference
implementation). Each warped view's heatmap is masked by the view's valid region (pixels
that come from the image, eroded by ``border`` px) and warped back by ``H_i^-1``; the
aggregated heatmap is the sum of the warped-back heatmaps divided, per pixel, by the sum
of the warped-back masks (the number of views that saw the pixel). Keypoints are then
extracted by :func:`keypointlab.models.superpoint.heatmap_nms_keypoints` (threshold,
max-pool NMS, top-k) and stored in the *original* image's pixel coordinates, so labels do
not depend on the size at which they were computed or are used.

Output: an HDF5 file with one group per image path relative to the folder (the layout of
:mod:`keypointlab.io.h5`): ``keypoints`` ``(N, 2)`` float32 xy, ``scores`` ``(N,)``
float32 and ``image_size`` ``(height, width)``; the settings are file attributes.
"""

from __future__ import annotations

import logging
import os
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from keypointlab import limits
from keypointlab.data.images import list_images, read_images, resize_image, to_gray
from keypointlab.data.pairs import homography_config
from keypointlab.data.sources import VALID_BORDER
from keypointlab.errors import LimitError
from keypointlab.geometry import HomographyConfig, sample_homography, warp_image_torch, warp_points
from keypointlab.geometry.homography import resize_matrix
from keypointlab.io.h5 import safe_key, write_keypoint_group
from keypointlab.models.loading import load_run
from keypointlab.models.superpoint import cell_maxima, heatmap_nms_keypoints

logger = logging.getLogger(__name__)

# Milder than the training pairs (after rpautrat/SuperPoint's adaptation settings: scaling
# and perspective 0.1; a larger patch suits the small images used on CPU).
ADAPTATION_HOMOGRAPHY = HomographyConfig(
    patch_ratio=0.7,
    perspective_amplitude_x=0.1,
    perspective_amplitude_y=0.1,
    scaling_amplitude=0.1,
    max_angle=np.pi / 4,
)


@dataclass
class AdaptationReport:
    """What :func:`homographic_adaptation` did."""

    written: int = 0
    keypoints: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)


def load_trained_model(path: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """The model of a training checkpoint or run folder, in eval mode (see
    :func:`keypointlab.models.loading.load_run`)."""
    return load_run(path, device).model


def _erode(mask: torch.Tensor, border: int) -> torch.Tensor:
    if border <= 0:
        return mask
    return 1.0 - F.max_pool2d(1.0 - mask, 2 * border + 1, stride=1, padding=border)


@torch.inference_mode()
def aggregate_heatmap(
    net: nn.Module,
    image: torch.Tensor,
    homographies: torch.Tensor,
    border: int = VALID_BORDER,
    batch_size: int = 8,
) -> torch.Tensor:
    """The heatmap of ``image`` averaged over the identity and ``homographies``.

    Args:
        net: a model whose output has ``heatmap`` ``(B, 1, H, W)`` (MagicPoint, SuperPoint).
        image: ``(1, C, H, W)`` image, ``H`` and ``W`` multiples of the network's cell.
        homographies: ``(K, 3, 3)`` maps from image pixels to warped-view pixels.
        border: pixels eroded from each warped view's valid region.
        batch_size: warped views per forward pass.

    Returns:
        ``(H, W)`` aggregated heatmap.
    """
    size = tuple(image.shape[-2:])
    out = net({"image": image})
    if "heatmap" not in out:
        raise ValueError(
            f"{type(net).__name__} has no 'heatmap' output: homographic adaptation needs a "
            "detector with a dense heatmap (magicpoint or superpoint)"
        )
    total = out["heatmap"][0, 0].float()
    count = torch.ones_like(total)
    homographies = homographies.to(image.device, torch.float32)
    for start in range(0, len(homographies), batch_size):
        Hs = homographies[start : start + batch_size]
        n = len(Hs)
        warped = warp_image_torch(image.expand(n, -1, -1, -1), Hs, size)
        heat = net({"image": warped})["heatmap"].float()
        ones = torch.ones(n, 1, *size, device=image.device)
        valid = _erode((warp_image_torch(ones, Hs, size) > 0.999).float(), border)
        H_inv = torch.linalg.inv(Hs)
        total += warp_image_torch(heat * valid, H_inv, size).sum(dim=0)[0]
        count += warp_image_torch(valid, H_inv, size).sum(dim=0)[0]
    return total / count


class AdaptedDetector(nn.Module):
    """A heatmap detector run with homographic adaptation at test time.

    Each image's heatmap is :func:`aggregate_heatmap` over the identity and
    ``n_homographies - 1`` random homographies (drawn from a generator seeded with
    ``seed`` for every image, so results do not depend on the order of the images), then
    reduced to the dense outputs of the wrapped network (per-cell best pixel, see
    :func:`keypointlab.models.superpoint.cell_maxima`), so
    :class:`keypointlab.features.learned.LearnedExtractor` runs it like any model.
    Descriptors are the wrapped network's on the unwarped image.

    This measures what adaptation does to a detector: the same network with and without
    it, on the same protocol (``benchmarks/adaptation_repeatability.py``).
    """

    def __init__(
        self,
        net: nn.Module,
        n_homographies: int = 20,
        homography: HomographyConfig | dict | None = None,
        seed: int = 0,
        batch_size: int = 8,
    ) -> None:
        super().__init__()
        self.net = net
        self.n_homographies = n_homographies
        self.homography = homography_config(
            homography if homography is not None else ADAPTATION_HOMOGRAPHY
        )
        self.seed = seed
        self.batch_size = batch_size

    def forward(self, data: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        images = data["image"]
        size = tuple(images.shape[-2:])
        out = dict(self.net(data))
        heatmaps = []
        for image in images:
            rng = np.random.default_rng(self.seed)
            Hs = [
                sample_homography(size, rng, self.homography)
                for _ in range(max(0, self.n_homographies - 1))
            ]
            Hs = torch.from_numpy(np.stack(Hs)) if Hs else torch.zeros(0, 3, 3)
            heat = aggregate_heatmap(self.net, image[None], Hs, batch_size=self.batch_size)
            heatmaps.append(heat[None, None])
        heatmap = torch.cat(heatmaps).to(out["heatmap"].dtype)
        out.update(
            heatmap=heatmap, **cell_maxima(heatmap, images.shape[-1] // out["scores"].shape[-1])
        )
        return out


def adapt_image(
    net: nn.Module,
    image: np.ndarray,
    rng: np.random.Generator,
    n_homographies: int = 20,
    homography: HomographyConfig | dict | None = None,
    threshold: float = 0.015,
    nms_radius: int = 4,
    max_keypoints: int = 1000,
    border: int = 4,
    max_side: int = 320,
    device: str | torch.device = "cpu",
    batch_size: int = 8,
) -> tuple[np.ndarray, np.ndarray]:
    """Pseudo-ground-truth keypoints of one RGB (or grey) uint8 image.

    Returns:
        ``(keypoints, scores)``: ``(N, 2)`` float32 xy in ``image``'s own pixels and ``(N,)``
        float32 aggregated scores, by decreasing score.
    """

    cfg = homography_config(homography if homography is not None else ADAPTATION_HOMOGRAPHY)
    grey = to_gray(image)
    h0, w0 = grey.shape
    s = max_side / max(h0, w0) if max_side > 0 else 1.0
    size = (max(1, round(h0 * s)), max(1, round(w0 * s))) if s < 1 else (h0, w0)
    grey = resize_image(grey, size)
    x = torch.from_numpy(np.ascontiguousarray(grey)).float().div_(255.0)[None, None]
    cell = 8
    ph, pw = (-size[0]) % cell, (-size[1]) % cell
    x = F.pad(x, (0, pw, 0, ph), mode="replicate").to(device)
    padded = tuple(x.shape[-2:])
    views = min(batch_size, max(1, n_homographies))
    limits.check_pixels(
        views * padded[0], padded[1], f"image of size {h0}x{w0}: a batch of {views} views of"
    )
    Hs = [sample_homography(padded, rng, cfg) for _ in range(max(0, n_homographies - 1))]
    Hs = torch.from_numpy(np.stack(Hs)) if Hs else torch.zeros(0, 3, 3, dtype=torch.float64)
    heat = aggregate_heatmap(net, x, Hs, border=VALID_BORDER, batch_size=batch_size)
    heat = heat[: size[0], : size[1]].cpu()
    kp, scores = heatmap_nms_keypoints(heat, threshold, nms_radius, max_keypoints, border)
    kp = kp.double().numpy()
    if size != (h0, w0):
        kp = warp_points(kp, np.linalg.inv(resize_matrix((h0, w0), size)))
    return kp.astype(np.float32).reshape(-1, 2), scores.float().numpy()


def homographic_adaptation(
    net: nn.Module,
    images_dir: str | Path,
    out_h5: str | Path,
    n_homographies: int = 20,
    homography: HomographyConfig | dict | None = None,
    threshold: float = 0.015,
    nms_radius: int = 4,
    max_keypoints: int = 1000,
    border: int = 4,
    max_side: int = 320,
    device: str | torch.device = "cpu",
    batch_size: int = 8,
    seed: int = 0,
    progress: bool = True,
) -> AdaptationReport:
    """Label every image below ``images_dir`` with homographic adaptation into ``out_h5``.

    Args:
        net: MagicPoint or SuperPoint (any model returning ``heatmap``); run in eval mode.
        images_dir: folder of images (searched recursively).
        out_h5: output HDF5 file (written to ``<out_h5>.partial``, renamed when done).
        n_homographies: views per image, the identity included. The paper uses 100; the
            default 20 keeps CPU time near 4 s per image at ``max_side`` 320 with the
            CPU-sized configs (a few hundred images in well under an hour).
        homography: sampler of the random views (default :data:`ADAPTATION_HOMOGRAPHY`).
        threshold: smallest aggregated score kept as a keypoint.
        nms_radius: non-maximum suppression radius in pixels.
        max_keypoints: keypoints kept per image, by score (0: all).
        border: keypoints closer than this to the image edge are dropped.
        max_side: images are downscaled so their longer side is at most this (0: never);
            keypoints are stored in original pixels either way.
        device: torch device.
        batch_size: warped views per forward pass.
        seed: image ``key`` uses ``numpy.random.default_rng([seed, crc32(key)])``, so a
            rerun (or a partial folder) gives the same labels.
        progress: show a progress bar.

    Returns:
        An :class:`AdaptationReport`; unreadable files are listed in ``skipped``.

    Raises:
        FileNotFoundError: ``images_dir`` is missing or has no image files.
        InputError: a count is out of range (``n_homographies`` 1 to
            :data:`keypointlab.limits.MAX_HOMOGRAPHIES`, others not negative); an image
            whose batch of views exceeds the pixel limit is skipped and reported.
    """
    images_dir, out_h5 = Path(images_dir), Path(out_h5)
    n_homographies = limits.check_count(
        n_homographies, "num_homographies", 1, limits.MAX_HOMOGRAPHIES, "a network pass each"
    )
    max_keypoints = limits.check_count(max_keypoints, "max_keypoints (0: all)", 0)
    nms_radius = limits.check_count(nms_radius, "nms_radius", 0)
    max_side = limits.check_count(max_side, "max_side (0: never downscale)", 0)
    batch_size = limits.check_count(batch_size, "batch_size")
    paths = list_images(images_dir)
    if not paths:
        raise FileNotFoundError(f"{images_dir}: no image files found")
    cfg = homography_config(homography if homography is not None else ADAPTATION_HOMOGRAPHY)
    settings: dict[str, Any] = {
        "n_homographies": n_homographies,
        "threshold": threshold,
        "nms_radius": nms_radius,
        "max_keypoints": max_keypoints,
        "border": border,
        "max_side": max_side,
        "seed": seed,
        "homography": str(asdict(cfg)),
        "images_dir": str(images_dir),
    }
    out_h5.parent.mkdir(parents=True, exist_ok=True)
    partial = out_h5.with_name(out_h5.name + ".partial")
    partial.unlink(missing_ok=True)
    report = AdaptationReport()
    was_training = net.training
    net.eval()
    try:
        with h5py.File(partial, "w") as h5:
            h5.attrs.update(settings)
            bar = tqdm(read_images(paths), total=len(paths), desc="adapt", disable=not progress)
            for path, image, error in bar:
                if image is None:
                    report.skipped.append((str(path), error or "unreadable"))
                    continue
                key = safe_key(path.relative_to(images_dir).as_posix())
                rng = np.random.default_rng([seed, zlib.crc32(key.encode())])
                try:
                    kp, scores = adapt_image(
                        net,
                        image,
                        rng,
                        n_homographies,
                        cfg,
                        threshold,
                        nms_radius,
                        max_keypoints,
                        border,
                        max_side,
                        device,
                        batch_size,
                    )
                except LimitError as exc:  # e.g. a large image with max_side 0
                    report.skipped.append((str(path), str(exc)))
                    continue
                arrays = {"keypoints": kp, "scores": scores}
                write_keypoint_group(h5, key, arrays, image.shape[:2])
                report.written += 1
                report.keypoints += len(kp)
                bar.set_postfix(kp=len(kp))
        os.replace(partial, out_h5)
    finally:
        net.train(was_training)
    for path, reason in report.skipped:
        logger.warning("adaptation skipped %s: %s", path, reason)
    return report
