"""Keypoint orientations, so that upright descriptors can be computed in a rotated frame.

The estimate is the direction of the Gaussian-weighted intensity centroid around the
keypoint (ORB's intensity centroid with a Gaussian window): the gradient of the image
blurred by ``sigma``, which is ``integral I(x) * grad G(x - p)``. It is covariant with
rotations of the image up to blur and interpolation, costs one blur per image, and
degrades where the neighbourhood is flat or symmetric.
"""

from __future__ import annotations

import cv2
import numpy as np


def _gray(image: np.ndarray) -> np.ndarray:
    if image.ndim == 3 and image.shape[2] == 3:
        return cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32)
    return image.reshape(image.shape[:2]).astype(np.float32)


def centroid_orientation(
    image: np.ndarray, keypoints: np.ndarray, sigma: float = 5.0
) -> np.ndarray:
    """Orientation in radians (``atan2(dy, dx)``, y down) of each keypoint ``(N, 2)``.

    Args:
        image: ``(h, w)`` grayscale or ``(h, w, 3)`` RGB image.
        keypoints: pixel xy of the keypoints in ``image``.
        sigma: the Gaussian window's standard deviation in pixels.
    """
    blurred = cv2.GaussianBlur(_gray(image), (0, 0), sigma, borderType=cv2.BORDER_REFLECT101)
    gx = cv2.Sobel(blurred, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(blurred, cv2.CV_32F, 0, 1, ksize=3)
    xy = np.asarray(keypoints, dtype=np.float32).reshape(-1, 1, 2)
    if len(xy) == 0:
        return np.zeros(0)
    g = cv2.remap(
        np.dstack([gx, gy]), xy, None, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    ).reshape(-1, 2)
    return np.arctan2(g[:, 1], g[:, 0]).astype(np.float64)
