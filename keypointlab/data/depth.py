"""RGB-D frames with camera poses, and training pairs with depth + pose ground truth.

Two layouts are read (see ``/work/shared/data/depth/README.md``):

- 7-Scenes (:func:`load_rgbd_frames`): ``frame-NNNNNN.color.jpg`` (or ``.png``),
  ``frame-NNNNNN.depth.png`` (16-bit millimetres, 0 = missing), ``frame-NNNNNN.pose.txt``
  (4x4 camera-to-world, metres) and one ``camera-intrinsics.txt`` (3x3);
- Redwood (:func:`load_redwood_frames`): ``color/NNNNN.jpg``, ``depth/NNNNN.png`` and a
  ``.log`` trajectory (a line ``i j n`` then a 4x4 camera-to-world matrix, per frame).

:class:`DepthPairs` makes pairs of nearby frames; like
:class:`keypointlab.data.pairs.HomographicPairs`, item ``i`` is a pure function of
``(seed, i)``. Its items carry what :class:`keypointlab.geometry.DepthGroundTruth` needs
(``depth0, depth1, K0, K1, T_0to1``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from keypointlab.data.images import read_depth, read_image, resize_image
from keypointlab.data.pairs import to_tensor
from keypointlab.data.sources import register_source
from keypointlab.geometry.groundtruth import relative_pose
from keypointlab.geometry.homography import resize_matrix

logger = logging.getLogger(__name__)

PRIMESENSE_K = np.array([[525.0, 0, 319.5], [0, 525.0, 239.5], [0, 0, 1]])  # Redwood default


@dataclass(frozen=True)
class RGBDFrame:
    """One RGB-D frame.

    Attributes:
        color: colour image file.
        depth: 16-bit depth PNG (``depth_scale`` units per metre, 0 = missing).
        K: ``(3, 3)`` float64 intrinsics of the depth map (pixel-centre convention).
        pose: ``(4, 4)`` float64 camera-to-world transform, metres (``X_world = pose @ X_cam``).
        depth_scale: depth units per metre.
    """

    color: Path
    depth: Path
    K: np.ndarray
    pose: np.ndarray
    depth_scale: float = 1000.0


def _matrix(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """A whitespace-separated float64 matrix of ``shape`` from a text file, or raise."""
    try:
        m = np.loadtxt(path, dtype=np.float64, ndmin=2)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: cannot read a {shape[0]}x{shape[1]} matrix ({exc})") from exc
    if m.shape != shape:
        raise ValueError(f"{path}: expected a {shape[0]}x{shape[1]} matrix, got {m.shape}")
    return m


def _is_pose(T: np.ndarray) -> bool:
    """Finite rigid 4x4 (7-Scenes marks lost tracking with non-finite poses)."""
    return bool(np.all(np.isfinite(T)) and np.allclose(T[3], [0, 0, 0, 1]))


def load_rgbd_frames(folder: str | Path) -> list[RGBDFrame]:
    """The frames of a 7-Scenes folder, sorted by frame number.

    Frames without a colour image or pose file, or whose pose is not a finite rigid
    transform, are skipped with a warning.

    Raises:
        FileNotFoundError: ``folder`` or its ``camera-intrinsics.txt`` is missing, or it
            holds no frame.
        ValueError: the intrinsics are not a 3x3 matrix.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder")
    intrinsics = folder / "camera-intrinsics.txt"
    if not intrinsics.is_file():
        raise FileNotFoundError(f"{intrinsics}: missing (7-Scenes layout needs it)")
    K = _matrix(intrinsics, (3, 3))
    frames = []
    for depth in sorted(folder.glob("frame-*.depth.png")):
        stem = depth.name[: -len(".depth.png")]
        colors = [folder / f"{stem}.color{ext}" for ext in (".jpg", ".png")]
        color = next((c for c in colors if c.is_file()), None)
        pose_file = folder / f"{stem}.pose.txt"
        pose = _matrix(pose_file, (4, 4)) if pose_file.is_file() else None
        if color is None or pose is None or not _is_pose(pose):
            logger.warning("skipping %s: no colour image or no valid pose", folder / stem)
            continue
        frames.append(RGBDFrame(color, depth, K, pose))
    if not frames:
        raise FileNotFoundError(f"{folder}: no 7-Scenes frames (frame-*.depth.png)")
    return frames


def _read_log(path: Path) -> dict[int, np.ndarray]:
    """Poses of a Redwood ``.log`` file by frame number (the first number of each header)."""
    rows = [line.split() for line in path.read_text().splitlines() if line.strip()]
    if len(rows) % 5:
        raise ValueError(f"{path}: expected blocks of 5 lines (header + 4x4), got {len(rows)}")
    poses = {}
    for k in range(0, len(rows), 5):
        poses[int(rows[k][0])] = np.array(rows[k + 1 : k + 5], dtype=np.float64)
    return poses


def load_redwood_frames(
    folder: str | Path, log: str = "trajectory.log", K: np.ndarray = PRIMESENSE_K
) -> list[RGBDFrame]:
    """The frames of a Redwood folder (``color/``, ``depth/``, ``log``), in file order.

    The ``n``-th depth file (sorted) takes the pose whose header starts with ``n``; its colour
    image is the colour file with the same stem. Frames without both are skipped.

    Raises:
        FileNotFoundError: ``folder``, ``depth/`` or the log is missing, or no frame is left.
    """
    folder = Path(folder)
    log_path = folder / log
    if not (folder / "depth").is_dir() or not log_path.is_file():
        raise FileNotFoundError(f"{folder}: Redwood layout needs depth/ and {log}")
    poses = _read_log(log_path)
    frames = []
    for n, depth in enumerate(sorted((folder / "depth").glob("*.png"))):
        color = folder / "color" / f"{depth.stem}.jpg"
        pose = poses.get(n)
        if not color.is_file() or pose is None or not _is_pose(pose):
            logger.warning("skipping %s: no colour image or no valid pose", depth)
            continue
        frames.append(RGBDFrame(color, depth, np.asarray(K, np.float64), pose))
    if not frames:
        raise FileNotFoundError(f"{folder}: no Redwood frames")
    return frames


def load_view(
    frame: RGBDFrame, size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(image (h, w, 3) uint8 RGB, depth (h, w) float32 metres, K (3, 3) float64)`` of
    ``frame`` resized to ``size = (h, w)``.

    The image is resized with area interpolation, the depth with the nearest pixel (no
    depths mixed across edges), and ``K`` follows the depth map's resize (pixel centres
    map as ``x' = (x + 0.5) * s - 0.5``). The colour image is taken to cover the depth
    map's field of view (7-Scenes: only roughly aligned, a few pixels).
    """
    h, w = size
    depth = read_depth(frame.depth, frame.depth_scale)
    K = resize_matrix(depth.shape, size) @ frame.K
    depth = cv2.resize(depth, (w, h), interpolation=cv2.INTER_NEAREST_EXACT)
    return resize_image(read_image(frame.color), size), depth, K


def _f32(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a, np.float32))


class DepthPairs(Dataset):
    """Pairs of nearby RGB-D frames with depth + pose ground truth.

    Args:
        frames: the frames of one sequence, in temporal order (e.g. :func:`load_rgbd_frames`).
        size: ``(h, w)`` both views are resized to.
        max_gap: view 1 is at most this many frames (list positions) from view 0, before
            or after it.
        seed: base seed; item ``i`` depends only on ``(seed, i)``.
        length: nominal length (``None``: the number of frames); any index is valid.

    Items are dicts: ``image0``, ``image1`` float32 ``(3, h, w)`` in ``[0, 1]``; ``depth0``,
    ``depth1`` float32 ``(h, w)`` metres (0 = missing); ``K0``, ``K1`` float32 ``(3, 3)``;
    ``T_0to1`` float32 ``(4, 4)`` from camera-0 to camera-1 coordinates.
    """

    def __init__(
        self,
        frames: list[RGBDFrame],
        size: tuple[int, int] = (240, 320),
        max_gap: int = 10,
        seed: int = 0,
        length: int | None = None,
    ) -> None:
        if len(frames) < 2:
            raise ValueError(f"DepthPairs needs at least two frames, got {len(frames)}")
        if max_gap < 1:
            raise ValueError(f"max_gap must be >= 1, got {max_gap}")
        self.frames = list(frames)
        self.size = (int(size[0]), int(size[1]))
        self.max_gap = int(max_gap)
        self.seed = seed
        self.length = len(self.frames) if length is None else int(length)

    def __len__(self) -> int:
        return self.length

    def pair(self, index: int) -> tuple[int, int]:
        """Frame positions ``(i, j)``, ``0 < |i - j| <= max_gap``, of item ``index``."""
        rng = np.random.default_rng([self.seed, int(index)])
        n = len(self.frames)
        i = int(rng.integers(n))
        others = list(range(max(0, i - self.max_gap), min(n, i + self.max_gap + 1)))
        others.remove(i)
        return i, others[int(rng.integers(len(others)))]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        i, j = self.pair(index)
        (im0, d0, K0), (im1, d1, K1) = (load_view(self.frames[k], self.size) for k in (i, j))
        T = relative_pose(self.frames[i].pose, self.frames[j].pose)
        return {
            "image0": to_tensor(im0),
            "image1": to_tensor(im1),
            "depth0": _f32(d0),
            "depth1": _f32(d1),
            "K0": _f32(K0),
            "K1": _f32(K1),
            "T_0to1": _f32(T),
        }


def _build_depth_pairs(conf: dict, images: object, seed: int) -> Dataset:
    """``data.source: depth_pairs``: :class:`DepthPairs` of the 7-Scenes-layout folder
    ``data.train`` at ``data.size``."""
    return DepthPairs(load_rgbd_frames(conf["train"]), tuple(conf["size"]), seed=seed)


register_source("depth_pairs", _build_depth_pairs, needs_images=False)
