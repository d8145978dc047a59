"""Multi-view scenes with known cameras (the layout of ``../shared/data/sfm/castle-P30``).

A scene folder holds ``images/NAME`` and, where the cameras are known,
``cameras/NAME.camera`` in Strecha et al.'s format: three rows of ``K``, one row of radial
distortion, three rows of ``R`` (camera to world), one row ``t`` (the camera centre in
world coordinates) and one row ``width height``. A world point ``X`` projects to
``K @ R.T @ (X - t)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from keypointlab.data.images import list_images
from keypointlab.errors import InputError


@dataclass(frozen=True)
class Camera:
    """A known camera: ``K (3, 3)``, ``R (3, 3)`` camera-to-world rotation, ``centre (3,)``
    in world coordinates, ``size`` ``(height, width)`` of its image."""

    K: np.ndarray
    R: np.ndarray
    centre: np.ndarray
    size: tuple[int, int]

    @property
    def cam_from_world(self) -> np.ndarray:
        """``(4, 4)``: world point to camera coordinates, ``R.T @ (X - centre)``."""
        T = np.eye(4)
        T[:3, :3] = self.R.T
        T[:3, 3] = -self.R.T @ self.centre
        return T

    @property
    def world_from_cam(self) -> np.ndarray:
        """``(4, 4)``: the camera-to-world pose ``[R | centre]``."""
        T = np.eye(4)
        T[:3, :3] = self.R
        T[:3, 3] = self.centre
        return T


def read_strecha_camera(path: str | Path) -> Camera:
    """One ``.camera`` file; a malformed one is an :class:`InputError` naming it."""
    path = Path(path)
    try:
        rows = [line.split() for line in path.read_text().splitlines() if line.strip()]
        values = np.array([float(v) for row in rows for v in row], dtype=np.float64)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise InputError(f"{path}: not a Strecha camera file ({exc})") from None
    if values.size != 9 + 3 + 9 + 3 + 2 or not np.isfinite(values).all():
        raise InputError(
            f"{path}: a Strecha camera file holds 26 finite numbers (K, distortion, R, t, "
            f"width height), found {values.size}"
        )
    K, R, t = values[:9].reshape(3, 3), values[12:21].reshape(3, 3), values[21:24]
    width, height = values[24:26]
    if abs(np.linalg.det(R) - 1) > 1e-3 or K[0, 0] <= 0 or K[1, 1] <= 0:
        raise InputError(f"{path}: R is not a rotation or K has no positive focal length")
    return Camera(K=K, R=R, centre=t, size=(int(height), int(width)))


def scene_images(folder: str | Path) -> tuple[Path, list[Path]]:
    """The image folder of a scene (``folder/images`` when present, else ``folder``) and
    its images, sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: no such folder of images")
    root = folder / "images" if (folder / "images").is_dir() else folder
    images = sorted(list_images(root, recursive=False), key=lambda p: p.name)
    if not images:
        raise InputError(f"{root}: no images (jpg, png, ...) in this folder")
    return root, images


def scene_cameras(folder: str | Path, images: list[Path]) -> dict[str, Camera] | None:
    """The known camera of every image (``folder/cameras/NAME.camera``), or ``None`` when the
    scene has no ``cameras/`` folder; a camera missing for some image is an error."""
    cams = Path(folder) / "cameras"
    if not cams.is_dir():
        return None
    out = {}
    for image in images:
        path = cams / f"{image.name}.camera"
        if not path.is_file():
            raise InputError(f"{path}: missing (the scene has cameras/ but none for {image.name})")
        out[image.name] = read_strecha_camera(path)
    return out
