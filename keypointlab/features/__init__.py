"""Feature extractors: classical (OpenCV) and learned, behind one interface."""

from keypointlab.features.base import Extractor, Features
from keypointlab.features.registry import available_features, get_extractor

__all__ = ["Extractor", "Features", "available_features", "get_extractor"]
