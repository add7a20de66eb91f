"""Reading presets and overrides into a typed `Config`, and writing it back."""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

from pipeline.config.rules import check_ignored_keys, check_values
from pipeline.config.schema import Config, flatten, to_dict
from pipeline.errors import ConfigError


class _YAML12Loader(yaml.SafeLoader):
    """YAML's safe loader with YAML 1.2 booleans: only true/false, so `on`, `off`, `yes` and
    `no` stay strings (`train.mixed_precision: on` means the string "on")."""


_YAML12Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


_YAML12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


# YAML 1.2 floats include `1e-3` (no dot), which YAML 1.1 reads as a string.
_YAML12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def _load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_YAML12Loader)  # a SafeLoader: no Python objects


def load_config(path: str | Path | None = None, overrides: typing.Sequence[str] = ()) -> Config:
    """Build a config from the defaults, an optional YAML preset and `key=value` overrides.

    Args:
        path: a YAML file whose nested mappings mirror `Config`.
        overrides: strings such as `train.epochs=3`; values are parsed as YAML scalars.

    Returns:
        The validated, frozen config.
    """
    tree: dict[str, Any] = {}
    # Which layer set each dotted key last: 0 the preset, 1.. the overrides in order.
    layers: dict[str, int] = {}
    if path is not None:
        tree = read_yaml(Path(path))
        layers = {key: 0 for key in _dotted_keys(tree)}
        if "name" not in tree:
            tree["name"] = Path(path).stem
    for layer, item in enumerate(overrides, start=1):
        key, value = parse_override(item)
        _set_dotted(tree, key, value)
        layers[key] = layer
    config = _build(Config, tree, prefix="")
    check_values(config)
    check_ignored_keys(config, layers)
    return config


def parse_override(item: str) -> tuple[str, Any]:
    """Split `a.b=value` into its key and its YAML-parsed value."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {item!r} is not KEY=VALUE (for example train.epochs=3)")
    try:
        value = _load_yaml(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    # Only scalars are parsed, and lists for a key that holds a list: `ROMEO:` or `[x]` stay the
    # strings they were typed as.
    if isinstance(value, dict) or (isinstance(value, list) and not _holds_list(key.strip())):
        value = raw
    return key.strip(), value


def _holds_list(key: str) -> bool:
    """Whether the dotted config `key` holds a list (False for an unknown key, refused later)."""
    cls: Any = Config
    for part in key.split("."):
        hints = typing.get_type_hints(cls) if dataclasses.is_dataclass(cls) else {}
        if part not in hints:
            return False
        cls = hints[part]
    return typing.get_origin(cls) is tuple


def dump_yaml(config: Config, path: Path) -> None:
    """Write the resolved config, loadable again with `load_config(path)`."""
    path.write_text(yaml.safe_dump(to_dict(config), sort_keys=False), encoding="utf-8")


def with_values(config: Config, values: dict[str, Any]) -> Config:
    """`config` with some dotted keys set to new values, checked as `load_config` checks a preset.

    Args:
        config: the config to start from.
        values: new values by dotted key, e.g. `{"model.units": 96}` (a sweep trial's values).

    Returns:
        The new, validated config; a `ConfigError` names an unknown key or a bad value.
    """
    tree = to_dict(config)
    for key, value in values.items():
        check_key(key)
        _set_dotted(tree, key, value)
    changed = _build(Config, tree, prefix="")
    check_values(changed)
    return changed


def check_key(key: str) -> None:
    """Raise `ConfigError` unless `key` is a dotted config key such as `model.units`; the message
    names the nearest valid key."""
    valid = list(flatten(Config()))
    if key not in valid:
        raise ConfigError(_unknown_key_message(key, valid))


def read_yaml(path: Path, kind: str = "config file",
              missing: str = "pass a YAML preset from configs/") -> dict[str, Any]:
    """A YAML file holding a mapping, read as presets are read (YAML 1.2 booleans and floats).

    Args:
        path: the file.
        kind: what the file is, for error messages ("config file", "space file").
        missing: the fix to suggest when the file does not exist.
    """
    if not path.is_file():
        raise ConfigError(f"{kind} {path} does not exist; {missing}")
    try:
        tree = _load_yaml(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ConfigError(f"{kind} {path} is not valid UTF-8 YAML: {err}") from None
    if tree is None:
        return {}
    if not isinstance(tree, dict):
        raise ConfigError(f"{kind} {path} must hold a mapping of keys, not {type(tree).__name__}")
    return tree


def _dotted_keys(tree: dict[str, Any], prefix: str = "") -> list[str]:
    keys = []
    for key, value in tree.items():
        keys += _dotted_keys(value, f"{prefix}{key}.") if isinstance(value, dict) else [f"{prefix}{key}"]
    return keys


def _set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    node = tree
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {key}: {part} is a value, not a section")
        node = child
    node[parts[-1]] = value


def _build(cls: type, tree: dict[str, Any], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if key not in names:
            raise ConfigError(_unknown_key_message(dotted, [f"{prefix}{n}" for n in names]))
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            if not isinstance(value, dict):
                raise ConfigError(f"config key {dotted} is a section; set its keys, e.g. {dotted}.x")
            kwargs[key] = _build(hint, value, prefix=f"{dotted}.")
        else:
            kwargs[key] = _coerce(dotted, value, hint)
    return cls(**kwargs)


def _unknown_key_message(key: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    hint = f"did you mean {close[0]}?" if close else f"valid keys here: {', '.join(valid)}"
    return f"unknown config key {key}; {hint}"


def _coerce(key: str, value: Any, hint: Any) -> Any:
    """Check `value` against the annotation `hint`, allowing int -> float only."""
    origin = typing.get_origin(hint)
    if origin is Literal:
        choices = typing.get_args(hint)
        if value not in choices:
            raise ConfigError(f"config key {key} must be one of {', '.join(map(str, choices))}; got {value!r}")
        return value
    if origin is tuple:
        # A list, or one string of comma-separated items (as a command line gives it).
        items = [part.strip() for part in value.split(",")] if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)) or not all(isinstance(i, str) for i in items):
            raise ConfigError(f"config key {key} must be a list of strings; got {value!r}")
        return tuple(i for i in items if i)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        hint = next(o for o in options if o is not type(None))
    if hint in (int, float) and isinstance(value, str):
        value = _number(value, hint)  # "3" from a quoted YAML value or a tool means 3
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
        raise ConfigError(
            f"config key {key} must be {hint.__name__}; got {value!r} ({type(value).__name__})"
        )
    return value


def _number(text: str, hint: type) -> Any:
    """`text` as an int or float when it spells one exactly, else unchanged (and then refused)."""
    try:
        return hint(text.strip())
    except ValueError:
        return text
