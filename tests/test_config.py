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


@pytest.mark.parametrize("text, value", [("1e-4", 1e-4), ("5e-3", 5e-3), ("1E5", 1e5), (".5", 0.5),
                                         ("-.5", -0.5), ("+2.5e+2", 250.0), ("3", 3.0)])
def test_floats_as_people_write_them_in_files_and_overrides(tmp_path, text, value):
    p = tmp_path / "c.yaml"
    p.write_text(f"model:\n  name: a\n  lr: {text}\n")
    from_file = build(Outer, load_yaml(p)["model"], f"{p}: model")
    from_override = build(Outer, load_yaml(p, [f"model.lr={text}"])["model"], f"{p}: model")
    assert from_file.lr == from_override.lr == value
    assert isinstance(from_file.lr, float)


def test_strings_that_only_look_numeric_stay_strings(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("model:\n  name: 1.2.3\n  extra: e5\n")
    assert load_yaml(p)["model"] == {"name": "1.2.3", "extra": "e5"}


def test_yaml_syntax_error_is_one_line_naming_file_line_and_column(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("model:\n  name: a\n  layers: [1, 2\ntrain:\n  lr: 1\n")
    with pytest.raises(ValueError) as e:
        load_yaml(p)
    message = str(e.value)
    assert "\n" not in message
    assert message == (f"{p}:4:6: YAML syntax error: expected ',' or ']', but got ':' "
                       "(while parsing a flow sequence that starts at line 3, column 11)")
    p.write_text("model: {}\n")
    with pytest.raises(ValueError, match=r"^override 'model.layers=\[1,': YAML syntax error"):
        load_yaml(p, ["model.layers=[1,"])


def test_unknown_key_from_an_override_is_blamed_on_the_override(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("model:\n  name: a\n  inner: {rate: 3}\n")
    with pytest.raises(ValueError) as e:
        build(Outer, load_yaml(p, ["model.lrr=0.1"])["model"], f"{p}: model")
    assert str(e.value) == ("override model.lrr=0.1: unknown key 'lrr' in section model; known keys "
                            "are ['extra', 'inner', 'layers', 'lr', 'name']")
    with pytest.raises(ValueError, match=r"^override model.inner.rte=4: unknown key 'rte' in "
                                         r"section model.inner; known keys are \['kind', 'rate'\]"):
        build(Outer, load_yaml(p, ["model.inner.rte=4"])["model"], f"{p}: model")
    # a wrong value from an override names the override too; one from the file names the file
    with pytest.raises(ValueError, match=r"^override model.lr=fast: model.lr: expected float"):
        build(Outer, load_yaml(p, ["model.lr=fast"])["model"], f"{p}: model")
    p.write_text("model:\n  name: a\n  lrr: 3\n")
    with pytest.raises(ValueError, match=rf"^{p}: model: unknown key\(s\) \['lrr'\]"):
        build(Outer, load_yaml(p, ["model.lr=0.1"])["model"], f"{p}: model")


def test_loaded_sections_dump_as_plain_yaml(tmp_path):
    import yaml

    @dataclasses.dataclass
    class Free:
        options: dict = dataclasses.field(default_factory=dict)

    p = tmp_path / "c.yaml"
    p.write_text("free:\n  options: {a: 1}\n")
    cfg = build(Free, load_yaml(p, ["free.options.b=2"])["free"], f"{p}: free")
    assert yaml.safe_load(yaml.safe_dump(dataclasses.asdict(cfg))) == {"options": {"a": 1, "b": 2}}
