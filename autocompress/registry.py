"""One registry type for the engine's named plug-ins (strategies, agents, evaluators).

Each extension point used to keep its own dict with its own register / list / lookup functions
and its own wording of the same errors. ``Registry`` is that dict once: classes are registered
under a name by a decorator (a duplicate name or a class of the wrong base raises), or lazily
as a ``"module:Class"`` entry point imported on first use (which keeps heavy optional
dependencies out of the package import); an unknown name is a one-line ``UserInputError`` that
lists what is allowed.
"""

from __future__ import annotations

import fnmatch
import importlib
from collections.abc import Callable
from typing import Generic, TypeVar

from autocompress.errors import UserInputError

T = TypeVar("T", bound=type)


class Registry(Generic[T]):
    """Name -> class (or a ``"module:Class"`` entry point not imported yet).

    Args:
        kind: what is registered, as the user names it in errors ("strategy", "agent" ...).
        base: every registered class must subclass it.
        set_name: give each registered class a ``name`` attribute equal to its registered name.
    """

    def __init__(self, kind: str, base: type, *, set_name: bool = True) -> None:
        self.kind, self.base, self.set_name = kind, base, set_name
        self._entries: dict[str, T | str] = {}

    # item access, so that a test can patch an entry in with ``monkeypatch.setitem``
    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def get(self, name: str, default: object = None) -> T | str | object:
        """The raw entry (a class or a lazy entry point), or ``default``: dict-like access."""
        return self._entries.get(name, default)

    def __getitem__(self, name: str) -> T | str:
        return self._entries[name]

    def __setitem__(self, name: str, value: T | str) -> None:
        self._entries[name] = value

    def __delitem__(self, name: str) -> None:
        del self._entries[name]

    def register(self, name: str, entry_point: str | None = None) -> Callable[[T], T]:
        """Decorator registering a class under ``name``; with ``entry_point`` ("module:Class")
        the class is registered lazily right away (the returned decorator then only accepts
        that same class, as its module's own decorator applies it on import)."""
        if entry_point is not None:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._entries[name] = entry_point

        def deco(cls: T) -> T:
            existing = self._entries.get(name)
            # only a lazy entry point naming this very class may be replaced by it
            if existing is not None and existing != f"{cls.__module__}:{cls.__qualname__}":
                raise ValueError(f"{self.kind} {name!r} is already registered")
            if not (isinstance(cls, type) and issubclass(cls, self.base)):
                raise TypeError(f"{self.kind} {name!r} must subclass {self.base.__name__}")
            if self.set_name:
                cls.name = name
            self._entries[name] = cls
            return cls

        return deco

    def names(self, pattern: str = "*") -> list[str]:
        """Registered names matching a glob, sorted."""
        return [n for n in sorted(self._entries) if fnmatch.fnmatch(n, pattern)]

    def lookup(self, name: str) -> T:
        """The class registered as ``name`` (imported now if lazy); an unknown name is a
        one-line error listing the allowed ones."""
        entry = self._entries.get(name)
        if entry is None:
            raise UserInputError(f"unknown {self.kind} {name!r}; allowed: {', '.join(self.names())}")
        if isinstance(entry, str):
            module, _, qual = entry.partition(":")
            cls = getattr(importlib.import_module(module), qual)
            if self.set_name:
                cls.name = name
            self._entries[name] = cls
            return cls
        return entry
