import dataclasses
from typing import Literal, Optional

import pytest

from westkit.config import build, load_yaml


@dataclasses.dataclass
class Inner:
    rate: int = 2
    kind: Literal["conv", "stack"] = "conv"


@dataclasses.dataclass
class Outer:
    name: str
    lr: float = 1e-3
    layers: list[int] = dataclasses.field(default_factory=list)
    inner: Inner = dataclasses.field(default_factory=Inner)
    extra: Optional[str] = None


def test_build_nested_and_coerces_int_to_float():
    cfg = build(Outer, {"name": "x", "lr": 1, "layers": [1, 2], "inner": {"rate": 4}})
    assert cfg == Outer(name="x", lr=1.0, layers=[1, 2], inner=Inner(rate=4))
    assert isinstance(cfg.lr, float)


def test_unknown_key_names_the_place_and_the_known_keys():
    with pytest.raises(ValueError, match=r"conf/x.yaml: model.inner: unknown key\(s\) \['rte'\]"):
        build(Outer, {"name": "x", "inner": {"rte": 4}}, where="conf/x.yaml: model")


def test_wrong_types_and_choices_are_errors():
    with pytest.raises(ValueError, match="lr: expected float"):
        build(Outer, {"name": "x", "lr": "fast"})
    with pytest.raises(ValueError, match="'pool' is not one of"):
        build(Outer, {"name": "x", "inner": {"kind": "pool"}})
    with pytest.raises(ValueError, match="name"):
        build(Outer, {})


def test_load_yaml_applies_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("model:\n  name: a\n  lr: 0.1\n")
    cfg = load_yaml(p, ["model.lr=0.5", "train.max_steps=7"])
    assert cfg == {"model": {"name": "a", "lr": 0.5}, "train": {"max_steps": 7}}
    with pytest.raises(ValueError, match="expected KEY=VALUE"):
        load_yaml(p, ["model.lr"])
    with pytest.raises(ValueError, match="config file not found"):
        load_yaml(tmp_path / "missing.yaml")
