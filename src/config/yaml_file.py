"""Reading a user's YAML file strictly: a duplicated key or a non-UTF-8 byte is a one-line error.

PyYAML keeps the last of two equal keys without a word, so a config with two ``train:`` sections
silently trains with only the second; and a Latin-1 comment surfaces as a ``UnicodeDecodeError``
traceback. Both are mistakes a user fixes in the file once told where.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from src.errors import UserError


class _DuplicateKey(yaml.YAMLError):
    """A mapping that gives one key twice (raised while composing, caught by ``load_yaml_text``)."""


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping, naming its dotted path."""

    def construct_document(self, node: yaml.Node) -> Any:
        _check_duplicates(node, "")
        return super().construct_document(node)


def _scalar_key(node: yaml.Node) -> str:
    return str(node.value) if isinstance(node, yaml.ScalarNode) else "<complex key>"


def _check_duplicates(node: yaml.Node, prefix: str) -> None:
    """Walk the composed node tree; the first repeated key raises with both line numbers."""
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            key = _scalar_key(key_node)
            line = key_node.start_mark.line + 1
            if key in seen and key != "<<":
                raise _DuplicateKey(f"key '{prefix}{key}' is given twice (lines {seen[key]} and {line}); "
                                    "PyYAML would keep only the last: delete or merge one")
            seen[key] = line
            _check_duplicates(value_node, f"{prefix}{key}.")
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            _check_duplicates(item, prefix)


def load_yaml_text(text: str, source: str) -> Any:
    """The document in ``text`` (read from ``source``, named in errors); a malformed document or a
    duplicated key -> UserError."""
    try:
        return yaml.load(text, Loader=_StrictLoader)  # a SafeLoader subclass: no arbitrary objects
    except _DuplicateKey as exc:
        raise UserError(f"config file {source}: {exc}") from None
    except yaml.YAMLError as exc:
        raise UserError(f"config file {source} is not valid YAML: {str(exc).splitlines()[0]}") from None


def read_yaml_file(path: str | Path) -> Any:
    """The YAML document in ``path``; missing, unreadable, non-UTF-8 or malformed -> UserError."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"config file not found: {path}") from None
    except OSError as exc:
        raise UserError(f"cannot read config file {path}: {exc.strerror}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise UserError(f"config file {path} is not UTF-8: byte 0x{data[exc.start]:02x} "
                        f"at offset {exc.start} (line {line}); "
                        "save it as UTF-8 (e.g. iconv -f latin1 -t utf-8)") from None
    return load_yaml_text(text, str(path))
