"""Config sections that come from a registry: one settings dataclass per registered entry.

A schema field made with ``sections_field(entries)`` holds ``{name: settings}`` with one settings
object for each entry ``entries()`` lists *when the config is built*, not when the schema is
imported, so an entry registered later gets its section too. The field's own name is no config
key: an entry's keys are ``<parent>.<name>.<key>``, or ``<parent>.<key>`` for an ``inline`` entry.
The config loader validates and lists these keys (src/config/loader.py); ``settings_dict`` is
``dataclasses.asdict`` with that layout (config.yaml, checkpoint fingerprints).
"""
from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

_METADATA_KEY = "registry_sections"


@dataclass(frozen=True)
class Section:
    """One entry's settings: a dataclass whose fields all have defaults. ``inline``: its keys sit
    in the parent section itself instead of under the entry's name."""

    settings: type
    inline: bool = False


Entries = Callable[[], Mapping[str, Section]]


def sections_field(entries: Entries) -> Any:
    """A dataclass field holding one settings object per entry of ``entries()`` (defaults)."""
    return dataclasses.field(default_factory=lambda: complete_sections(entries, {}),
                             metadata={_METADATA_KEY: entries})


def section_entries(field: dataclasses.Field) -> Entries | None:
    """The entries of a field made by ``sections_field``; None for any other field."""
    return field.metadata.get(_METADATA_KEY)


def complete_sections(entries: Entries, given: Mapping[str, Any]) -> dict[str, Any]:
    """``given`` in registration order, with default settings for every entry it lacks."""
    known = entries()
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise ValueError(f"no section named {', '.join(unknown)}; known: {', '.join(known)}")
    return {name: given[name] if name in given else section.settings() for name, section in known.items()}


def section_keys(entries: Entries, taken: Iterable[str]) -> dict[str, str]:
    """Each key the entries add to their parent section -> the entry it belongs to: an entry's
    name, or each field of an inline entry. A key the parent already has (``taken``) or that two
    entries share is a programming error: one of them would be unreachable."""
    owners: dict[str, str] = dict.fromkeys(taken, "")
    for name, section in entries().items():
        keys = [f.name for f in dataclasses.fields(section.settings)] if section.inline else [name]
        for key in keys:
            if key in owners:
                raise TypeError(f"section {name!r} adds the key {key!r}, which the section already has")
            owners[key] = name
    return {key: name for key, name in owners.items() if name}


def settings_dict(obj: Any) -> dict[str, Any]:
    """``dataclasses.asdict(obj)`` with registry sections laid out as their config keys are."""
    out: dict[str, Any] = {}
    for field in dataclasses.fields(obj):
        value = getattr(obj, field.name)
        entries = section_entries(field)
        if entries is None:
            nested = dataclasses.is_dataclass(value)
            out[field.name] = settings_dict(value) if nested else copy.deepcopy(value)
            continue
        known = entries()
        for name, settings in value.items():
            body = settings_dict(settings)
            if name in known and known[name].inline:
                out.update(body)
            else:
                out[name] = body
    return out
