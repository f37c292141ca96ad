"""Small typed configs: YAML sections -> dataclasses, unknown keys are errors.

Each component owns a dataclass whose defaults are the only defaults. A recipe's YAML file has
one section per component; `load_yaml` reads it with command-line overrides (``a.b=value``) and
`build` turns one section into its dataclass, naming the file and key on any mistake, or the
override when the mistake came from the command line.
"""
from __future__ import annotations

import dataclasses
import re
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")

_FLOAT_TAG = "tag:yaml.org,2002:float"
# YAML 1.2's floats: PyYAML implements YAML 1.1, which wants a dot and a signed exponent, so
# `lr: 1e-4` would be the string "1e-4" and fail as "expected float"
_FLOAT = re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                              |[0-9][0-9_]*[eE][-+]?[0-9]+
                              |\.[0-9][0-9_]*(?:[eE][-+]?[0-9]+)?
                              |\.(?:inf|Inf|INF))
                        |\.(?:nan|NaN|NAN))$""", re.X)


class Loader(yaml.SafeLoader):
    """`yaml.SafeLoader` that reads numbers as people write them: ``1e-4``, ``5E3``, ``.5``,
    ``-.5`` are floats (YAML 1.2), not strings."""


Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != _FLOAT_TAG]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
Loader.add_implicit_resolver(_FLOAT_TAG, _FLOAT, list("-+0123456789."))


class Section(dict):
    """A mapping read by `load_yaml`: ``name`` is its dotted place ("train", "model.encoder")
    and ``overrides`` maps each key set on the command line to the override that set it, so
    `build` blames a bad value on the override rather than on the file."""

    def __init__(self, *args, name: str = "", **kwargs):
        super().__init__(*args, **kwargs)
        self.name = name
        self.overrides: dict[str, str] = {}


def parse_yaml(text: str, where: str, marks: bool = True):
    """``text`` parsed with `Loader`; a syntax error is one line ``WHERE:LINE:COL: problem``
    (``WHERE: problem`` without ``marks``, for a one-line value)."""
    try:
        return yaml.load(text, Loader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        place = f"{where}:{mark.line + 1}:{mark.column + 1}" if mark and marks else where
        context = ""
        if e.context and e.context_mark and e.problem and marks:  # where the unclosed thing began
            context = (f" ({e.context} that starts at line {e.context_mark.line + 1}, "
                       f"column {e.context_mark.column + 1})")
        raise ValueError(f"{place}: YAML syntax error: {e.problem or e.context}{context}") from None
    except yaml.YAMLError as e:
        raise ValueError(f"{where}: YAML syntax error: {e}") from None


def load_yaml(path: str | Path, overrides: list[str] = ()) -> dict:
    """Read a YAML config (on top of its ``base:`` file, if it names one) and apply
    ``section.key=value`` overrides (values parsed as YAML).

    Sections (and mappings an override reaches into) come back as `Section`s that remember
    which keys the overrides set.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"config file not found: {path}")
    cfg = _read_with_bases(path, ())
    cfg = Section({k: Section(v, name=str(k)) if isinstance(v, dict) else v for k, v in cfg.items()})
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"override {item!r}: expected KEY=VALUE, e.g. train.max_steps=100")
        node = cfg
        *parents, leaf = key.split(".")
        if parents and parents[0] not in cfg:  # a section only the command line names
            cfg.overrides[parents[0]] = item
        for i, p in enumerate(parents):
            child = node.get(p, {})
            if not isinstance(child, dict):
                raise ValueError(f"override {item!r}: {p!r} is not a section")
            if not isinstance(child, Section):
                child = node[p] = Section(child, name=".".join(parents[:i + 1]))
            node = child
        node[leaf] = parse_yaml(value, f"override {item!r}", marks=False)
        if isinstance(node, Section):
            node.overrides[leaf] = item
    return cfg


BASE_KEY = "base"


def _read_with_bases(path: Path, chain: tuple) -> dict:
    """The mapping in ``path``, on top of the file its top-level ``base:`` names (a path
    relative to ``path``; bases may have bases). Mappings merge key by key, the child winning;
    any other value (lists included) is replaced whole."""
    cfg = parse_yaml(path.read_text(), str(path)) or {}
    if not isinstance(cfg, dict):
        raise ValueError(f"{path}: expected a mapping of sections at the top level")
    if BASE_KEY not in cfg:
        return cfg
    base = cfg.pop(BASE_KEY)
    if not isinstance(base, str):
        raise ValueError(f"{path}: {BASE_KEY}: expected the path of a config file, got {base!r}")
    base_path = (path.parent / base).resolve()
    if base_path in chain + (path.resolve(),):
        raise ValueError(f"{path}: {BASE_KEY}: {base} inherits from itself (a cycle of base: keys)")
    if not base_path.is_file():
        raise ValueError(f"{path}: {BASE_KEY}: {base} not found (looked for {base_path}); "
                         "name a config file relative to this one")
    return _merge(_read_with_bases(base_path, chain + (path.resolve(),)), cfg)


def _merge(base: dict, child: dict) -> dict:
    out = dict(base)
    for key, value in child.items():
        both = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = _merge(out[key], value) if both else value
    return out


def build(cls: type[T], values: dict[str, Any] | None, where: str = "") -> T:
    """Make dataclass ``cls`` from ``values``; unknown keys and wrong types raise ValueError.

    ``where`` names the file and section for messages, e.g. ``"conf/tiny.yaml: train"``.
    Nested dataclass fields are built recursively from nested mappings.
    """
    overrides = getattr(values, "overrides", {})
    section = getattr(values, "name", "")
    values = dict(values or {})
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    for key in unknown:
        if key in overrides:
            what = f"key {key!r} in section {section}" if section else f"section {key!r}"
            raise ValueError(f"override {overrides[key]}: unknown {what}; known "
                             f"{'keys' if section else 'sections'} are {sorted(fields)}")
    if unknown:
        what = "section(s)" if _is_file(where) else "key(s)"
        raise ValueError(f"{where or cls.__name__}: unknown {what} {unknown}; "
                         f"known {what.replace('(s)', 's')} are {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in values.items():
        place = _join(where, name)
        if name in overrides:
            place = f"override {overrides[name]}: {section}.{name}" if section else f"override {overrides[name]}"
        kwargs[name] = _coerce(hints[name], value, place)
    try:
        return cls(**kwargs)
    except TypeError as e:  # a required field is missing
        raise ValueError(f"{where or cls.__name__}: {e}") from None
    except ValueError as e:  # the dataclass's own checks (__post_init__)
        given = f" (set on the command line: {', '.join(overrides.values())})" if overrides else ""
        raise ValueError(f"{where or cls.__name__}: {e}{given}") from None


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
        return _plain(value)
    if origin is typing.Literal:
        if value not in args:
            raise ValueError(f"{where}: {value!r} is not one of {list(args)}")
        return value
    if hint is typing.Any:
        return _plain(value)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (int, float, str, bool):
        if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
            raise ValueError(f"{where}: expected {hint.__name__}, got {value!r}")
        return value
    return _plain(value)


def _plain(value):
    """``value`` with every `Section` inside it a plain dict (yaml.safe_dump refuses subclasses)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def to_dict(obj) -> dict:
    """A dataclass (nested ones too) as a plain dict, for logging and saving with a run."""
    return dataclasses.asdict(obj)
