"""KeypointLab: learn, evaluate and use local image features without labels."""

__version__ = "0.1.0"
