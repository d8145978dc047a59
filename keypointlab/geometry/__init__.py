"""Geometry: the one home of homography sampling, warping, resizing, rotating and corner
error."""

from keypointlab.geometry.groundtruth import (
    DepthGroundTruth,
    GroundTruth,
    HomographyGroundTruth,
    as_ground_truth,
    ground_truth_from_batch,
    relative_pose,
    sample_depth,
)
from keypointlab.geometry.homography import (
    HomographyConfig,
    InvalidHomographyError,
    check_homography,
    corner_error,
    image_corners,
    inside_image,
    resize_matrix,
    resize_scale,
    rotation_canvas,
    sample_homography,
    scale_homography,
    warp_image,
    warp_image_torch,
    warp_points,
)

__all__ = [
    "HomographyConfig",
    "InvalidHomographyError",
    "check_homography",
    "corner_error",
    "image_corners",
    "inside_image",
    "resize_matrix",
    "resize_scale",
    "rotation_canvas",
    "sample_homography",
    "scale_homography",
    "warp_image",
    "warp_image_torch",
    "warp_points",
    "DepthGroundTruth",
    "GroundTruth",
    "HomographyGroundTruth",
    "as_ground_truth",
    "ground_truth_from_batch",
    "relative_pose",
    "sample_depth",
]
