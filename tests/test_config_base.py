"""Config inheritance: a top-level ``base:`` names the file a config builds on."""
import pytest

from westkit.config import load_yaml


def test_child_overrides_base_key_by_key_and_lists_whole(tmp_path):
    (tmp_path / "base.yaml").write_text("model: {llm: a, projector: {kind: conv1d, rate: 4}}\n"
                                        "train: {trainable: [x, y], lr: 0.1}\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "mid.yaml").write_text("base: ../base.yaml\nmodel: {projector: {rate: 2}}\n")
    (tmp_path / "sub" / "leaf.yaml").write_text("base: mid.yaml\ntrain: {trainable: [z]}\n")
    cfg = load_yaml(tmp_path / "sub" / "leaf.yaml", ["model.llm=b"])
    assert cfg["model"] == {"llm": "b", "projector": {"kind": "conv1d", "rate": 2}}
    assert cfg["train"] == {"trainable": ["z"], "lr": 0.1}
    assert "base" not in cfg
    assert cfg["model"].overrides == {"llm": "model.llm=b"}   # overrides still blamed on themselves


def test_missing_and_cyclic_bases_name_the_file_and_key(tmp_path):
    (tmp_path / "a.yaml").write_text("base: nothere.yaml\n")
    with pytest.raises(ValueError, match=r"a.yaml: base: nothere.yaml not found"):
        load_yaml(tmp_path / "a.yaml")
    (tmp_path / "b.yaml").write_text("base: c.yaml\n")
    (tmp_path / "c.yaml").write_text("base: b.yaml\n")
    with pytest.raises(ValueError, match="cycle"):
        load_yaml(tmp_path / "b.yaml")
    (tmp_path / "d.yaml").write_text("base: [x]\n")
    with pytest.raises(ValueError, match="d.yaml: base: expected the path"):
        load_yaml(tmp_path / "d.yaml")
