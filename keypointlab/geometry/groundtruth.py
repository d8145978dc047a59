"""Ground truth as a component: warp points between the two views of a pair, and say which
correspondences are known.

Two implementations share one interface, so the same loss trains from homographies or from
depth + pose:

- :class:`HomographyGroundTruth` from ``H_0to1`` ``(B, 3, 3)``: every finite point has a
  known correspondence; when the target image's size is given, it must also land inside
  it (without sizes, whether it lands inside the other image is the loss's concern);
- :class:`DepthGroundTruth` from metric depth maps of both views, their intrinsics and the
  relative pose ``T_0to1`` (camera-0 coordinates to camera-1 coordinates,
  ``X1 = R X0 + t``): a point is known when it has depth, lands in front of camera 1 and
  inside image 1, and its projected depth agrees with image 1's depth there (otherwise
  it is occluded).

Points are batched ``(B, N, 2)`` xy pixels with the centre of the top-left pixel at
``(0, 0)``. Depth ground truth returns unknown points as NaN.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from typing import Any

import numpy as np
import torch

from keypointlab.geometry.homography import inside_image, warp_points

DEPTH_KEYS = ("depth0", "depth1", "K0", "K1", "T_0to1")
Size = tuple[int, int]


class GroundTruth(ABC):
    """Correspondences between view 0 and view 1 of a batch of pairs."""

    @abstractmethod
    def warp_0to1(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """View-0 points ``(B, N, 2)`` to view 1: ``(warped (B, N, 2), known (B, N) bool)``."""

    @abstractmethod
    def warp_1to0(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """View-1 points ``(B, N, 2)`` to view 0: ``(warped (B, N, 2), known (B, N) bool)``."""

    def local_frames(
        self, points: torch.Tensor, forward: bool = True, eps: float = 0.5
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """How the neighbourhood of each point is scaled and turned into the other view.

        From the warp's Jacobian ``J`` (central differences of ``eps`` pixels): scale
        ``sqrt |det J|`` and angle ``atan2(J10 - J01, J00 + J11)`` (the rotation nearest
        to ``J``; exact for a similarity), in the angle convention of
        :mod:`keypointlab.geometry.patches`. So a keypoint of support ``s`` and orientation
        ``a`` in this view has support ``scale * s`` and orientation ``a + angle`` there.

        Args:
            points: ``(B, N, 2)`` xy in view 0 (``forward``) or view 1.

        Returns:
            ``(warped (B, N, 2), scale (B, N), angle (B, N), known (B, N))``; a point is
            known when it and its four neighbours at ``eps`` are.
        """
        b, n, _ = points.shape
        steps = points.new_tensor([[0, 0], [eps, 0], [-eps, 0], [0, eps], [0, -eps]])
        probe = (points[:, :, None, :] + steps).reshape(b, 5 * n, 2)
        warped, known = (self.warp_0to1 if forward else self.warp_1to0)(probe)
        warped, known = warped.reshape(b, n, 5, 2), known.reshape(b, n, 5).all(-1)
        dx = (warped[:, :, 1] - warped[:, :, 2]) / (2 * eps)  # first column of J
        dy = (warped[:, :, 3] - warped[:, :, 4]) / (2 * eps)  # second column
        det = dx[..., 0] * dy[..., 1] - dy[..., 0] * dx[..., 1]
        angle = torch.atan2(dx[..., 1] - dy[..., 0], dx[..., 0] + dy[..., 1])
        return warped[:, :, 0], det.abs().sqrt(), angle, known & torch.isfinite(det)

    def to(self, device: torch.device | str) -> GroundTruth:
        """A shallow copy with every tensor attribute moved to ``device``."""
        moved = copy.copy(self)
        for name, value in vars(self).items():
            if isinstance(value, torch.Tensor):
                setattr(moved, name, value.to(device))
        return moved


def _check(name: str, t: torch.Tensor, shape: tuple[int | None, ...]) -> None:
    """Raise ``ValueError`` unless ``t`` has ``shape`` (``None``: any size)."""
    pairs = zip(shape, t.shape, strict=False)
    if t.ndim != len(shape) or any(s not in (None, n) for s, n in pairs):
        want = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"
        raise ValueError(f"{name} must have shape {want}, got {tuple(t.shape)}")


class HomographyGroundTruth(GroundTruth):
    """Ground truth of a homography ``H_0to1`` ``(B, 3, 3)`` (view-0 to view-1 pixels).

    Args:
        H_0to1: ``(B, 3, 3)`` homographies.
        size0, size1: ``(h, w)`` of view 0 and view 1; when given, a warped point is known
            only if it lands inside the target view (``None``: known = finite).

    The warps are ``warp_points(p, H_0to1.to(p.dtype))`` and
    ``warp_points(p, torch.linalg.inv(H_0to1).to(p.dtype))``, the very operations the
    homography losses used, so the numbers are bit-identical.
    """

    def __init__(
        self, H_0to1: torch.Tensor, size0: Size | None = None, size1: Size | None = None
    ) -> None:
        _check("H_0to1", H_0to1, (None, 3, 3))
        self.H_0to1 = H_0to1
        self.size0, self.size1 = size0, size1

    @staticmethod
    def _known(warped: torch.Tensor, size: Size | None) -> torch.Tensor:
        known = torch.isfinite(warped).all(-1)
        return known if size is None else known & inside_image(warped, size)

    def warp_0to1(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        warped = warp_points(points, self.H_0to1.to(points.dtype))
        return warped, self._known(warped, self.size1)

    def warp_1to0(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        warped = warp_points(points, torch.linalg.inv(self.H_0to1).to(points.dtype))
        return warped, self._known(warped, self.size0)


def _gather(depth: torch.Tensor, ix: torch.Tensor, iy: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Depth ``(B, N)`` of ``(B, H, W)`` maps at integer pixels ``ix, iy`` ``(B, N)`` and
    whether it is valid (inside the map, finite, > 0); invalid depths are returned as 1."""
    b, h, w = depth.shape
    inside = (ix >= 0) & (ix < w) & (iy >= 0) & (iy < h)
    flat = iy.clamp(0, h - 1) * w + ix.clamp(0, w - 1)
    z = depth.reshape(b, -1).gather(1, flat)
    ok = inside & torch.isfinite(z) & (z > 0)
    return torch.where(ok, z, torch.ones_like(z)), ok


def sample_depth(
    depth: torch.Tensor, points: torch.Tensor, bilinear: bool = True, edge_tolerance: float = 0.05
) -> tuple[torch.Tensor, torch.Tensor]:
    """Depth at sub-pixel points and whether it is known.

    Args:
        depth: ``(B, H, W)`` metres, 0 or non-finite = missing.
        points: ``(B, N, 2)`` xy pixels.
        bilinear: interpolate *inverse* depth bilinearly (exact on planes) when the 2x2
            neighbours with non-zero weight all have depth within ``1 + edge_tolerance`` of
            each other; elsewhere (depth edges, holes, image border) use the nearest pixel.
            ``False``: always the nearest pixel.

    Returns:
        ``(z (B, N), known (B, N))`` in the dtype of ``points``; known = the nearest pixel is
        inside the map and has depth. Unknown depths are 1 (finite, to keep gradients finite).
    """
    depth = depth.to(points.dtype)
    big = float(max(depth.shape[-2:]) + 2)
    p = torch.nan_to_num(points, nan=-big, posinf=big, neginf=-big).clamp(-big, big)
    x, y = p[..., 0], p[..., 1]
    z, known = _gather(depth, x.round().long(), y.round().long())
    if not bilinear:
        return z, known
    x0, y0 = x.floor(), y.floor()
    fx, fy = x - x0, y - y0
    x0, y0 = x0.long(), y0.long()
    inv = torch.zeros_like(z)
    usable = torch.ones_like(known)
    zmin, zmax = torch.full_like(z, float("inf")), torch.zeros_like(z)
    for dx, dy, wt in ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)),
                       (0, 1, (1 - fx) * fy), (1, 1, fx * fy)):  # fmt: skip
        zi, ok = _gather(depth, x0 + dx, y0 + dy)
        used = wt > 0
        usable &= ok | ~used
        inv = inv + torch.where(used & ok, wt / zi, torch.zeros_like(zi))
        zmin = torch.where(used & ok, torch.minimum(zmin, zi), zmin)
        zmax = torch.where(used & ok, torch.maximum(zmax, zi), zmax)
    usable &= known & (zmax <= zmin * (1 + edge_tolerance))
    z_bilinear = 1 / torch.where(usable, inv, torch.ones_like(inv))
    return torch.where(usable, z_bilinear, z), known


def _rigid_inverse(T: torch.Tensor) -> torch.Tensor:
    """Inverse ``(B, 4, 4)`` of rigid transforms: ``[R^T, -R^T t]``."""
    R_t = T[:, :3, :3].transpose(1, 2)
    out = torch.zeros_like(T)
    out[:, :3, :3] = R_t
    out[:, :3, 3] = -(R_t @ T[:, :3, 3:])[..., 0]
    out[:, 3, 3] = 1
    return out


def _project(
    points: torch.Tensor,
    depth_a: torch.Tensor,
    depth_b: torch.Tensor,
    K_a: torch.Tensor,
    K_b: torch.Tensor,
    T_ab: torch.Tensor,
    tolerance: float,
    bilinear: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Warp view-a points ``(B, N, 2)`` to view b through depth a and ``T_ab``; see
    :class:`DepthGroundTruth`."""
    _check("points", points, (depth_a.shape[0], None, 2))
    dtype = points.dtype
    z, known = sample_depth(depth_a, points, bilinear, tolerance)
    ones = torch.ones_like(points[..., :1])
    rays = torch.cat([points, ones], -1) @ torch.linalg.inv(K_a.to(dtype)).transpose(1, 2)
    T = T_ab.to(dtype)
    Xb = (rays * z[..., None]) @ T[:, :3, :3].transpose(1, 2) + T[:, None, :3, 3]
    zb = Xb[..., 2]
    front = zb > 1e-6  # metres in front of camera b
    uvw = Xb @ K_b.to(dtype).transpose(1, 2)
    warped = uvw[..., :2] / torch.where(front, zb, torch.ones_like(zb))[..., None]
    z_seen, seen = sample_depth(depth_b, warped, bilinear, tolerance)
    consistent = (z_seen - zb).abs() <= tolerance * zb
    inside = inside_image(points, depth_a.shape[-2:]) & inside_image(warped, depth_b.shape[-2:])
    known = known & front & inside & seen & consistent
    nan = torch.full_like(warped, float("nan"))
    return torch.where(known[..., None], warped, nan), known


class DepthGroundTruth(GroundTruth):
    """Ground truth of depth maps, intrinsics and a relative pose.

    Args:
        depth0, depth1: ``(B, H, W)`` depth (z along the optical axis) in metres; 0 or
            non-finite is missing. Each map's size is its view's image size.
        K0, K1: ``(B, 3, 3)`` intrinsics of each view (pixel-centre convention).
        T_0to1: ``(B, 4, 4)`` rigid transform from camera-0 to camera-1 coordinates
            (``X1 = R X0 + t``, metres); see :func:`relative_pose`.
        occlusion_tolerance: relative depth agreement required at the projection
            (occlusion check): ``|depth1(x1) - z1| <= occlusion_tolerance * z1``. Also the
            depth-edge threshold of the interpolation.
        interpolation: ``"bilinear"`` (inverse depth over valid neighbours, nearest pixel at
            depth edges and holes; exact on planes) or ``"nearest"``; see
            :func:`sample_depth`.

    A point is known when it lies inside its own image and has depth there, lands in front
    of the other camera and inside the other image (inside: ``0 <= x <= w - 1``,
    ``0 <= y <= h - 1``), and the other view has depth there that agrees with the projected
    depth. Unknown points are NaN. Computation
    is in the points' dtype (use float64 for sub-millimetre work).
    """

    def __init__(
        self,
        depth0: torch.Tensor,
        depth1: torch.Tensor,
        K0: torch.Tensor,
        K1: torch.Tensor,
        T_0to1: torch.Tensor,
        occlusion_tolerance: float = 0.05,
        interpolation: str = "bilinear",
    ) -> None:
        b = depth0.shape[0] if depth0.ndim else 0
        for name, t, shape in (("depth0", depth0, (b, None, None)),
                               ("depth1", depth1, (b, None, None)), ("K0", K0, (b, 3, 3)),
                               ("K1", K1, (b, 3, 3)), ("T_0to1", T_0to1, (b, 4, 4))):  # fmt: skip
            _check(name, t, shape)
        if interpolation not in ("bilinear", "nearest"):
            raise ValueError(f"interpolation: 'bilinear' or 'nearest', not {interpolation!r}")
        self.depth0, self.depth1, self.K0, self.K1 = depth0, depth1, K0, K1
        self.T_0to1 = T_0to1
        self.occlusion_tolerance = float(occlusion_tolerance)
        self.bilinear = interpolation == "bilinear"

    def _warp(self, points: torch.Tensor, forward: bool) -> tuple[torch.Tensor, torch.Tensor]:
        T = self.T_0to1.to(points.dtype)
        a, b = (0, 1) if forward else (1, 0)
        depths, Ks = (self.depth0, self.depth1), (self.K0, self.K1)
        T_ab = T if forward else _rigid_inverse(T)
        return _project(points, depths[a], depths[b], Ks[a], Ks[b], T_ab,
                        self.occlusion_tolerance, self.bilinear)  # fmt: skip

    def warp_0to1(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._warp(points, forward=True)

    def warp_1to0(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._warp(points, forward=False)


def relative_pose(T_world_from_cam0: Any, T_world_from_cam1: Any) -> Any:
    """``T_0to1`` from two camera-to-world poses (``X_world = T @ X_cam``):
    ``inv(T_world_from_cam1) @ T_world_from_cam0``.

    Accepts numpy arrays (returns float64) or torch tensors (in their dtype), ``(4, 4)`` or
    batched ``(B, 4, 4)``.
    """
    if isinstance(T_world_from_cam0, torch.Tensor):
        return torch.linalg.inv(T_world_from_cam1) @ T_world_from_cam0
    T0 = np.asarray(T_world_from_cam0, np.float64)
    return np.linalg.inv(np.asarray(T_world_from_cam1, np.float64)) @ T0


def ground_truth_from_batch(batch: dict[str, Any]) -> GroundTruth:
    """:class:`HomographyGroundTruth` when the batch has ``H_0to1``, else
    :class:`DepthGroundTruth` when it has ``depth0, depth1, K0, K1, T_0to1``.

    The homography ground truth is built without image sizes (known = finite), so the
    losses keep deciding what lands inside the other view, exactly as before this
    component existed.

    Raises:
        KeyError: neither kind is complete; the message says what each kind misses.
    """
    if "H_0to1" in batch:
        return HomographyGroundTruth(batch["H_0to1"])
    missing = [k for k in DEPTH_KEYS if k not in batch]
    if not missing:
        return DepthGroundTruth(*(batch[k] for k in DEPTH_KEYS))
    raise KeyError(
        f"cannot build ground truth from a batch with keys {sorted(batch)}: a homography "
        f"pair misses 'H_0to1'; a depth + pose pair misses {', '.join(map(repr, missing))}"
    )


def as_ground_truth(gt: GroundTruth | torch.Tensor) -> GroundTruth:
    """``gt`` itself, or a ``(B, 3, 3)`` tensor ``H_0to1`` as :class:`HomographyGroundTruth`."""
    if isinstance(gt, GroundTruth):
        return gt
    if isinstance(gt, torch.Tensor):
        return HomographyGroundTruth(gt)
    raise TypeError(f"expected a GroundTruth or an H_0to1 tensor, got {type(gt).__name__}")


FAR = -1e4  # px: where points without a known correspondence are put by :func:`finite_points`


def finite_points(points: torch.Tensor) -> torch.Tensor:
    """Warped points with unknown ones (NaN, inf) moved far outside every image, so that
    distances computed from them stay finite; known points are unchanged, bit for bit."""
    return torch.nan_to_num(points, nan=FAR, posinf=FAR, neginf=FAR)
