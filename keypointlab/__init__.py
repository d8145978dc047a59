"""KeypointLab: learn, evaluate and use local image features without labels."""

from keypointlab.api import draw_matches, estimate, load_extractor, match
from keypointlab.data.images import ImageReadError
from keypointlab.errors import (
    InputError,
    InputTypeError,
    KeypointLabError,
    LimitError,
    OutputError,
)
from keypointlab.features import Extractor, Features, available_features

__version__ = "0.1.0"

__all__ = [
    "Extractor",
    "Features",
    "ImageReadError",
    "InputError",
    "InputTypeError",
    "KeypointLabError",
    "LimitError",
    "OutputError",
    "available_features",
    "draw_matches",
    "estimate",
    "load_extractor",
    "match",
]
