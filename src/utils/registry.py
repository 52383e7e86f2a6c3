"""A named registry: the one place a kind of choice (a loss, a dataset, a preset) is listed.

Everything that offers the choice (the config schema's check, the CLI's ``choices``,
validate_project, the benchmarks) reads the names from here, so adding an entry is one
``register`` call in one file.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from src.errors import UserError

T = TypeVar("T")


class Registry(Generic[T]):
    """Entries of one kind by name, in registration order."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str, entry: T) -> T:
        """Add ``entry`` under ``name``; a name registered twice is a programming error."""
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is registered already")
        self._entries[name] = entry
        return entry

    def decorator(self, name: str) -> Callable[[T], T]:
        """``@REGISTRY.decorator("name")`` registers what it decorates."""
        return lambda entry: self.register(name, entry)

    def unregister(self, name: str) -> None:
        """Remove ``name`` (tests that register a toy entry clean up with this)."""
        del self._entries[name]

    def __getitem__(self, name: str) -> T:
        """The entry of ``name``; an unknown name is a UserError listing the known ones."""
        try:
            return self._entries[name]
        except KeyError:
            known = ", ".join(self.names())
            raise UserError(f"unknown {self.kind} {name!r}: choose one of {known}") from None

    def for_key(self, key: str, name: str) -> T:
        """The entry of ``name``, the value of config ``key``: an unknown name is a UserError that
        names the key and lists the known names."""
        try:
            return self[name]
        except UserError as exc:
            raise UserError(f"config key '{key}': {exc}") from None

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def items(self) -> tuple[tuple[str, T], ...]:
        return tuple(self._entries.items())
