"""One registry mechanism for everything found by name: methods, data sources, benchmarks.

A :class:`Registry` maps names to objects that register themselves where they are defined
(``@METHODS.register("kp2d")`` on the class), so adding one never edits a shared list.
A name that is not registered yet is looked up by import path, as glue-factory does:

1. the module ``<package>.<name>`` (``keypointlab.models.d2net`` for ``d2net``);
2. every module of ``<package>`` (one file may define several entries, e.g. MagicPoint
   beside SuperPoint), found with :mod:`pkgutil`, not from a list;
3. a dotted path outside the package, ``my_project.my_method`` (the module registers its
   entries on import) or ``my_project.my_method:ToyMethod`` (the object itself).

Each entry remembers the module it was defined in (:meth:`Registry.module_of`), so a
checkpoint can record it and a fresh process can find a method defined outside the package.
"""

from __future__ import annotations

import importlib
import logging
import pkgutil
from collections.abc import Iterator
from typing import Any, Generic, TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")


class RegistryError(KeyError):
    """An unknown name, or a name registered twice."""

    def __str__(self) -> str:  # KeyError quotes its message; show it plainly
        return str(self.args[0])


class Registry(Generic[T]):
    """Objects of one kind by name.

    Args:
        kind: what the entries are, for messages (``"method"``).
        package: the package whose modules are imported to find unregistered names.
    """

    def __init__(self, kind: str, package: str | None = None) -> None:
        self.kind = kind
        self.package = package
        self._entries: dict[str, T] = {}
        self._modules: dict[str, str] = {}
        self._scanned = False

    def register(self, name: str, obj: T | None = None, module: str | None = None) -> Any:
        """Register ``obj`` under ``name``; without ``obj``, a decorator that does.
        ``module`` is where it is defined (default: ``obj.__module__``).

        Registering the same object again (a module imported twice) is harmless; another
        object under a taken name raises :class:`RegistryError`.
        """
        if obj is None:

            def decorator(o: T) -> T:
                self.register(name, o)
                return o

            return decorator
        old = self._entries.get(name)
        if old is not None and old is not obj and old != obj and _qualname(old) != _qualname(obj):
            raise RegistryError(f"{self.kind} {name!r} is already registered ({_qualname(old)})")
        self._entries[name] = obj
        self._modules[name] = module or getattr(obj, "__module__", "") or ""
        return obj

    def get(self, name: str, module: str | None = None) -> T:
        """The entry called ``name``, importing what is needed to find it (see the module
        docstring); ``module`` is where it was defined, when known (from a checkpoint).

        Raises:
            RegistryError: no such entry; the message lists the known names.
        """
        if name not in self._entries:
            self._find(name, module)
        if name not in self._entries:
            raise RegistryError(
                f"unknown {self.kind} {name!r}; known: {', '.join(self.names()) or '(none)'}"
            )
        return self._entries[name]

    def module_of(self, name: str) -> str:
        """The module that defined entry ``name``."""
        self.get(name)
        return self._modules[name]

    def names(self) -> list[str]:
        """Every known name (all modules of the package imported)."""
        self._scan()
        return sorted(self._entries)

    def items(self) -> Iterator[tuple[str, T]]:
        """``(name, entry)`` pairs of every known entry, sorted by name."""
        for name in self.names():
            yield name, self._entries[name]

    def __contains__(self, name: str) -> bool:
        try:
            self.get(name)
        except RegistryError:
            return False
        return True

    # -- lookup -----------------------------------------------------------------
    def _find(self, name: str, module: str | None) -> None:
        if module:
            _import(module)
        if name not in self._entries and self.package and name.isidentifier():
            _import(f"{self.package}.{name}")
        if name not in self._entries:
            self._scan()
        if name not in self._entries and ("." in name or ":" in name):
            self._import_path(name)

    def _scan(self) -> None:
        if self._scanned or not self.package:
            return
        self._scanned = True
        pkg = importlib.import_module(self.package)
        for info in pkgutil.iter_modules(pkg.__path__, f"{self.package}."):
            _import(info.name)

    def _import_path(self, path: str) -> None:
        module, _, attr = path.partition(":")
        mod = _import(module)
        if mod is not None and attr:
            obj = getattr(mod, attr, None)
            if obj is None:
                raise RegistryError(f"{self.kind} {path!r}: module {module!r} has no {attr!r}")
            self.register(path, obj)


def _import(module: str) -> Any:
    """Import ``module``; ``None`` when it does not exist (errors inside it propagate)."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (module == exc.name or module.startswith(exc.name + ".")):
            return None
        raise


def _qualname(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"


