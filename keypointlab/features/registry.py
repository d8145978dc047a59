"""Feature extractors found by name: ``get_extractor("sift")``, ``get_extractor("kp2d")``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from keypointlab.features.base import Extractor
from keypointlab.features.classical import OpenCVExtractor, available_opencv_features

# Learned models register a loader here: name -> factory(**kwargs) -> Extractor.
_LOADERS: dict[str, Callable[..., Extractor]] = {}


def register_extractor(name: str, loader: Callable[..., Extractor]) -> None:
    """Make ``get_extractor(name)`` build an extractor with ``loader(**kwargs)``."""
    _LOADERS[name] = loader


def available_features() -> list[str]:
    """Every feature name :func:`get_extractor` accepts (besides checkpoint paths)."""
    from keypointlab.features.learned import shipped_models

    return available_opencv_features() + sorted(set(_LOADERS) | set(shipped_models()))


def get_extractor(name: str, **kwargs: Any) -> Extractor:
    """Build the extractor called ``name``.

    ``name`` is an OpenCV feature (``sift``, ``orb``...), a shipped model (``kp2d``...),
    or the path of a training checkpoint / run folder. ``device``, ``scales`` and
    ``rotations`` are ignored by OpenCV features (they have their own scale space and
    orientations).

    Raises:
        KeyError: ``name`` is unknown; the message lists the known names.
    """
    from keypointlab.features import learned

    if name in _LOADERS:
        return _LOADERS[name](**kwargs)
    if name in available_opencv_features():
        kwargs.pop("device", None)
        kwargs.pop("scales", None)
        kwargs.pop("rotations", None)
        return OpenCVExtractor(name, **kwargs)
    if name in learned.shipped_models():
        return learned.load_shipped(name, **kwargs)
    if name.endswith(".pt") or Path(name).is_dir():
        return learned.load_checkpoint_extractor(name, **kwargs)
    raise KeyError(f"unknown feature {name!r}; available: {', '.join(available_features())}")
