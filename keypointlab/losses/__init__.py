"""Losses, one module per method, as pure functions."""

from __future__ import annotations

from typing import Any


def loss_conf(conf: dict[str, Any] | None, defaults: dict[str, Any], name: str) -> dict[str, Any]:
    """``defaults`` updated by ``conf``; a key ``defaults`` lacks raises ``KeyError`` naming
    it and the loss ``name``."""
    c = {**defaults, **(conf or {})}
    unknown = set(c) - set(defaults)
    if unknown:
        raise KeyError(f"{name}: unknown config key(s) {sorted(unknown)}")
    return c
