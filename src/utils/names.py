"""Names read from the file system, shown the same way everywhere.

``os.listdir`` returns a folder name that is not valid UTF-8 (a Latin-1 name from a zip) with
surrogate escapes, which no encoder, CSV writer, JSON file or matplotlib font can take. Shown with
``\\xe9``-style escapes instead, the name stays readable, unique and printable in the report, the
CSVs, the JSON files and the plots.
"""
from __future__ import annotations


def readable_name(name: str) -> str:
    """``name`` with every undecodable byte as ``\\xNN`` (a valid UTF-8 name is returned as is)."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
