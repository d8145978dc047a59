"""Two-view epipolar geometry: relative pose errors, essential matrices, pose estimation
from matches, and the view overlap of an RGB-D pair.

Conventions (as :mod:`keypointlab.geometry.groundtruth`):

- ``T_0to1`` ``(4, 4)`` maps camera-0 coordinates to camera-1 coordinates,
  ``X1 = R X0 + t`` (metres); :func:`~keypointlab.geometry.groundtruth.relative_pose`
  builds it from two camera-to-world poses.
- Keypoints are ``(N, 2)`` xy pixels with the centre of the top-left pixel at ``(0, 0)``;
  ``K`` is in the same convention, so normalised coordinates are ``K^-1 [x, y, 1]``.
- The essential matrix of a pose is ``E = [t]_x R``: ``x1n^T E x0n = 0`` for normalised
  points of one scene point.

Angles are returned in degrees. Depth reprojection is not done here but by
:class:`~keypointlab.geometry.groundtruth.DepthGroundTruth`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from keypointlab.geometry.groundtruth import DepthGroundTruth, sample_depth

MIN_POSE_MATCHES = 5  # the five-point solver's minimum


def rotation_error(R_est: np.ndarray, R_gt: np.ndarray) -> float:
    """Angle in degrees of the rotation ``R_est^T R_gt`` (0 when the two agree).

    Args:
        R_est, R_gt: ``(3, 3)`` rotation matrices.
    """
    R = np.asarray(R_est, np.float64).T @ np.asarray(R_gt, np.float64)
    cos = np.clip((np.trace(R) - 1) / 2, -1.0, 1.0)
    return float(np.degrees(np.arccos(cos)))


def translation_angle_error(t_est: np.ndarray, t_gt: np.ndarray, min_gt_norm: float = 0.0) -> float:
    """Angle in degrees between the directions of ``t_est`` and ``t_gt``, up to sign:
    ``min(e, 180 - e)``, since an essential matrix fixes ``t`` only up to sign and scale
    (SuperGlue's protocol). In ``[0, 90]``.

    Args:
        t_est, t_gt: ``(3,)`` translations.
        min_gt_norm: a ground truth translation shorter than this (a pure rotation, whose
            direction is meaningless) gives 0.

    Returns:
        The error; ``inf`` when ``t_est`` is zero or not finite (no direction).
    """
    t_est = np.asarray(t_est, np.float64).reshape(3)
    t_gt = np.asarray(t_gt, np.float64).reshape(3)
    n_gt = float(np.linalg.norm(t_gt))
    if n_gt <= min_gt_norm:
        return 0.0
    n_est = float(np.linalg.norm(t_est))
    if not (math.isfinite(n_est) and n_est > 0):
        return math.inf
    cos = np.clip(t_est @ t_gt / (n_est * n_gt), -1.0, 1.0)
    err = float(np.degrees(np.arccos(cos)))
    return min(err, 180.0 - err)


def pose_error(R_est: np.ndarray, t_est: np.ndarray, T_0to1: np.ndarray) -> float:
    """The pose error of an estimate against the truth ``T_0to1``, in degrees: the larger
    of :func:`rotation_error` and :func:`translation_angle_error` (SuperGlue, LoFTR)."""
    T = np.asarray(T_0to1, np.float64)
    return max(rotation_error(R_est, T[:3, :3]), translation_angle_error(t_est, T[:3, 3]))


def skew(v: np.ndarray) -> np.ndarray:
    """``(3, 3)`` matrix ``[v]_x`` with ``[v]_x u = v x u``."""
    x, y, z = np.asarray(v, np.float64).reshape(3)
    return np.array([[0, -z, y], [z, 0, -x], [-y, x, 0]])


def essential_from_pose(T_0to1: np.ndarray) -> np.ndarray:
    """``(3, 3)`` essential matrix ``[t]_x R`` of ``T_0to1`` (``x1n^T E x0n = 0``)."""
    T = np.asarray(T_0to1, np.float64)
    return skew(T[:3, 3]) @ T[:3, :3]


def fundamental_from_pose(T_0to1: np.ndarray, K0: np.ndarray, K1: np.ndarray) -> np.ndarray:
    """``(3, 3)`` fundamental matrix ``K1^-T E K0^-1`` in pixels (``x1^T F x0 = 0``)."""
    E = essential_from_pose(T_0to1)
    return np.linalg.inv(np.asarray(K1, np.float64)).T @ E @ np.linalg.inv(K0)


def _homogeneous(points: np.ndarray) -> np.ndarray:
    p = np.asarray(points, np.float64).reshape(-1, 2)
    return np.concatenate([p, np.ones((len(p), 1))], axis=1)


def epipolar_distance(points0: np.ndarray, points1: np.ndarray, F: np.ndarray) -> np.ndarray:
    """Symmetric epipolar distance in pixels of matches under a fundamental matrix: the
    larger of the distance of ``x1`` to the epipolar line ``F x0`` in image 1 and of
    ``x0`` to ``F^T x1`` in image 0.

    Args:
        points0, points1: ``(M, 2)`` matched xy pixels of view 0 and view 1.
        F: ``(3, 3)`` with ``x1^T F x0 = 0`` (e.g. :func:`fundamental_from_pose`).

    Returns:
        ``(M,)`` float64 pixels (``inf`` where a line is degenerate).
    """
    x0, x1 = _homogeneous(points0), _homogeneous(points1)
    l1, l0 = x0 @ F.T, x1 @ F  # lines in image 1 and image 0
    num = np.abs(np.sum(x1 * l1, axis=1))
    with np.errstate(divide="ignore", invalid="ignore"):
        d1 = num / np.linalg.norm(l1[:, :2], axis=1)
        d0 = num / np.linalg.norm(l0[:, :2], axis=1)
    return np.nan_to_num(np.maximum(d0, d1), nan=np.inf)


@dataclass
class PoseEstimate:
    """Result of :func:`estimate_relative_pose`.

    Attributes:
        R: ``(3, 3)`` rotation of view 0 to view 1, ``None`` when it failed.
        t: ``(3,)`` unit translation (direction only; sign fixed by the cheirality check),
            ``None`` when it failed.
        inliers: ``(M,)`` boolean mask over the input matches (all False on failure).
        success: whether an estimate was found.
        reason: why it failed, empty on success.
    """

    R: np.ndarray | None
    t: np.ndarray | None
    inliers: np.ndarray
    success: bool
    reason: str = ""

    @property
    def num_inliers(self) -> int:
        return int(self.inliers.sum())


def _normalise(points: np.ndarray, K: np.ndarray) -> np.ndarray:
    """Pixels ``(M, 2)`` to normalised image coordinates ``K^-1 [x, y, 1]`` ``(M, 2)``."""
    return (_homogeneous(points) @ np.linalg.inv(np.asarray(K, np.float64)).T)[:, :2]


def _cv_message(exc: Exception) -> str:
    """OpenCV's own short message (``err``) when it belongs to this error: the attribute
    can be left over from an earlier error when one is raised from Python."""
    err = getattr(exc, "err", None)
    return err if err and err in str(exc) else str(exc).strip()


def estimate_relative_pose(
    points0: np.ndarray,
    points1: np.ndarray,
    K0: np.ndarray,
    K1: np.ndarray,
    threshold: float = 1.0,
    confidence: float = 0.99999,
    seed: int | None = 0,
) -> PoseEstimate:
    """Relative pose ``(R, t)`` from matched pixels and known intrinsics.

    The points are normalised by ``K0`` and ``K1``; ``cv2.findEssentialMat`` (RANSAC,
    five-point solver) fits ``E`` with the pixel ``threshold`` divided by the mean focal
    length of both cameras; each candidate ``E`` it returns is decomposed by
    ``cv2.recoverPose`` (cheirality check) and the one with the most inliers is kept
    (SuperGlue's protocol).

    Args:
        points0, points1: ``(M, 2)`` matched xy pixels of view 0 and view 1.
        K0, K1: ``(3, 3)`` intrinsics of each view.
        threshold: RANSAC inlier threshold in pixels.
        confidence: RANSAC confidence.
        seed: seeds OpenCV's RNG first so results repeat; ``None`` leaves it.

    Returns:
        A :class:`PoseEstimate`; fewer than 5 matches or a failed fit gives
        ``success=False`` rather than an exception, also when OpenCV raises inside RANSAC
        (its five-point solver asserts on some near-degenerate samples; with thousands
        of samples on a hard pair, another seed hits one too).
    """
    p0 = np.asarray(points0, np.float64).reshape(-1, 2)
    p1 = np.asarray(points1, np.float64).reshape(-1, 2)
    none = np.zeros(len(p0), dtype=bool)
    if len(p0) != len(p1):
        raise ValueError(f"points0 has {len(p0)} points and points1 {len(p1)}")
    if len(p0) < MIN_POSE_MATCHES:
        return PoseEstimate(None, None, none, False, f"{len(p0)} matches, need 5")
    n0, n1 = _normalise(p0, K0), _normalise(p1, K1)
    focal = np.mean([K0[0, 0], K0[1, 1], K1[0, 0], K1[1, 1]])
    if seed is not None:
        cv2.setRNGSeed(int(seed))
    try:
        E, mask = cv2.findEssentialMat(
            n0, n1, np.eye(3), method=cv2.RANSAC, prob=confidence, threshold=threshold / focal
        )
    except cv2.error as exc:  # see Returns
        return PoseEstimate(None, None, none, False, f"OpenCV: {_cv_message(exc)}")
    if E is None or mask is None:
        return PoseEstimate(None, None, none, False, "no essential matrix found")
    best: PoseEstimate | None = None
    for candidate in np.split(E, len(E) // 3):
        n, R, t, inl, _ = cv2.recoverPose(  # far points count too (distanceThresh)
            E=candidate,
            points1=n0,
            points2=n1,
            cameraMatrix=np.eye(3),
            distanceThresh=1e9,
            mask=mask.copy(),
        )
        if best is None or n > best.num_inliers:
            best = PoseEstimate(R, t.reshape(3), inl.reshape(-1) > 0, True)
    if best is None or best.num_inliers == 0:
        return PoseEstimate(None, None, none, False, "no pose passed the cheirality check")
    return best


def depth_overlap(
    depth0: np.ndarray,
    depth1: np.ndarray,
    K0: np.ndarray,
    K1: np.ndarray,
    T_0to1: np.ndarray,
    step: int = 4,
    occlusion_tolerance: float = 0.05,
) -> np.ndarray | float:
    """Fraction of view 0 seen by view 1: of the view-0 pixels with depth (on a grid of
    ``step`` pixels), those whose reprojection lands in front of camera 1, inside image 1
    and agrees with depth 1 (occlusion check), through
    :class:`~keypointlab.geometry.groundtruth.DepthGroundTruth` (nearest-pixel depth).

    Args:
        depth0: ``(H, W)`` metres, 0 = missing; K0: ``(3, 3)`` its intrinsics.
        depth1: ``(H, W)`` or ``(B, H, W)`` (several views 1 at once).
        K1: ``(3, 3)`` or ``(B, 3, 3)``; T_0to1: ``(4, 4)`` or ``(B, 4, 4)``.

    Returns:
        In ``[0, 1]`` (0 when view 0 has no depth): a float, or ``(B,)`` float64 for
        batched views 1.
    """
    batched = np.ndim(depth1) == 3
    d1 = np.asarray(depth1, np.float64).reshape(-1, *np.shape(depth1)[-2:])
    b = len(d1)

    def t64(a: np.ndarray, shape: tuple[int, ...]) -> torch.Tensor:
        return torch.from_numpy(np.broadcast_to(np.asarray(a, np.float64), (b, *shape)).copy())

    h, w = depth0.shape
    ys, xs = np.mgrid[0:h:step, 0:w:step]
    grid = np.stack([xs.ravel(), ys.ravel()], -1).astype(np.float64)
    grid = torch.from_numpy(np.broadcast_to(grid, (b, *grid.shape)).copy())
    d0 = t64(depth0, (h, w))
    _, has_depth = sample_depth(d0, grid, bilinear=False)
    gt = DepthGroundTruth(d0, torch.from_numpy(d1), t64(K0, (3, 3)), t64(K1, (3, 3)),
                          t64(T_0to1, (4, 4)), occlusion_tolerance, "nearest")  # fmt: skip
    _, known = gt.warp_0to1(grid)
    n = has_depth.sum(-1).numpy()
    out = np.where(n > 0, known.sum(-1).numpy() / np.maximum(n, 1), 0.0)
    return out if batched else float(out[0])


def depth_reprojection_errors(
    points0: np.ndarray,
    points1: np.ndarray,
    depth0: np.ndarray,
    depth1: np.ndarray,
    K0: np.ndarray,
    K1: np.ndarray,
    T_0to1: np.ndarray,
    occlusion_tolerance: float = 0.05,
) -> tuple[np.ndarray, np.ndarray]:
    """Pixel distance between each matched view-1 point and the true position of its
    view-0 point: ``points0`` back-projected with ``depth0``, moved by ``T_0to1`` and
    projected by ``K1`` (:class:`~keypointlab.geometry.groundtruth.DepthGroundTruth`,
    bilinear depth, occlusion check against ``depth1``).

    Args:
        points0, points1: ``(M, 2)`` matched xy pixels of view 0 and view 1.
        depth0, depth1: ``(H, W)`` metres at the size the points are in.
        K0, K1: ``(3, 3)``; T_0to1: ``(4, 4)``.

    Returns:
        ``(errors (M,) float64 pixels, known (M,) bool)``: ``known`` where the view-0
        point has depth, lands in front of camera 1 and inside image 1, and is not
        occluded there; errors elsewhere are ``inf``.
    """
    p0 = torch.from_numpy(np.asarray(points0, np.float64).reshape(1, -1, 2))

    def t64(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.asarray(a, np.float64))[None]

    gt = DepthGroundTruth(t64(depth0), t64(depth1), t64(K0), t64(K1), t64(T_0to1),
                          occlusion_tolerance)  # fmt: skip
    warped, known = gt.warp_0to1(p0)
    warped, known = warped[0].numpy(), known[0].numpy()
    err = np.linalg.norm(warped - np.asarray(points1, np.float64).reshape(-1, 2), axis=1)
    return np.where(known, err, np.inf), known
