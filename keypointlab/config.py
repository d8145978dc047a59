"""Strict configuration: nested dicts merged onto defaults, failing on unknown keys.

A typo in a key or a value of the wrong type fails at once and names the key, instead of
being silently ignored hours into training.

Config text is hostile input until parsed: a file is read only up to
:data:`MAX_CONFIG_BYTES`, and its YAML is measured *before* it is built, as if every alias
were written out (each distinct node is measured once, so a "billion laughs" of 30 nested
aliases costs 30 steps, not 2**30). More than :data:`MAX_CONFIG_NODES` values,
:data:`MAX_CONFIG_TEXT` characters of keys and values or :data:`MAX_CONFIG_DEPTH` levels
of nesting is refused with :class:`keypointlab.errors.LimitError`; a recursive alias, a
loop of ``base:`` files, a value that JSON cannot hold (a date, a set, bytes, NaN) or a
YAML error is a :class:`ConfigError` naming the file or the override.
"""

from __future__ import annotations

import copy
import math
import os
import stat
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import yaml

from keypointlab.errors import InputError, LimitError

MAX_CONFIG_BYTES = 1_000_000  # size of one config file (the shipped ones are ~1 kB)
MAX_CONFIG_NODES = 100_000  # values (mappings, lists, scalars) once aliases are expanded
MAX_CONFIG_TEXT = 1_000_000  # characters of keys and values once aliases are expanded
MAX_CONFIG_DEPTH = 32  # levels of nesting (the shipped configs use 7 at most)
MAX_BASE_CHAIN = 16  # config files in one chain of ``base:`` keys


class ConfigError(InputError, KeyError):
    """An unknown key, a value of the wrong type or an unreadable config file.

    An :class:`~keypointlab.errors.InputError` (so a ``ValueError``), and a ``KeyError``
    as it always was.
    """

    def __str__(self) -> str:
        return str(self.args[0])


def _short(value: Any, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` characters, for messages about hostile values."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# -- bounds ------------------------------------------------------------------------------
Parts = Callable[[Any, str], tuple[Iterable[tuple[Any, str]], int]]


def _label(where: str) -> str:
    """``""`` (the root), a key path ``train.steps`` or a description ``the value at ...``."""
    if not where:
        return "the config"
    return where if where.startswith("the ") else f"config key {where!r}"


def _measure(root: Any, source: str, parts: Parts, where: str = "") -> None:
    """Refuse ``root`` when, with every shared node written out, it would exceed the limits.

    ``parts(item, where)`` gives the children of ``item`` as ``(child, where)`` pairs and
    the characters ``item`` holds itself. Each distinct item is measured once (memoised by
    identity), so the cost is that of the graph, not of its expansion.
    """
    sizes: dict[int, tuple[int, int, int]] = {}  # id -> (values, characters, height)
    open_items: set[int] = set()

    def visit(item: Any, where: str, depth: int) -> tuple[int, int, int]:
        key = id(item)
        if key in open_items:
            raise ConfigError(f"{source}: {_label(where)} contains itself (a recursive YAML alias)")
        if key not in sizes:
            if depth > MAX_CONFIG_DEPTH:
                _too_deep(source, where)
            children, chars = parts(item, where)
            nodes, height = 1, 0
            open_items.add(key)
            for child, child_where in children:
                n, c, h = visit(child, child_where, depth + 1)
                nodes, chars, height = nodes + n, chars + c, max(height, h + 1)
                _check_totals(source, nodes, chars)
            open_items.discard(key)
            sizes[key] = (nodes, chars, height)
        size = sizes[key]
        if depth + size[2] > MAX_CONFIG_DEPTH:
            _too_deep(source, where)
        return size

    visit(root, where, 0)


def _check_totals(source: str, nodes: int, chars: int) -> None:
    if nodes > MAX_CONFIG_NODES:
        raise LimitError(
            f"{source}: config too large: more than {MAX_CONFIG_NODES:,} values once YAML "
            "aliases are expanded (the limit, keypointlab.config.MAX_CONFIG_NODES)"
        )
    if chars > MAX_CONFIG_TEXT:
        raise LimitError(
            f"{source}: config too large: more than {MAX_CONFIG_TEXT:,} characters once "
            "YAML aliases are expanded (the limit, keypointlab.config.MAX_CONFIG_TEXT)"
        )


def _too_deep(source: str, where: str) -> None:
    raise LimitError(
        f"{source}: {_label(where)} is nested more than {MAX_CONFIG_DEPTH} levels deep (the "
        "limit, keypointlab.config.MAX_CONFIG_DEPTH)"
    )


def _yaml_parts(node: yaml.Node, where: str) -> tuple[list[tuple[Any, str]], int]:
    """Children of a composed YAML node (before anything is built from it)."""
    if isinstance(node, yaml.ScalarNode):
        return [], len(node.value)
    pairs = node.value if isinstance(node, yaml.MappingNode) else [(n,) for n in node.value]
    return [(n, f"the value at line {n.start_mark.line + 1}") for p in pairs for n in p], 0


def _tree_parts(source: str) -> Parts:
    """Children of a built config value; anything JSON cannot hold is a ConfigError."""

    def parts(value: Any, where: str) -> tuple[list[tuple[Any, str]], int]:
        name, prefix = _label(where), f"{where}." if where else ""
        if isinstance(value, dict):
            for k in value:
                if not isinstance(k, str):
                    raise ConfigError(
                        f"{source}: {name}: key {_short(k)} is not a string (quote it; YAML "
                        "reads on/off/yes/no as true/false)"
                    )
            return [(v, prefix + k) for k, v in value.items()], sum(map(len, value))
        if isinstance(value, (list, tuple)):
            return [(v, f"{where}[{i}]") for i, v in enumerate(value)], 0
        if isinstance(value, str):
            return [], len(value)
        if isinstance(value, float) and math.isnan(value):
            raise ConfigError(f"{source}: {name}: NaN is not a usable value")
        if value is None or isinstance(value, (bool, int, float)):
            return [], 1 + (value.bit_length() // 3 if type(value) is int else 8)
        raise ConfigError(
            f"{source}: {name}: a {type(value).__name__} value cannot be in a config "
            f"(got {_short(value)}; quote it to make it a string)"
        )

    return parts


def check_config_tree(tree: Any, source: str, key: str = "") -> None:
    """Refuse a built config value (that of config key ``key``; ``""``: a whole config)
    that is too large (counted with shared parts written out), nested too deep, recursive,
    or holding what JSON cannot (a key that is not a string, a date, a set, bytes, NaN).

    Raises:
        keypointlab.errors.LimitError: over :data:`MAX_CONFIG_NODES`,
            :data:`MAX_CONFIG_TEXT` or :data:`MAX_CONFIG_DEPTH`.
        ConfigError: any other reason; the message names ``source`` and the key.
    """
    _measure(tree, source, _tree_parts(source), key)


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing nesting deeper than :data:`MAX_CONFIG_DEPTH` while it
    composes (its composer recurses, so this comes before Python's recursion limit)."""

    def __init__(self, stream: str | bytes, source: str) -> None:
        super().__init__(stream)
        self._source = source
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self._depth += 1
        try:
            if self._depth > MAX_CONFIG_DEPTH + 1:
                line = self.peek_event().start_mark.line + 1
                _too_deep(self._source, f"the value at line {line}")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """A YAML error on one line: where and what."""
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem:
        mark = exc.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        context = f" ({exc.context})" if exc.context else ""
        return f"{where}{exc.problem}{context}"
    return " ".join(str(exc).split())


def parse_config_text(text: str | bytes, source: str, key: str = "") -> Any:
    """The value of one YAML document, refused before it is built when it would be too
    large once its aliases are expanded (see the module docstring).

    Raises:
        keypointlab.errors.LimitError: over a limit; names ``source`` and the limit.
        ConfigError: invalid YAML or a value JSON cannot hold; names ``source``.
    """
    if len(text) > MAX_CONFIG_BYTES:
        raise LimitError(
            f"{source}: longer than {MAX_CONFIG_BYTES:,} bytes (the limit, "
            "keypointlab.config.MAX_CONFIG_BYTES)"
        )
    loader = None
    try:
        loader = _BoundedLoader(text, source)  # reading bytes checks their encoding here
        node = loader.get_single_node()
        if node is None:
            return None
        _measure(node, source, _yaml_parts, key)
        data = loader.construct_document(node)
    except InputError:
        raise
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: invalid YAML ({_yaml_problem(exc)})") from None
    except RecursionError:
        raise LimitError(f"{source}: YAML nested too deeply to read") from None
    except (ValueError, TypeError, AttributeError, LookupError, OverflowError) as exc:  # !!tags
        msg = " ".join(str(exc).split())[:200]
        raise ConfigError(f"{source}: invalid YAML value ({type(exc).__name__}: {msg})") from None
    finally:
        if loader is not None:
            loader.dispose()
    check_config_tree(data, source, key)
    return data


# -- merging -----------------------------------------------------------------------------
def _kind(default: Any) -> str:
    if isinstance(default, bool):
        return "true/false"
    if isinstance(default, (list, tuple)):
        return "a list"
    if isinstance(default, dict):
        return "a mapping"
    return type(default).__name__


def _check_type(key: str, default: Any, value: Any) -> Any:
    if default is None:
        return value
    if value is None:  # `key:` with nothing after it, or `key=` on the command line
        raise ConfigError(
            f"config key {key!r}: expected {_kind(default)}, got nothing (null); leave the "
            "key out to keep its default"
        )
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"config key {key!r}: expected true/false, got {_short(value)}")
        return value
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(default, (int, float, str)) and not isinstance(value, type(default)):
        raise ConfigError(
            f"config key {key!r}: expected {type(default).__name__}, got {_short(value)}"
        )
    if isinstance(default, (list, tuple)) and not isinstance(value, (list, tuple)):
        raise ConfigError(f"config key {key!r}: expected a list, got {_short(value)}")
    if isinstance(default, dict) and not isinstance(value, dict):
        raise ConfigError(f"config key {key!r}: expected a mapping, got {_short(value)}")
    return value


def merge(default: dict[str, Any], override: dict[str, Any] | None, prefix: str = "") -> dict:
    """``default`` updated by ``override``, recursively; unknown keys raise :class:`ConfigError`.

    A default value of ``{}`` (an empty dict) accepts any keys below it.
    """
    if override is not None and not isinstance(override, dict):
        where = prefix.rstrip(".") or "the config"
        raise ConfigError(f"config key {where!r}: expected a mapping, got {_short(override)}")
    out = copy.deepcopy(default)
    for key, value in (override or {}).items():
        path = f"{prefix}{key}"
        if key not in out:
            known = ", ".join(sorted(out)) or "(none)"
            raise ConfigError(f"unknown config key {path!r}; known keys here: {known}")
        if isinstance(out[key], dict) and value is None:
            continue  # an empty section (`optim:` with nothing below it) keeps the defaults
        if isinstance(out[key], dict) and out[key]:
            if not isinstance(value, dict):
                raise ConfigError(f"config key {path!r}: expected a mapping, got {_short(value)}")
            out[key] = merge(out[key], value, path + ".")
        else:
            out[key] = _check_type(path, out[key], value)
    return out


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["a.b=1", "c=true"]`` to ``{"a": {"b": 1}, "c": True}`` (values parsed as YAML,
    bounded like a config file; a YAML error names the override)."""
    out: dict[str, Any] = {}
    for item in items:
        if not isinstance(item, str) or "=" not in item:
            raise ConfigError(f"override {_short(item)}: expected key=value")
        key, raw = item.split("=", 1)
        parts = [p.strip() for p in key.split(".")]
        if not all(parts):
            raise ConfigError(f"override {_short(item)}: expected key=value, e.g. train.steps=100")
        value = parse_config_text(raw, f"override {_short(item)}", ".".join(parts))
        node = out
        for i, part in enumerate(parts[:-1]):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(
                    f"override {_short(item)}: {'.'.join(parts[: i + 1])!r} is set to a value "
                    "by an earlier override"
                )
        node[parts[-1]] = value
    return out


def deep_update(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict update without any checking (for layering config files)."""
    out = copy.deepcopy(base)
    for k, v in update.items():
        out[k] = (
            deep_update(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
        )
    return out


# -- files -------------------------------------------------------------------------------
def _read_config(path: Path) -> bytes:
    """The bytes of a config file, refused before reading when it is not a regular file
    or longer than :data:`MAX_CONFIG_BYTES`."""
    try:
        regular = stat.S_ISREG(os.stat(path).st_mode)
        data = b""
        if regular:  # never open a FIFO or a device: reading could block or never end
            with open(path, "rb") as f:
                data = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config ({exc.strerror or exc})") from exc
    except ValueError as exc:  # a NUL in the name
        raise ConfigError(f"{str(path)!r}: cannot read config ({exc})") from exc
    if not regular:
        raise ConfigError(f"{path}: cannot read config (not a regular file)")
    if len(data) > MAX_CONFIG_BYTES:
        raise LimitError(
            f"{path}: config file larger than {MAX_CONFIG_BYTES:,} bytes (the limit, "
            "keypointlab.config.MAX_CONFIG_BYTES)"
        )
    return data


def load_yaml(path: str | Path, _chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a config file; a ``base:`` key names a file (relative to this one) it extends.

    Raises:
        ConfigError: unreadable, invalid YAML, not a mapping, or a ``base:`` chain that
            comes back to a file already in it (the message lists the chain).
        keypointlab.errors.LimitError: over a limit of this module.
    """
    path = Path(path)
    chain = (*_chain, path)
    data = parse_config_text(_read_config(path), str(path))
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: a config file must hold a mapping (key: value lines), "
            f"got a {type(data).__name__}"
        )
    base = data.pop("base", None)
    if base is None or base == "":
        return data
    if not isinstance(base, str):
        raise ConfigError(f"{path}: 'base' must name a config file, got {_short(base)}")
    if "\0" in base:
        raise ConfigError(f"{path}: 'base' must name a config file, got {_short(base)}")
    base_path = path.parent / base
    if os.path.realpath(base_path) in {os.path.realpath(p) for p in chain}:
        loop = " -> ".join(str(p) for p in (*chain, base_path))
        raise ConfigError(f"{path}: the 'base:' chain loops: {loop}")
    if len(chain) >= MAX_BASE_CHAIN:
        raise LimitError(
            f"{path}: more than {MAX_BASE_CHAIN} config files in one 'base:' chain (the "
            "limit, keypointlab.config.MAX_BASE_CHAIN)"
        )
    return deep_update(load_yaml(base_path, chain), data)
