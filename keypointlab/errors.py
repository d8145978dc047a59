"""Exception types for bad input, raised by the Python API and turned into one-line
messages (exit status 2) by the command line.

Every message names the input (file, key, shape or limit) and what would be accepted.
They subclass the built-in types callers already catch (``ValueError``, ``OSError``), so
``except ValueError`` keeps working.
"""

from __future__ import annotations


class KeypointLabError(Exception):
    """Base of the errors KeypointLab raises on purpose."""


class InputError(KeypointLabError, ValueError):
    """An input (image, config, features file, checkpoint, option) cannot be used."""


class LimitError(InputError):
    """An input exceeds a documented limit (pixels, scales, rotations, config size...)."""


class OutputError(KeypointLabError, OSError):
    """An output path cannot be written safely (it is an input, a folder, locked by
    another run, or not writable); raised before any work is done."""


class InputTypeError(InputError, TypeError):
    """An argument of the Python API of the wrong type (``load_extractor(None)``); also a
    ``TypeError``, as Python's own functions raise."""
