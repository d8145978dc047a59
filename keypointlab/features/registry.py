"""Feature extractors found by name: ``get_extractor("sift")``, ``get_extractor("kp2d")``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from keypointlab.features.base import Extractor
from keypointlab.features.classical import OpenCVExtractor, available_opencv_features
from keypointlab.features.learned import load_learned
from keypointlab.models.loading import shipped_models

LEARNED_ONLY = ("device", "scales", "rotations")  # options OpenCV features ignore


def available_features() -> list[str]:
    """Every feature name :func:`get_extractor` accepts (besides checkpoint paths)."""
    return available_opencv_features() + shipped_models()


def get_extractor(name: str, **kwargs: Any) -> Extractor:
    """Build the extractor called ``name``.

    ``name`` is an OpenCV feature (``sift``, ``orb``...), a shipped model (``kp2d``...),
    or the path of a training checkpoint / run folder. ``device``, ``scales`` and
    ``rotations`` are ignored by OpenCV features (they have their own scale space and
    orientations).

    Raises:
        KeyError: ``name`` is unknown; the message lists the known names.
    """
    if name in available_opencv_features():
        for key in LEARNED_ONLY:
            kwargs.pop(key, None)
        return OpenCVExtractor(name, **kwargs)
    if name in shipped_models() or name.endswith(".pt") or Path(name).is_dir():
        return load_learned(name, **kwargs)
    raise KeyError(f"unknown feature {name!r}; available: {', '.join(available_features())}")
