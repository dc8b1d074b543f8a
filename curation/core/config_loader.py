"""Config files onto frozen dataclasses: the one loader of the curation run
(curation/core/config.py) and the trainer (training/config.py).

`read_config_file` reads TOML, YAML or JSON; `merge_dicts` lays one table over another (profile
< file < overrides); `build_config` maps a table onto a Config dataclass, nested Configs,
tuples of them and optional fields included, and fails on unknown keys and wrong types with
the dotted path of the field, in one line. `check_positive` is the `> 0` check the Config
classes share. This module imports no stage, so every stage module can hold its own Config.

Why pydantic for the mapping: turning nested tables into typed dataclasses (unions, optionals,
tuples of dataclasses, dict values, Literal) is what pydantic does, and a well-kept library
used everywhere beats our own loader: the hand-written one it replaces never handled a union
(README's multi-frame-rate `fps = [8, 16]` was refused as "must be a number"). The Config
classes stay plain frozen dataclasses that validate themselves in `__post_init__` (each
component owns its Config; nothing but this module knows about pydantic, apart from the
trainer's `lora = false`); pydantic checks the types and builds them, and `_message` words its
first error as our one-line message (the CLI prints it and exits 2).

Strict and through JSON: a config file should say what it means, so "no" is not false and
"0.1" is not a number (pydantic's lax mode would take both). In strict Python mode a list is
not a tuple and a table is not a dataclass, while in JSON mode arrays and objects are what a
config file holds; so the table is validated as JSON text (`validate_json(strict=True)`). Ints
are taken where a number belongs (and become floats there). Unknown keys: `extra="forbid"` at
validation (pydantic >= 2.12), as plain dataclasses carry no pydantic config of their own.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import pydantic
import yaml

T = TypeVar("T")


def check_positive(obj: object, *names: str) -> None:
    """ValueError naming the first of `names` that is not > 0 (the Config classes' `__post_init__`)."""
    for n in names:
        if getattr(obj, n) <= 0:
            raise ValueError(f"{type(obj).__name__}.{n} must be > 0, got {getattr(obj, n)}")


@functools.cache
def _adapter(cls: type) -> pydantic.TypeAdapter:
    return pydantic.TypeAdapter(cls)


def build_config(cls: type[T], data: Any, path: str = "") -> T:
    """Dataclass `cls` from a plain table (what a config file holds). ValueError in one line,
    naming the field by its dotted path (`path`: where `data` sits in the whole config)."""
    try:
        text = json.dumps(data, default=_plain)
    except (TypeError, ValueError) as e:  # TypeError: a non-str key (json.dumps raises it)
        raise ValueError(f"{path or 'config'}: {e}") from None
    try:
        return _adapter(cls).validate_json(text, strict=True, extra="forbid")
    except pydantic.ValidationError as e:
        raise ValueError(_message(cls, e.errors(), path)) from None


def _plain(value: Any) -> Any:
    """What json.dumps cannot write: a Config instance (a resolved config rebuilt) as its table,
    a path as its string; anything else is no config value."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, Path):
        return str(value)
    raise ValueError(f"{value!r} is not a config value (a number, string, true/false, list or table)")


# What a pydantic type error says the value must be, in the words of a config file.
_KINDS = {"float": "a number", "int": "an integer", "bool": "true or false", "string": "a string", "tuple": "a list",
          "list": "a list", "dict": "a table", "dataclass": "a table", "none": "null"}


def _message(cls: type, errors: list[dict], prefix: str) -> str:
    """Pydantic's errors as one line: every unknown key (with a close known name when there is
    one), else the first error with the field's dotted path."""
    located = [(_walk(cls, e["loc"], prefix), e) for e in errors]
    unknown = [(where, e) for where, e in located if e["type"] in ("unexpected_keyword_argument", "extra_forbidden")]
    unknown.sort(key=lambda u: len(u[1]["loc"]))  # pydantic lists a table's own extras after its fields'
    if unknown:
        keys = ", ".join(path + _suggest(e["loc"][-1], _fields(within), f"{parent}." if parent else "")
                         for (path, parent, within), e in unknown)
        return f"unknown config key{'s' if len(unknown) > 1 else ''}: {keys}"
    (path, _, _), first = located[0]
    name = path or "config"
    if first["type"] in ("value_error", "assertion_error"):  # a Config's __post_init__: its own message
        return str(first.get("ctx", {}).get("error", first["msg"]))
    if first["type"] == "missing":
        return f"missing config key: {name}"
    if first["type"] == "literal_error":
        return f"{name} must be {first['ctx']['expected']}, got {first['input']!r}"
    if first["type"] in ("too_short", "too_long"):
        n = first["ctx"].get("max_length", first["ctx"].get("min_length"))
        return f"{name} must hold {n} values, got {first['input']!r}"
    # A union's members fail one by one at the same path: "a number or a list".
    kinds = [_KINDS.get(e["type"].split("_")[0]) for (p, _, _), e in located if p == path]
    if all(kinds):
        return f"{name} must be {' or '.join(dict.fromkeys(kinds))}, got {first['input']!r}"
    return f"{name}: {' '.join(first['msg'].split())}"


def _walk(cls: type, loc: tuple, prefix: str) -> tuple[str, str, Any]:
    """(the dotted path of pydantic's `loc`, the path of its parent, the parent's type), following
    `loc` through the type hints from `cls`. Pydantic puts the union member it tried in `loc`
    ("float", "tuple[float, ...]"): not part of the path."""
    path, hint = prefix, cls
    parent, within = prefix, cls
    for key in loc:
        hint = _unwrap(hint)
        if typing.get_origin(hint) in (typing.Union, types.UnionType):
            hint = next((m for m in typing.get_args(hint) if _named(m, str(key))), Any)
            continue
        parent, within = path, hint
        path = f"{path}[{key}]" if isinstance(key, int) else f"{path}.{key}" if path else str(key)
        hint = _child(hint, key)
    return path, parent, within


def _unwrap(hint: Any) -> Any:
    """X for Annotated[X, ...] and for X | None (a union of the rest when there are several)."""
    if typing.get_origin(hint) is typing.Annotated:
        hint = typing.get_args(hint)[0]
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in typing.get_args(hint):
        rest = tuple(a for a in typing.get_args(hint) if a is not type(None))
        hint = rest[0] if len(rest) == 1 else typing.Union[rest]
    return hint


def _named(member: Any, tag: str) -> bool:
    origin = typing.get_origin(member) or member
    name = getattr(origin, "__name__", "")
    return tag == name or tag.startswith(f"{name}[")


def _child(hint: Any, key: str | int) -> Any:
    """The type of `key` within `hint`: a dataclass field, a dict value, a tuple item."""
    args = typing.get_args(hint)
    if isinstance(key, int):
        return args[0] if len(args) == 2 and args[1] is Ellipsis else args[key] if key < len(args) else Any
    if dataclasses.is_dataclass(hint):
        return typing.get_type_hints(hint, include_extras=True).get(key, Any)
    return args[1] if typing.get_origin(hint) is dict and len(args) == 2 else Any


def _fields(hint: Any) -> list[str]:
    return [f.name for f in dataclasses.fields(hint)] if dataclasses.is_dataclass(hint) else []


def _suggest(key: str, known: list[str], where: str = "") -> str:
    """' (did you mean WHERE.X?)' for a close misspelling of one of `known`, else ''."""
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    return f" (did you mean {where}{close[0]}?)" if close else ""


def merge_dicts(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = merge_dicts(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def read_config_file(path: str | Path) -> dict[str, Any]:
    """A config file as a dict; ValueError naming the file for what cannot be read or parsed."""
    p = Path(path)
    if p.suffix not in (".toml", ".yaml", ".yml", ".json"):
        raise ValueError(f"config file {p}: unsupported extension {p.suffix!r} (use .toml, .yaml or .json)")
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise ValueError(f"config file {p}: not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"config file {p}: cannot read it ({e})") from None
    try:
        if p.suffix == ".toml":
            data = tomllib.loads(text)
        elif p.suffix == ".json":
            data = json.loads(text)
        else:
            data = yaml.safe_load(text) or {}
    except (ValueError, yaml.YAMLError) as e:  # TOMLDecodeError and JSONDecodeError are ValueErrors
        raise ValueError(f"config file {p}: {' '.join(str(e).split())}") from None
    if not isinstance(data, dict):
        raise ValueError(f"config file {p}: expected a table of sections, got {type(data).__name__}")
    return data
