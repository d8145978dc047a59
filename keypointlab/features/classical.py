"""Classical detectors/descriptors from OpenCV behind the :class:`Extractor` interface."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import cv2
import numpy as np

from keypointlab import limits
from keypointlab.data.images import to_gray
from keypointlab.features.base import Extractor, Features

# name -> (factory(max_keypoints), binary descriptor?)
_OPENCV: dict[str, tuple[Callable[[int], cv2.Feature2D], bool]] = {
    "sift": (lambda n: cv2.SIFT_create(nfeatures=n), False),
    "orb": (lambda n: cv2.ORB_create(nfeatures=n), True),
    "akaze": (lambda n: cv2.AKAZE_create(max_points=n), True),
    "brisk": (lambda n: cv2.BRISK_create(), True),
    "kaze": (lambda n: cv2.KAZE_create(), False),
}


def available_opencv_features() -> list[str]:
    """Names of the OpenCV features this OpenCV build provides."""
    names = []
    for name, (factory, _) in _OPENCV.items():
        try:
            factory(10)
        except (AttributeError, cv2.error):
            continue
        names.append(name)
    return names


class OpenCVExtractor(Extractor):
    """An OpenCV ``Feature2D`` run on the grey image; score = keypoint response.

    Args:
        name: one of :func:`available_opencv_features`.
        max_keypoints: cap on detections (SIFT, ORB, AKAZE; others keep all, the
            evaluation's top-k then ranks them by response).
    """

    def __init__(self, name: str = "sift", max_keypoints: int = 2000) -> None:
        if name not in _OPENCV:
            raise KeyError(f"unknown OpenCV feature {name!r}; known: {sorted(_OPENCV)}")
        factory, self.binary = _OPENCV[name]
        self.name = name
        self.max_keypoints = limits.check_count(max_keypoints, "max_keypoints")
        self._detector = factory(max_keypoints)

    def identity(self) -> dict[str, Any]:
        return {**super().identity(), "max_keypoints": self.max_keypoints}

    def _extract(self, image: np.ndarray) -> Features:
        gray = to_gray(image)
        size = gray.shape[:2]
        try:
            kps, desc = self._detector.detectAndCompute(gray, None)
        except cv2.error as exc:  # e.g. ORB's pyramid on an image 1 pixel high or wide
            detail = (exc.err or str(exc)).strip().splitlines()[-1]
            raise ValueError(
                f"{self.name} cannot process an image of size {size[0]}x{size[1]}: {detail}"
            ) from exc
        if not kps or desc is None:
            dim = (
                8 * self._detector.descriptorSize()
                if self.binary
                else self._detector.descriptorSize()
            )
            return Features(np.zeros((0, 2)), np.zeros(0), np.zeros((0, dim), np.float32), size)
        xy = np.array([k.pt for k in kps], dtype=np.float64)
        scores = np.array([k.response for k in kps], dtype=np.float64)
        scales = np.array([k.size for k in kps], dtype=np.float64)
        angles = np.deg2rad([k.angle if k.angle >= 0 else 0.0 for k in kps])
        if self.binary:
            desc = np.unpackbits(desc, axis=1).astype(np.float32)
        if len(kps) > self.max_keypoints:  # BRISK/KAZE have no cap of their own
            keep = np.argsort(-scores, kind="stable")[: self.max_keypoints]
            xy, scores, desc = xy[keep], scores[keep], desc[keep]
            scales, angles = scales[keep], angles[keep]
        return Features(xy, scores, desc.astype(np.float32), size, scales, angles)
