"""Image pairs with a known relative pose, for the relative-pose benchmark.

Two kinds of folder are read:

- RGB-D frames with poses (7-Scenes or Redwood layout, :mod:`keypointlab.data.depth`):
  pairs of frames ``gap`` list positions apart whose view overlap, computed from depth
  and pose (:func:`keypointlab.geometry.epipolar.depth_overlap`), lies in a range;
  each view also carries its depth map, for depth-checked matching precision;
- multi-view images with Strecha cameras (``images/NNNN.jpg`` and
  ``cameras/NNNN.jpg.camera``, read by :mod:`keypointlab.data.multiview`; a world point
  projects to ``K @ R.T @ (X - t)``): pairs of views ``gap`` indices apart, without depth.

Pairs are deterministic: every candidate is listed in order and, when more than
``max_pairs`` qualify, evenly spaced ones are kept. Images are resized to the evaluation
size ``(h, w)`` exactly (the aspect ratio may change); ``K`` is rescaled with the image,
``x' = (x + 0.5) * s - 0.5`` per axis (:func:`keypointlab.geometry.resize_matrix`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from keypointlab.data.depth import RGBDFrame, load_redwood_frames, load_rgbd_frames, load_view
from keypointlab.data.images import header_size, read_depth, read_image, resize_image
from keypointlab.data.multiview import scene_cameras, scene_images
from keypointlab.errors import InputError
from keypointlab.geometry.epipolar import depth_overlap
from keypointlab.geometry.groundtruth import relative_pose
from keypointlab.geometry.homography import resize_matrix

logger = logging.getLogger(__name__)

RGBD_GAPS = tuple(range(1, 13))  # list positions (7-Scenes here: every 5th frame, so 5..60)
SFM_GAPS = (1, 2, 3)
OVERLAP_RANGE = (0.4, 0.8)
MAX_PAIRS = 100
OVERLAP_SIZE = (60, 80)  # depth maps are compared at this size (h, w) to pick pairs


@dataclass(frozen=True)
class PoseView:
    """One view of a pose dataset.

    Attributes:
        name: unique name within the dataset (the file stem, e.g. ``frame-000010``).
        image: colour image file.
        K: ``(3, 3)`` float64 intrinsics at ``size`` (pixel-centre convention).
        size: ``(h, w)`` that ``K`` belongs to (the depth map's size for RGB-D frames).
        pose: ``(4, 4)`` float64 camera-to-world (``X_world = pose @ X_cam``), metres.
        frame: the RGB-D frame, for its depth; ``None`` for images without depth.
    """

    name: str
    image: Path
    K: np.ndarray
    size: tuple[int, int]
    pose: np.ndarray
    frame: RGBDFrame | None = None


@dataclass(frozen=True)
class PosePair:
    """Two views and the fraction of view 0 seen by view 1 (``None`` without depth)."""

    view0: PoseView
    view1: PoseView
    overlap: float | None = None

    @property
    def T_0to1(self) -> np.ndarray:
        """``(4, 4)`` camera-0 to camera-1 coordinates (``X1 = R X0 + t``)."""
        return relative_pose(self.view0.pose, self.view1.pose)

    @property
    def name(self) -> str:
        return f"{self.view0.name} {self.view1.name}"


def load_view_at(
    view: PoseView, size: tuple[int, int] | None
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """``(image (h, w, 3) uint8 RGB, depth (h, w) float32 metres or None, K (3, 3))`` of
    ``view`` resized to ``size = (h, w)`` (``None``: the size ``K`` belongs to)."""
    target = tuple(size) if size is not None else view.size
    if view.frame is not None:
        return load_view(view.frame, target)
    image = resize_image(read_image(view.image), target)
    return image, None, resize_matrix(view.size, target) @ view.K


# --- RGB-D -------------------------------------------------------------------------------


def rgbd_views(frames: Sequence[RGBDFrame]) -> list[PoseView]:
    """Views of RGB-D frames (``K`` at the depth map's size, from its file header)."""
    views = []
    for f in frames:
        with open(f.depth, "rb") as fh:
            hw = header_size(fh.read(64))
        h, w = hw if hw is not None else read_depth(f.depth, f.depth_scale).shape
        name = f.depth.name.split(".")[0]
        views.append(PoseView(name, f.color, f.K, (h, w), f.pose, f))
    return views


def _small_depth(view: PoseView, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Depth of ``view`` at ``size`` (nearest pixel) and ``K`` rescaled to it."""
    assert view.frame is not None
    depth = read_depth(view.frame.depth, view.frame.depth_scale)
    K = resize_matrix(depth.shape, size) @ view.K
    return cv2.resize(depth, size[::-1], interpolation=cv2.INTER_NEAREST_EXACT), K


def rgbd_pairs(
    views: Sequence[PoseView],
    gaps: Sequence[int] = RGBD_GAPS,
    overlap: tuple[float, float] = OVERLAP_RANGE,
    max_pairs: int = MAX_PAIRS,
    overlap_size: tuple[int, int] = OVERLAP_SIZE,
) -> list[PosePair]:
    """Pairs ``(i, i + gap)`` of RGB-D views whose overlap (view 0 seen by view 1, from
    depth and pose at ``overlap_size``) is within ``overlap``; at most ``max_pairs``,
    evenly spaced over the candidates sorted by ``(i, gap)``."""
    small: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    candidates = []
    for i, v0 in enumerate(views):
        for k in [k for k in small if k < i]:  # only the next max(gaps) views are used
            del small[k]
        js = [i + g for g in gaps if i + g < len(views)]
        if not js:
            continue
        for k in [i, *js]:
            if k not in small:
                small[k] = _small_depth(views[k], overlap_size)
        T = np.stack([relative_pose(v0.pose, views[j].pose) for j in js])
        d1, K1 = (np.stack([small[j][n] for j in js]) for n in (0, 1))
        d0, K0 = small[i]
        overlaps = depth_overlap(d0, d1, K0, K1, T, step=1)
        for j, ov in zip(js, overlaps, strict=True):
            if overlap[0] <= ov <= overlap[1]:
                candidates.append(PosePair(v0, views[j], round(float(ov), 4)))
    return _spread(candidates, max_pairs)


def _spread(pairs: list[PosePair], max_pairs: int) -> list[PosePair]:
    """At most ``max_pairs`` of ``pairs``, evenly spaced, in their order."""
    if len(pairs) <= max_pairs:
        return pairs
    keep = np.unique(np.linspace(0, len(pairs) - 1, max_pairs).round().astype(int))
    return [pairs[k] for k in keep]


# --- Strecha multi-view ------------------------------------------------------------------


def load_strecha_views(folder: str | Path) -> list[PoseView]:
    """Views of a multi-view folder ``images/`` + ``cameras/<image name>.camera``, sorted
    by file name, read by :mod:`keypointlab.data.multiview` (the camera-to-world pose is
    ``[R | centre]``).

    Raises:
        FileNotFoundError: ``cameras/`` is missing.
        InputError: no images, or a camera file is missing or malformed (named in the
            message).
    """
    folder = Path(folder)
    _, images = scene_images(folder)
    cameras = scene_cameras(folder, images)
    if cameras is None:
        raise FileNotFoundError(f"{folder}: the multi-view layout needs cameras/ beside images/")
    views = []
    for image in images:
        cam = cameras[image.name]
        views.append(
            PoseView(image.stem, image, cam.K, cam.size, cam.world_from_cam)
        )
    return views


def sfm_pairs(
    views: Sequence[PoseView], gaps: Sequence[int] = SFM_GAPS, max_pairs: int = MAX_PAIRS
) -> list[PosePair]:
    """Pairs ``(i, i + gap)`` of views; at most ``max_pairs``, evenly spaced."""
    pairs = [
        PosePair(views[i], views[i + g]) for i in range(len(views)) for g in gaps
        if i + g < len(views)
    ]  # fmt: skip
    return _spread(pairs, max_pairs)


# --- any folder --------------------------------------------------------------------------


def load_pose_pairs(folder: str | Path, max_pairs: int = MAX_PAIRS) -> list[PosePair]:
    """The pairs of a 7-Scenes, Redwood or Strecha multi-view folder (found by its files).

    Raises:
        FileNotFoundError: ``folder`` is missing or holds none of the three layouts, or
            none of its views is usable.
        InputError: a camera, intrinsics or pose file is malformed (named in the message),
            or fewer than two views give no pair.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder")
    if (folder / "camera-intrinsics.txt").is_file() or any(folder.glob("frame-*.depth.png")):
        pairs = rgbd_pairs(rgbd_views(load_rgbd_frames(folder)), max_pairs=max_pairs)
    elif (folder / "depth").is_dir() and (folder / "trajectory.log").is_file():
        pairs = rgbd_pairs(rgbd_views(load_redwood_frames(folder)), max_pairs=max_pairs)
    elif (folder / "cameras").is_dir() or (folder / "images").is_dir():
        pairs = sfm_pairs(load_strecha_views(folder), max_pairs=max_pairs)
    else:
        raise FileNotFoundError(
            f"{folder}: not a pose dataset: expected 7-Scenes frames (frame-*.depth.png, "
            "camera-intrinsics.txt), a Redwood folder (depth/, trajectory.log) or "
            "images/ with cameras/ (Strecha .camera files)"
        )
    if not pairs:
        raise InputError(
            f"{folder}: no pair of views qualifies (RGB-D: overlap in "
            f"{OVERLAP_RANGE[0]}..{OVERLAP_RANGE[1]} at frame gaps up to {max(RGBD_GAPS)})"
        )
    return pairs


def pairs_text(pairs: Sequence[PosePair]) -> str:
    """The pair list, one line ``name0 name1 overlap`` each (``-``: no depth)."""
    lines = ["# name0 name1 overlap (fraction of view 0 seen by view 1, from depth + pose)"]
    for p in pairs:
        ov = "-" if p.overlap is None else f"{p.overlap:.4f}"
        lines.append(f"{p.view0.name} {p.view1.name} {ov}")
    return "\n".join(lines) + "\n"
