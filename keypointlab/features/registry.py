"""Feature extractors found by name: ``get_extractor("sift")``, ``get_extractor("kp2d")``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from keypointlab.features.base import Extractor
from keypointlab.features.classical import OpenCVExtractor, available_opencv_features

# Learned models register a loader here: name -> factory(**kwargs) -> Extractor.
_LOADERS: dict[str, Callable[..., Extractor]] = {}


def register_extractor(name: str, loader: Callable[..., Extractor]) -> None:
    """Make ``get_extractor(name)`` build an extractor with ``loader(**kwargs)``."""
    _LOADERS[name] = loader


def available_features() -> list[str]:
    """Every feature name :func:`get_extractor` accepts."""
    return available_opencv_features() + sorted(_LOADERS)


def get_extractor(name: str, **kwargs: Any) -> Extractor:
    """Build the extractor called ``name``.

    Raises:
        KeyError: ``name`` is unknown; the message lists the known names.
    """
    if name in _LOADERS:
        return _LOADERS[name](**kwargs)
    if name in available_opencv_features():
        return OpenCVExtractor(name, **kwargs)
    raise KeyError(f"unknown feature {name!r}; available: {', '.join(available_features())}")
