"""Config files onto frozen dataclasses: the one loader of the curation run
(curation/core/config.py) and the trainer (training/config.py).

`read_config_file` reads TOML, YAML or JSON; `merge_dicts` lays one table over another (profile
< file < overrides); `build_config` maps a table onto a Config dataclass, recursing into nested
Configs, and fails on unknown keys and wrong types with the dotted path of the field.
`check_positive` is the `> 0` check the Config classes share. This module imports no stage, so
every stage module can hold its own Config and import it.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import tomllib
import typing
from pathlib import Path
from typing import Any

import yaml


def check_positive(obj: object, *names: str) -> None:
    """ValueError naming the first of `names` that is not > 0 (the Config classes' `__post_init__`)."""
    for n in names:
        if getattr(obj, n) <= 0:
            raise ValueError(f"{type(obj).__name__}.{n} must be > 0, got {getattr(obj, n)}")


def _tuple_item(hint: Any) -> Any:
    """X for a `tuple[X, ...]` hint, else None."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) is tuple and len(args) == 2 and args[1] is Ellipsis:
        return args[0]
    return None


def _suggest(key: str, known: list[str], where: str = "") -> str:
    """' (did you mean WHERE.X?)' for a close misspelling of one of `known`, else ''."""
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    return f" (did you mean {where}{close[0]}?)" if close else ""


def _type_name(hint: Any) -> str:
    return {float: "a number", int: "an integer", bool: "true or false", str: "a string"}.get(hint, str(hint))


def _check_type(hint: Any, value: Any, path: str) -> Any:
    """`value` as field type `hint` wants it, or ValueError naming the field: a string where a
    number belongs would otherwise fail deep inside a stage, or compare as a TypeError."""
    args = typing.get_args(hint)
    if type(None) in args:  # X | None
        if value is None:
            return None
        hint = next(a for a in args if a is not type(None))
        args = typing.get_args(hint)
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return value
    if hint in (int, bool, str):
        if isinstance(value, hint) and (hint is bool or not isinstance(value, bool)):
            return value
        raise ValueError(f"{path} must be {_type_name(hint)}, got {value!r}")
    if hint is float:
        raise ValueError(f"{path} must be a number, got {value!r}")
    origin = typing.get_origin(hint)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{path} must be a list, got {value!r}")
        item = _tuple_item(hint)
        return tuple(_check_type(item, v, f"{path}[{i}]") for i, v in enumerate(value)) if item not in (None, Any) else tuple(value)
    if origin is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{path} must be a table, got {value!r}")
        vt = args[1] if len(args) == 2 else Any
        return {k: _check_type(vt, v, f"{path}.{k}") for k, v in value.items()} if vt is not Any else value
    return value


def build_config(cls: type, data: dict[str, Any], path: str) -> Any:
    """Build dataclass `cls` from a plain dict, recursing into nested configs."""
    if not isinstance(data, dict):
        raise ValueError(f"{path or 'config'}: expected a table, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        where = f"{path}." if path else ""
        keys = ", ".join(where + k + _suggest(k, names, where) for k in unknown)
        raise ValueError(f"unknown config key{'s' if len(unknown) > 1 else ''}: {keys}")
    kwargs = {}
    for name, value in data.items():
        hint = hints[name]
        sub = f"{path}.{name}" if path else name
        item = _tuple_item(hint)
        if dataclasses.is_dataclass(hint):
            kwargs[name] = build_config(hint, value, sub)
        elif item is not None and dataclasses.is_dataclass(item):  # decide.rules, shard.resolutions
            if not isinstance(value, (list, tuple)):
                raise ValueError(f"{sub}: expected a list of tables, got {type(value).__name__}")
            kwargs[name] = tuple(build_config(item, v, f"{sub}[{i}]") for i, v in enumerate(value))
        else:
            kwargs[name] = _check_type(hint, value, sub)
    try:
        return cls(**kwargs)
    except TypeError as e:  # a required field missing
        raise ValueError(f"{path or 'config'}: {e}") from None


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
