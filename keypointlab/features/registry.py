"""Feature extractors found by name: ``get_extractor("sift")``, ``get_extractor("kp2d")``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from keypointlab.devices import check_device
from keypointlab.errors import InputTypeError
from keypointlab.features.base import Extractor
from keypointlab.features.classical import OpenCVExtractor, available_opencv_features
from keypointlab.features.learned import load_learned
from keypointlab.models.loading import is_shipped_name, shipped_models

LEARNED_ONLY = ("device", "scales", "rotations")  # options OpenCV features ignore


def available_features() -> list[str]:
    """Every feature name :func:`get_extractor` accepts (besides checkpoint paths)."""
    return available_opencv_features() + shipped_models()


def get_extractor(name: str | os.PathLike[str], **kwargs: Any) -> Extractor:
    """Build the extractor called ``name``.

    ``name`` is an OpenCV feature (``sift``, ``orb``...), a shipped model (``kp2d``...),
    or the path of a training checkpoint / run folder. ``device``, ``scales`` and
    ``rotations`` are ignored by OpenCV features (they have their own scale space and
    orientations); ``device`` is still checked for every name.

    Raises:
        InputTypeError: ``name`` is not a string or path (e.g. ``None``).
        InputError: ``device`` is not available here (the message lists what is), or a
            shipped model's files are malformed (the message names the file).
        KeyError: ``name`` is unknown; the message lists the known names.
    """
    if isinstance(name, os.PathLike):
        name = os.fspath(name)
    if not isinstance(name, str):
        raise InputTypeError(
            f"feature name must be a string (an OpenCV feature, a shipped model or a "
            f"checkpoint path), got {name!r} ({type(name).__name__}); available: "
            f"{', '.join(available_features())}"
        )
    if kwargs.get("device") is not None:
        check_device(kwargs["device"])
    if name in available_opencv_features():
        for key in LEARNED_ONLY:
            kwargs.pop(key, None)
        return OpenCVExtractor(name, **kwargs)
    shipped = name in shipped_models() or is_shipped_name(name)  # broken: says what is wrong
    if shipped or name.endswith(".pt") or Path(name).is_dir():
        return load_learned(name, **kwargs)
    raise KeyError(f"unknown feature {name!r}; available: {', '.join(available_features())}")
