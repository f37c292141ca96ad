"""Small typed configs: YAML sections -> dataclasses, unknown keys are errors.

Each component owns a dataclass whose defaults are the only defaults. A recipe's YAML file has
one section per component; `load_yaml` reads it with command-line overrides (``a.b=value``) and
`build` turns one section into its dataclass, naming the file and key on any mistake.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


def load_yaml(path: str | Path, overrides: list[str] = ()) -> dict:
    """Read a YAML config and apply ``section.key=value`` overrides (values parsed as YAML)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"config file not found: {path}")
    with open(path) as f:
        cfg = yaml.safe_load(f) or {}
    if not isinstance(cfg, dict):
        raise ValueError(f"{path}: expected a mapping of sections at the top level")
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"override {item!r}: expected KEY=VALUE, e.g. train.max_steps=100")
        node = cfg
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {item!r}: {p!r} is not a section")
        node[leaf] = yaml.safe_load(value)
    return cfg


def build(cls: type[T], values: dict[str, Any] | None, where: str = "") -> T:
    """Make dataclass ``cls`` from ``values``; unknown keys and wrong types raise ValueError.

    ``where`` names the file and section for messages, e.g. ``"conf/tiny.yaml: train"``.
    Nested dataclass fields are built recursively from nested mappings.
    """
    values = dict(values or {})
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        what = "section(s)" if _is_file(where) else "key(s)"
        raise ValueError(f"{where or cls.__name__}: unknown {what} {unknown}; "
                         f"known {what.replace('(s)', 's')} are {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in values.items():
        kwargs[name] = _coerce(hints[name], value, _join(where, name))
    try:
        return cls(**kwargs)
    except TypeError as e:  # a required field is missing
        raise ValueError(f"{where or cls.__name__}: {e}") from None


def _is_file(where: str) -> bool:
    return where.endswith((".yaml", ".yml", ".json"))


def _join(where: str, name: str) -> str:
    """``conf.yaml`` + ``model`` -> ``conf.yaml: model``; ``conf.yaml: model`` + ``lr`` -> ``...model.lr``."""
    if not where:
        return name
    return f"{where}: {name}" if _is_file(where) else f"{where}.{name}"


def _coerce(hint, value, where):
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, where)
            except ValueError as e:
                errors.append(str(e))
        raise ValueError(errors[0])
    if dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return value
        if not isinstance(value, dict):
            raise ValueError(f"{where}: expected a mapping for {hint.__name__}, got {value!r}")
        return build(hint, value, where)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{where}: expected a list, got {value!r}")
        inner = args[0] if args else typing.Any
        return origin(_coerce(inner, v, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if origin is typing.Literal:
        if value not in args:
            raise ValueError(f"{where}: {value!r} is not one of {list(args)}")
        return value
    if hint is typing.Any:
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (int, float, str, bool):
        if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
            raise ValueError(f"{where}: expected {hint.__name__}, got {value!r}")
        return value
    return value


def to_dict(obj) -> dict:
    """A dataclass (nested ones too) as a plain dict, for logging and saving with a run."""
    return dataclasses.asdict(obj)
