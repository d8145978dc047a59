"""Strict configuration: nested dicts merged onto defaults, failing on unknown keys.

A typo in a key or a value of the wrong type fails at once and names the key, instead of
being silently ignored hours into training.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml


class ConfigError(KeyError):
    """An unknown key, a value of the wrong type or an unreadable config file."""

    def __str__(self) -> str:
        return str(self.args[0])


def _check_type(key: str, default: Any, value: Any) -> Any:
    if default is None or value is None:
        return value
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"config key {key!r}: expected true/false, got {value!r}")
        return value
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(default, (int, float, str)) and not isinstance(value, type(default)):
        raise ConfigError(f"config key {key!r}: expected {type(default).__name__}, got {value!r}")
    if isinstance(default, (list, tuple)) and not isinstance(value, (list, tuple)):
        raise ConfigError(f"config key {key!r}: expected a list, got {value!r}")
    return value


def merge(default: dict[str, Any], override: dict[str, Any] | None, prefix: str = "") -> dict:
    """``default`` updated by ``override``, recursively; unknown keys raise :class:`ConfigError`.

    A default value of ``{}`` (an empty dict) accepts any keys below it.
    """
    out = copy.deepcopy(default)
    for key, value in (override or {}).items():
        path = f"{prefix}{key}"
        if key not in out:
            known = ", ".join(sorted(out)) or "(none)"
            raise ConfigError(f"unknown config key {path!r}; known keys here: {known}")
        if isinstance(out[key], dict) and out[key]:
            if not isinstance(value, dict):
                raise ConfigError(f"config key {path!r}: expected a mapping, got {value!r}")
            out[key] = merge(out[key], value, path + ".")
        else:
            out[key] = _check_type(path, out[key], value)
    return out


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["a.b=1", "c=true"]`` to ``{"a": {"b": 1}, "c": True}`` (values parsed as YAML)."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key=value")
        key, raw = item.split("=", 1)
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = yaml.safe_load(raw)
    return out


def deep_update(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict update without any checking (for layering config files)."""
    out = copy.deepcopy(base)
    for k, v in update.items():
        out[k] = (
            deep_update(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
        )
    return out


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a config file; a ``base:`` key names a file (relative to this one) it extends."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config ({exc.strerror or exc})") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML ({exc})") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config file must hold a mapping")
    base = data.pop("base", None)
    if base:
        data = deep_update(load_yaml(path.parent / base), data)
    return data
