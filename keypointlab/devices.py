"""The torch device a command or an extractor runs on, checked once before any work.

``torch.device("bogus")`` fails with a list of every backend torch was ever built for, and
``--device cuda`` on a CPU build of torch only fails when the first tensor moves, deep in
a model. :func:`check_device` turns both into one :class:`~keypointlab.errors.InputError`
that names the device and what this machine has.
"""

from __future__ import annotations

import torch

from keypointlab.errors import InputError

SUPPORTED = ("cpu", "cuda", "mps")  # device types KeypointLab runs on


def available_devices() -> list[str]:
    """The devices this torch build and machine can run on: ``cpu``, then ``cuda:0``...
    and ``mps`` when present."""
    names = ["cpu"]
    if torch.cuda.is_available():
        names += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        names.append("mps")
    return names


def _unavailable(dev: torch.device) -> str | None:
    """Why ``dev`` cannot be used here (``None`` when it can)."""
    if dev.type == "cpu":
        return None
    if dev.type == "cuda":
        if torch.version.cuda is None and getattr(torch.version, "hip", None) is None:
            return f"this PyTorch build ({torch.__version__}) has no CUDA support"
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            return "no CUDA GPU is visible"
        if dev.index is not None and dev.index >= count:
            return f"only {count} CUDA device(s) are visible"
        return None
    if dev.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        return None if mps is not None and mps.is_available() else "MPS is not available"
    return f"device type {dev.type!r} is not supported (use one of {', '.join(SUPPORTED)})"


def check_device(device: str | torch.device, what: str = "device") -> torch.device:
    """``device`` as a :class:`torch.device`, refused up front if this machine lacks it.

    Args:
        device: a name (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``) or a device.
        what: how the caller names the setting in messages (``"--device"``,
            ``"train.device"``).

    Raises:
        InputError: ``device`` is not a device name, or names a device this torch build
            or machine does not have; the message names it and lists the available ones.
    """
    available = ", ".join(available_devices())
    if isinstance(device, torch.device):
        dev = device
    elif isinstance(device, str):
        try:
            dev = torch.device(device)
        except (RuntimeError, ValueError):
            raise InputError(
                f"{what} {device!r}: not a device name (e.g. cpu, cuda, cuda:1, mps); "
                f"available: {available}"
            ) from None
    else:
        raise InputError(
            f"{what}: expected a device name such as 'cpu' or 'cuda', got {device!r} "
            f"({type(device).__name__})"
        )
    reason = _unavailable(dev)
    if reason:
        raise InputError(
            f"{what} {str(device)!r} is not available: {reason}; available: {available}"
        )
    return dev
