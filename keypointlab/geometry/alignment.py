"""Similarity alignment of two point sets (Umeyama 1991), e.g. estimated camera centres onto
ground-truth ones before their error is measured; the upright frame of a model that has no
ground truth."""

from __future__ import annotations

import numpy as np


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Scale ``s``, rotation ``R (3, 3)`` and translation ``t (3,)`` minimising
    ``sum |dst_i - (s R src_i + t)|^2`` over corresponding points ``(N, 3)``, ``N >= 3``
    not all on one line (least squares, in closed form)."""
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 3 or len(src) < 3:
        raise ValueError(
            f"similarity_transform: two (N>=3, 3) arrays, got {src.shape}, {dst.shape}"
        )
    mu_s, mu_d = src.mean(0), dst.mean(0)
    a, b = src - mu_s, dst - mu_d
    var = (a**2).sum() / len(src)
    if var <= 0:
        raise ValueError("similarity_transform: the source points all coincide")
    u, d, vt = np.linalg.svd(b.T @ a / len(src))
    sign = np.eye(3)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[2, 2] = -1
    R = u @ sign @ vt
    s = float(np.trace(np.diag(d) @ sign) / var)
    return s, R, mu_d - s * R @ mu_s


def aligned_errors(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """``(N,)`` distances between ``dst`` and ``src`` after the similarity that best maps
    ``src`` onto ``dst`` (in ``dst``'s units)."""
    s, R, t = similarity_transform(src, dst)
    return np.linalg.norm(dst - (s * np.asarray(src, np.float64) @ R.T + t), axis=1)


def upright_rotation(world_from_cam: np.ndarray) -> np.ndarray:
    """``R (3, 3)`` that turns a model without ground truth upright, for a picture.

    Photos are taken upright, so the model's up is the mean of the cameras' up directions
    (minus their y axes in the world: image rows go down); it becomes the third axis. The
    second is the mean viewing direction made horizontal, the first the direction to its
    right. ``world_from_cam``: ``(M, 3, 3)`` camera-to-world rotations; apply the result as
    ``points @ R.T``.
    """
    rotations = np.asarray(world_from_cam, np.float64)
    if rotations.ndim != 3 or rotations.shape[1:] != (3, 3) or not len(rotations):
        raise ValueError(f"upright_rotation: (M>=1, 3, 3) rotations, got {rotations.shape}")
    up = -rotations[:, :, 1].mean(0)
    view = rotations[:, :, 2].mean(0)
    if np.linalg.norm(up) < 1e-9:
        raise ValueError("upright_rotation: the cameras' up directions cancel out")
    z = up / np.linalg.norm(up)
    y = view - (view @ z) * z
    if np.linalg.norm(y) < 1e-9:  # looking straight up or down: any horizontal axis
        y = np.cross(z, [1.0, 0, 0]) if abs(z[0]) < 0.9 else np.cross(z, [0, 1.0, 0])
    y = y / np.linalg.norm(y)
    return np.stack([np.cross(y, z), y, z])
