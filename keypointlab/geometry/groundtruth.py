"""Ground truth as a component: warp points between the two views of a pair, and say which
correspondences are known.

Two implementations share one interface, so the same loss trains from homographies or from
depth + pose:

- :class:`HomographyGroundTruth` from ``H_0to1`` ``(B, 3, 3)``: every finite point has a
  known correspondence (whether it lands inside the other image is the loss's concern);
- :class:`DepthGroundTruth` from metric depth maps of both views, their intrinsics and the
  relative pose ``T_0to1`` (camera-0 coordinates to camera-1 coordinates,
  ``X1 = R X0 + t``): a point is known when it has depth, lands in front of camera 1 and
  inside image 1, and its projected depth agrees with image 1's depth there (otherwise
  it is occluded).

Points are batched ``(B, N, 2)`` xy pixels with the centre of the top-left pixel at
``(0, 0)``. Unknown points are returned as NaN.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import numpy as np
import torch

from keypointlab.geometry.homography import warp_points

DEPTH_KEYS = ("depth0", "depth1", "K0", "K1", "T_0to1")


class GroundTruth(ABC):
    """Correspondences between view 0 and view 1 of a batch of pairs."""

    @abstractmethod
    def warp_0to1(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """View-0 points ``(B, N, 2)`` to view 1: ``(warped (B, N, 2), known (B, N))``."""

    @abstractmethod
    def warp_1to0(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """View-1 points ``(B, N, 2)`` to view 0: ``(warped (B, N, 2), known (B, N))``."""


class HomographyGroundTruth(GroundTruth):
    """Ground truth of a homography ``H_0to1`` ``(B, 3, 3)`` (view-0 to view-1 pixels)."""

    def __init__(self, H_0to1: torch.Tensor) -> None:
        if H_0to1.ndim != 3 or H_0to1.shape[-2:] != (3, 3):
            raise ValueError(f"H_0to1 must be (B, 3, 3), got {tuple(H_0to1.shape)}")
        self.H_0to1 = H_0to1

    def warp_0to1(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        warped = warp_points(points, self.H_0to1.to(points.dtype))
        return warped, torch.isfinite(warped).all(-1)

    def warp_1to0(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        warped = warp_points(points, torch.linalg.inv(self.H_0to1).to(points.dtype))
        return warped, torch.isfinite(warped).all(-1)


def _lookup(depth: torch.Tensor, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest-pixel depth ``(B, N)`` of ``(B, H, W)`` maps at ``(B, N, 2)`` points and
    whether the point is inside the map with a valid (finite, positive) depth."""
    b, h, w = depth.shape
    ij = torch.nan_to_num(points, nan=-1.0).round().long()
    x, y = ij[..., 0], ij[..., 1]
    inside = (x >= 0) & (x < w) & (y >= 0) & (y < h)
    flat = (y.clamp(0, h - 1) * w + x.clamp(0, w - 1)).view(b, -1)
    z = depth.reshape(b, -1).gather(1, flat).view_as(x).to(points.dtype)
    return z, inside & torch.isfinite(z) & (z > 0)


def _project(
    points: torch.Tensor,
    depth_a: torch.Tensor,
    depth_b: torch.Tensor,
    K_a: torch.Tensor,
    K_b: torch.Tensor,
    T_ab: torch.Tensor,
    tolerance: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    dtype = points.dtype
    z, known = _lookup(depth_a, points)
    ones = torch.ones_like(points[..., :1])
    rays = torch.cat([points, ones], -1) @ torch.linalg.inv(K_a.to(dtype)).transpose(1, 2)
    X = rays * z[..., None]
    T = T_ab.to(dtype)
    Xb = X @ T[:, :3, :3].transpose(1, 2) + T[:, None, :3, 3]
    zb = Xb[..., 2]
    front = zb > 1e-6
    uvw = Xb @ K_b.to(dtype).transpose(1, 2)
    warped = uvw[..., :2] / torch.where(front, zb, torch.ones_like(zb))[..., None]
    z_seen, seen = _lookup(depth_b, warped)
    consistent = (z_seen - zb).abs() <= tolerance * zb.abs()
    known = known & front & seen & consistent
    nan = torch.full_like(warped, float("nan"))
    return torch.where(known[..., None], warped, nan), known


class DepthGroundTruth(GroundTruth):
    """Ground truth of depth maps, intrinsics and a relative pose.

    Args:
        depth0, depth1: ``(B, H, W)`` depth in metres; 0 or non-finite is missing.
        K0, K1: ``(B, 3, 3)`` intrinsics of each view (pixel-centre convention).
        T_0to1: ``(B, 4, 4)`` rigid transform from camera-0 to camera-1 coordinates.
        tolerance: relative depth agreement required at the projection (occlusion check):
            ``|depth1(x1) - z1| <= tolerance * z1``.

    Depth is looked up at the nearest pixel (no interpolation across depth edges).
    """

    def __init__(
        self,
        depth0: torch.Tensor,
        depth1: torch.Tensor,
        K0: torch.Tensor,
        K1: torch.Tensor,
        T_0to1: torch.Tensor,
        tolerance: float = 0.05,
    ) -> None:
        for name, t, nd in (("depth0", depth0, 3), ("depth1", depth1, 3), ("K0", K0, 3)):
            if t.ndim != nd:
                raise ValueError(f"{name} must have {nd} dimensions, got {tuple(t.shape)}")
        if T_0to1.shape[-2:] != (4, 4) or K1.shape[-2:] != (3, 3):
            raise ValueError(f"T_0to1 must be (B, 4, 4) and K1 (B, 3, 3), got "
                             f"{tuple(T_0to1.shape)} and {tuple(K1.shape)}")  # fmt: skip
        self.depth0, self.depth1, self.K0, self.K1 = depth0, depth1, K0, K1
        self.T_0to1 = T_0to1
        self.tolerance = tolerance

    def warp_0to1(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return _project(
            points, self.depth0, self.depth1, self.K0, self.K1, self.T_0to1, self.tolerance
        )

    def warp_1to0(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        T_1to0 = torch.linalg.inv(self.T_0to1.to(torch.float64)).to(self.T_0to1.dtype)
        return _project(points, self.depth1, self.depth0, self.K1, self.K0, T_1to0, self.tolerance)


def relative_pose(T_world_cam0: np.ndarray, T_world_cam1: np.ndarray) -> np.ndarray:
    """``T_0to1`` ``(4, 4)`` from camera-to-world poses: ``inv(T_world_cam1) @ T_world_cam0``."""
    T0, T1 = np.asarray(T_world_cam0, np.float64), np.asarray(T_world_cam1, np.float64)
    return np.linalg.inv(T1) @ T0


def ground_truth_from_batch(batch: dict[str, Any]) -> GroundTruth:
    """:class:`HomographyGroundTruth` when the batch has ``H_0to1``, else
    :class:`DepthGroundTruth` when it has depth maps, intrinsics and ``T_0to1``.

    Raises:
        KeyError: neither, naming what is missing.
    """
    if "H_0to1" in batch:
        return HomographyGroundTruth(batch["H_0to1"])
    missing = [k for k in DEPTH_KEYS if k not in batch]
    if not missing:
        return DepthGroundTruth(*(batch[k] for k in DEPTH_KEYS))
    raise KeyError(
        f"a pair batch needs 'H_0to1' (homography) or {', '.join(DEPTH_KEYS)} (depth + pose); "
        f"it has {sorted(batch)}"
    )


def as_ground_truth(gt: GroundTruth | torch.Tensor) -> GroundTruth:
    """``gt`` itself, or a ``(B, 3, 3)`` tensor ``H_0to1`` as :class:`HomographyGroundTruth`."""
    if isinstance(gt, GroundTruth):
        return gt
    if isinstance(gt, torch.Tensor):
        return HomographyGroundTruth(gt)
    raise TypeError(f"expected a GroundTruth or an H_0to1 tensor, got {type(gt).__name__}")
