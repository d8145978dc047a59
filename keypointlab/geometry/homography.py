"""Homographies: sampling, point and image warping, validity, resizing, corner error.

Convention used everywhere in KeypointLab: a homography ``H_0to1`` maps pixel coordinates
``(x, y)`` of view 0 to view 1. Pixel coordinates put the centre of the top-left pixel at
``(0, 0)`` and the centre of the bottom-right pixel at ``(W - 1, H - 1)`` (OpenCV's
convention), so a point is inside an image of size ``(h, w)`` when
``0 <= x <= w - 1`` and ``0 <= y <= h - 1``.

Every function here accepts numpy arrays; the point functions also accept torch tensors
(batched or not) so that training code and evaluation share one implementation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import torch

ArrayLike = Any  # numpy.ndarray or torch.Tensor


class InvalidHomographyError(ValueError):
    """A homography that is not a finite, invertible 3x3 matrix."""


def _fmt(H: np.ndarray) -> str:
    """A matrix on one line, for error messages."""
    return np.array2string(np.asarray(H), precision=4, separator=",").replace("\n", "")


def check_homography(H: np.ndarray, name: str = "homography") -> np.ndarray:
    """Return ``H`` as a float64 (3, 3) array, or raise naming ``name``.

    Raises:
        InvalidHomographyError: wrong shape, a non-finite entry, or a (near) singular matrix.
    """
    H = np.asarray(H, dtype=np.float64)
    if H.shape != (3, 3):
        raise InvalidHomographyError(f"{name}: expected a 3x3 matrix, got shape {H.shape}")
    if not np.all(np.isfinite(H)):
        raise InvalidHomographyError(f"{name}: has non-finite entries {_fmt(H)}")
    scale = np.abs(H).max()
    if scale == 0 or abs(np.linalg.det(H / scale)) < 1e-12:
        raise InvalidHomographyError(f"{name}: is singular (determinant ~ 0) {_fmt(H)}")
    return H


def warp_points(points: ArrayLike, H: ArrayLike, eps: float = 1e-8) -> ArrayLike:
    """Map xy points through a homography.

    Args:
        points: ``(N, 2)`` or batched ``(B, N, 2)`` xy coordinates (numpy or torch).
        H: ``(3, 3)`` or ``(B, 3, 3)`` homography mapping the points' view to the target view.
        eps: guard against division by zero for points sent to infinity.

    Returns:
        Warped points with the shape and type of ``points``.
    """
    if isinstance(points, torch.Tensor):
        H = torch.as_tensor(H, dtype=points.dtype, device=points.device)
        ones = torch.ones_like(points[..., :1])
        hom = torch.cat([points, ones], dim=-1) @ H.transpose(-1, -2)
        z = hom[..., 2:]
        z = torch.where(z.abs() < eps, torch.full_like(z, eps), z)
        return hom[..., :2] / z
    points = np.asarray(points, dtype=np.float64)
    H = np.asarray(H, dtype=np.float64)
    hom = np.concatenate([points, np.ones_like(points[..., :1])], axis=-1) @ np.swapaxes(H, -1, -2)
    z = hom[..., 2:]
    z = np.where(np.abs(z) < eps, eps, z)
    return hom[..., :2] / z


def inside_image(points: ArrayLike, size: tuple[int, int]) -> ArrayLike:
    """Boolean mask of points with ``0 <= x <= w - 1`` and ``0 <= y <= h - 1``.

    Args:
        points: ``(..., 2)`` xy coordinates.
        size: image size as ``(height, width)``.
    """
    h, w = size
    x, y = points[..., 0], points[..., 1]
    return (x >= 0) & (x <= w - 1) & (y >= 0) & (y <= h - 1)


def warp_image(
    image: np.ndarray, H_0to1: np.ndarray, size: tuple[int, int], border_value: float = 0
) -> np.ndarray:
    """Warp view 0 into view 1 of size ``(height, width)`` (bilinear, constant border)."""
    h, w = size
    return cv2.warpPerspective(
        image,
        np.asarray(H_0to1, dtype=np.float64),
        (w, h),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=border_value,
    )


def warp_image_torch(
    image: torch.Tensor, H_0to1: torch.Tensor, size: tuple[int, int]
) -> torch.Tensor:
    """Differentiable batched warp of ``(B, C, H, W)`` images into view 1 of ``size``.

    Uses the same pixel-centre convention as :func:`warp_points`; pixels that come from
    outside view 0 are zero.
    """
    b = image.shape[0]
    h, w = size
    h0, w0 = image.shape[-2:]
    ys, xs = torch.meshgrid(
        torch.arange(h, dtype=image.dtype, device=image.device),
        torch.arange(w, dtype=image.dtype, device=image.device),
        indexing="ij",
    )
    grid = torch.stack([xs, ys], dim=-1).reshape(1, -1, 2).expand(b, -1, -1)
    H_1to0 = torch.linalg.inv(H_0to1.to(image.dtype))
    src = warp_points(grid, H_1to0).reshape(b, h, w, 2)
    norm = torch.tensor(
        [2.0 / max(w0 - 1, 1), 2.0 / max(h0 - 1, 1)], dtype=image.dtype, device=image.device
    )
    src = src * norm - 1.0
    return torch.nn.functional.grid_sample(
        image, src, mode="bilinear", padding_mode="zeros", align_corners=True
    )


def image_corners(size: tuple[int, int]) -> np.ndarray:
    """The four corner pixel centres ``(0,0), (w-1,0), (0,h-1), (w-1,h-1)`` as ``(4, 2)``."""
    h, w = size
    return np.array([[0, 0], [w - 1, 0], [0, h - 1], [w - 1, h - 1]], dtype=np.float64)


def corner_error(H_est: np.ndarray | None, H_true: np.ndarray, size: tuple[int, int]) -> float:
    """Mean distance between image corners warped by an estimate and by the truth.

    Args:
        H_est: estimated ``H_0to1``, or ``None`` for a failed estimate (gives ``inf``).
        H_true: ground-truth ``H_0to1``.
        size: ``(height, width)`` of view 0, whose corners are warped.
    """
    if H_est is None or not np.all(np.isfinite(H_est)):
        return math.inf
    corners = image_corners(size)
    d = np.linalg.norm(warp_points(corners, H_est) - warp_points(corners, H_true), axis=1)
    return float(d.mean())


def scale_homography(
    H_0to1: np.ndarray, scale0: tuple[float, float], scale1: tuple[float, float]
) -> np.ndarray:
    """Update ``H_0to1`` after view 0 is scaled by ``(sx0, sy0)`` and view 1 by ``(sx1, sy1)``.

    Returns ``diag(sx1, sy1, 1) @ H @ diag(1/sx0, 1/sy0, 1)`` (the protocol's rule), so that a
    correspondence ``x1 = H x0`` becomes ``s1 * x1 = H' (s0 * x0)`` exactly.
    """
    S0_inv = np.diag([1.0 / scale0[0], 1.0 / scale0[1], 1.0])
    S1 = np.diag([scale1[0], scale1[1], 1.0])
    return S1 @ np.asarray(H_0to1, dtype=np.float64) @ S0_inv


def resize_matrix(old_size: tuple[int, int], new_size: tuple[int, int]) -> np.ndarray:
    """3x3 map from the pixels of an image of ``old_size = (h, w)`` to the same image
    resized to ``new_size`` by OpenCV: pixel centres map as ``x' = (x + 0.5) * s - 0.5``."""
    sx, sy = new_size[1] / old_size[1], new_size[0] / old_size[0]
    return np.array([[sx, 0, 0.5 * sx - 0.5], [0, sy, 0.5 * sy - 0.5], [0, 0, 1]], np.float64)


def resize_scale(old_size: tuple[int, int], new_size: tuple[int, int]) -> tuple[float, float]:
    """``(sx, sy)`` that takes an image of ``old_size`` to ``new_size`` (both ``(h, w)``)."""
    return new_size[1] / old_size[1], new_size[0] / old_size[0]


def rotation_canvas(size: tuple[int, int], angle: float) -> tuple[np.ndarray, tuple[int, int]]:
    """Rotate an image of ``size = (h, w)`` so that the direction ``angle`` points along +x.

    ``angle`` is in radians, measured like ``atan2(dy, dx)`` in pixel coordinates (y down).
    Returns the 3x3 map from the image's pixels to the rotated canvas and the canvas size
    ``(h, w)``, the smallest that holds the whole rotated image.
    """
    c, s = math.cos(angle), math.sin(angle)
    R = np.array([[c, s], [-s, c]])  # rotation by -angle
    corners = image_corners(size) @ R.T
    lo = corners.min(axis=0)
    hi = corners.max(axis=0)
    H = np.eye(3)
    H[:2, :2] = R
    H[:2, 2] = -lo
    w, h = (int(math.ceil(v - 1e-6)) + 1 for v in hi - lo)
    return H, (h, w)


@dataclass(frozen=True)
class HomographyConfig:
    """Parameters of :func:`sample_homography`; defaults follow SuperPoint and KP2D.

    The sampler starts from a centred square patch of view 0 whose side is ``patch_ratio``
    of the image, distorts it, and returns the homography that maps this patch onto the
    whole of view 1, so view 1 is a zoomed, rotated, perspective-distorted crop of view 0.

    Attributes:
        perspective: apply a perspective distortion.
        perspective_amplitude_x: maximum horizontal corner displacement, as a fraction of
            the image (truncated normal, sigma = amplitude / 2).
        perspective_amplitude_y: the same, vertically.
        scaling: apply a random zoom.
        scaling_amplitude: std of the log-free scale factor around 1 (truncated normal).
        max_scale: largest zoom-out factor tried (scale in ``[1/max_scale, max_scale]`` is
            clipped to keep the patch inside view 0 unless ``allow_artifacts``).
        rotation: apply a random in-plane rotation.
        max_angle: maximum rotation magnitude in radians.
        translation: translate the patch randomly inside the free margin.
        translation_overflow: fraction of the image the patch may move beyond the margin
            (only with ``allow_artifacts``).
        patch_ratio: side of the starting patch relative to the image (0 < r <= 1).
        allow_artifacts: let the patch leave view 0 (view 1 then has black borders).
        n_tries: rejection-sampling budget before falling back to a milder sample.
    """

    perspective: bool = True
    perspective_amplitude_x: float = 0.2
    perspective_amplitude_y: float = 0.2
    scaling: bool = True
    scaling_amplitude: float = 0.2
    max_scale: float = 2.0
    rotation: bool = True
    max_angle: float = math.pi / 4
    translation: bool = True
    translation_overflow: float = 0.0
    patch_ratio: float = 0.85
    allow_artifacts: bool = False
    n_tries: int = 50


def _truncnorm(rng: np.random.Generator, sigma: float, bound: float) -> float:
    """A normal sample with std ``sigma`` truncated to ``[-bound, bound]`` (by rejection)."""
    if sigma <= 0:
        return 0.0
    for _ in range(100):
        v = rng.normal(0.0, sigma)
        if abs(v) <= bound:
            return float(v)
    return 0.0


def _patch_inside(pts: np.ndarray, margin: float = 1e-6) -> bool:
    return bool(np.all(pts >= -margin) and np.all(pts <= 1 + margin))


def sample_homography(
    size: tuple[int, int],
    rng: np.random.Generator,
    config: HomographyConfig | None = None,
) -> np.ndarray:
    """Sample a random homography ``H_0to1`` for images of ``size = (height, width)``.

    View 1 is the distorted patch of view 0 stretched to the full image (see
    :class:`HomographyConfig`). Randomness comes only from ``rng``.

    Returns:
        ``(3, 3)`` float64 homography mapping view-0 pixels to view-1 pixels.
    """
    cfg = config or HomographyConfig()
    h, w = size
    r = float(np.clip(cfg.patch_ratio, 1e-3, 1.0))
    m = (1 - r) / 2
    base = np.array([[m, m], [m + r, m], [m, m + r], [m + r, m + r]], dtype=np.float64)

    for attempt in range(cfg.n_tries + 1):
        mild = attempt == cfg.n_tries  # last resort: no distortion beyond the patch
        pts = base.copy()
        if cfg.perspective and not mild:
            ax = (
                min(cfg.perspective_amplitude_x, m)
                if not cfg.allow_artifacts
                else cfg.perspective_amplitude_x
            )
            ay = (
                min(cfg.perspective_amplitude_y, m)
                if not cfg.allow_artifacts
                else cfg.perspective_amplitude_y
            )
            dy = _truncnorm(rng, ay / 2, ay)
            dx1 = _truncnorm(rng, ax / 2, ax)
            dx2 = _truncnorm(rng, ax / 2, ax)
            pts += np.array([[dx1, dy], [dx2, -dy], [-dx1, -dy], [-dx2, dy]])
        center = pts.mean(axis=0)
        if cfg.scaling and not mild:
            s = 1.0 + _truncnorm(rng, cfg.scaling_amplitude / 2, cfg.scaling_amplitude)
            s = float(np.clip(s, 1.0 / cfg.max_scale, cfg.max_scale))
            pts = (pts - center) * s + center
        if cfg.rotation and not mild:
            a = rng.uniform(-cfg.max_angle, cfg.max_angle)
            # rotate in pixel units so that non-square images rotate rigidly
            px = (pts - center) * np.array([w, h])
            rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
            pts = (px @ rot.T) / np.array([w, h]) + center
        if cfg.translation and not mild:
            lo = -pts.min(axis=0)
            hi = 1 - pts.max(axis=0)
            if cfg.allow_artifacts:
                lo, hi = lo - cfg.translation_overflow, hi + cfg.translation_overflow
            if np.all(hi >= lo):
                pts = pts + rng.uniform(lo, hi)
        if cfg.allow_artifacts or _patch_inside(pts):
            break

    src = (pts * np.array([w - 1, h - 1])).astype(np.float32)
    dst = image_corners(size).astype(np.float32)
    H = cv2.getPerspectiveTransform(src, dst)
    return H / H[2, 2]
