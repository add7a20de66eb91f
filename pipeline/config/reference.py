"""The key reference, read from the schema: every key with its type, default and help.

`pipeline config` prints it; `pipeline config --markdown` writes the docs page (docs/config.md),
which a test keeps equal to what the schema says.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass
from typing import Any

from pipeline.config.schema import Config


@dataclass(frozen=True)
class KeyDoc:
    """One config key as the reference shows it."""

    name: str
    type: str
    default: Any
    help: str


def key_docs(cls: type = Config, prefix: str = "") -> list[KeyDoc]:
    """Every key below `cls`, in declaration order, sections flattened to dotted names."""
    hints = typing.get_type_hints(cls)
    docs = []
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            docs += key_docs(hint, f"{prefix}{f.name}.")
        else:
            docs.append(KeyDoc(f"{prefix}{f.name}", type_name(hint), f.default, f.metadata["help"]))
    return docs


def type_name(hint: Any) -> str:
    """A type as a user writes its values: `int`, `str or null`, `one of a, b`, `list of str`."""
    origin = typing.get_origin(hint)
    if origin is typing.Literal:
        return "one of " + ", ".join(str(choice) for choice in typing.get_args(hint))
    if origin is tuple:
        return f"list of {typing.get_args(hint)[0].__name__}"
    args = typing.get_args(hint)
    if args and type(None) in args:
        return " or ".join(type_name(a) if a is not type(None) else "null" for a in args)
    return hint.__name__


def _shown(value: Any) -> str:
    return json.dumps(list(value) if isinstance(value, tuple) else value)


def text() -> str:
    """The reference for a terminal: a key, its type and default on one line, the help below it."""
    blocks = [f"{doc.name}  ({doc.type}; default {_shown(doc.default)})\n    {doc.help}" for doc in key_docs()]
    return "\n".join(blocks)


def markdown() -> str:
    """The reference as the docs page: one table per section."""
    lines = ["# Config keys", "",
             "Every key a preset (`configs/*.yaml`) or `--set KEY=VALUE` can set, with its type and default. "
             "This page is generated from the schema by `pipeline config --markdown`; `pipeline config` prints "
             "the same in a terminal."]
    section = None
    for doc in key_docs():
        head = doc.name.split(".")[0] if "." in doc.name else "top level"
        if head != section:
            section = head
            lines += ["", f"## {section}", "", "| key | type | default | what it does |", "|---|---|---|---|"]
        cell = doc.help.replace("|", "\\|")
        lines.append(f"| `{doc.name}` | {doc.type} | `{_shown(doc.default)}` | {cell} |")
    return "\n".join(lines) + "\n"
