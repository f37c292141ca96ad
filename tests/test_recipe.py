"""westkit.recipe: the scaffolding every recipe starts with (CLI, config, run-folder checks)."""
import os
from dataclasses import dataclass, field

import pytest
import yaml

from westkit import recipe
from westkit.data.loader import LoaderConfig
from westkit.train import TrainConfig


@dataclass
class Model:
    width: int = 8


@dataclass
class Config:
    model: Model = field(default_factory=Model)
    data: LoaderConfig = field(default_factory=LoaderConfig)
    eval_data: LoaderConfig | None = None
    train: TrainConfig = field(default_factory=TrainConfig)


@pytest.fixture(autouse=True)
def own_process_group():
    """`recipe.start` joins a process group (a world of one here) and sets RANK/MASTER_PORT:
    leave neither behind, or later tests' subprocesses inherit them and find the port taken."""
    import torch.distributed as dist

    saved = dict(os.environ)
    yield
    if dist.is_initialized():
        dist.destroy_process_group()
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture
def conf(tmp_path):
    path = tmp_path / "conf.yaml"
    path.write_text("model: {width: 4}\ndata: {shards: [a]}\ntrain: {max_steps: 10}\n")
    return path


def test_start_builds_the_whole_config_and_saves_it(conf, tmp_path):
    run = recipe.start(Config, "doc", ["--config", str(conf), "--out", str(tmp_path / "run"),
                                       "train.max_steps=20", "eval_data={shards: [b]}"])
    assert run.cfg.model.width == 4 and run.cfg.train.max_steps == 20
    assert run.cfg.eval_data.shards == ["b"]
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["train"]["max_steps"] == 20 and saved["model"] == {"width": 4}
    # a mistake on the command line is blamed on the override, one in the file on the file
    with pytest.raises(ValueError, match=r"override modle.width=3: unknown section 'modle'"):
        recipe.load_config(Config, str(conf), ["modle.width=3"])
    with pytest.raises(ValueError, match=r"override model.depth=3: unknown key 'depth' in section model"):
        recipe.load_config(Config, str(conf), ["model.depth=3"])
    conf.write_text(conf.read_text() + "modle: {width: 3}\n")
    with pytest.raises(ValueError, match=r"conf.yaml: unknown section.*'modle'"):
        recipe.load_config(Config, str(conf))


def test_a_run_folder_that_is_a_file_or_unwritable_fails_first(conf, tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        recipe.start(Config, "doc", ["--config", str(conf), "--out", str(tmp_path / "file")])
    # /proc/1 refuses new entries even to root (a chmod-ed folder would not stop root)
    assert not os.access("/proc/1", os.W_OK)
    with pytest.raises(ValueError, match="/proc/1 is not writable"):
        recipe.start(Config, "doc", ["--config", str(conf), "--out", "/proc/1/westkit-run"])


def test_a_checkpointed_run_continues_only_under_a_fitting_config(conf, tmp_path):
    out = tmp_path / "run"
    recipe.start(Config, "doc", ["--config", str(conf), "--out", str(out)])
    (out / "checkpoints" / "step_00000005").mkdir(parents=True)
    before = (out / "config.yaml").read_text()
    with pytest.raises(ValueError, match=r"model.width: 4 -> 6.*new --out"):
        recipe.start(Config, "doc", ["--config", str(conf), "--out", str(out), "model.width=6"])
    assert (out / "config.yaml").read_text() == before          # nothing was overwritten
    # training longer, logging and evaluating differently continue the run
    recipe.start(Config, "doc", ["--config", str(conf), "--out", str(out), "train.max_steps=50",
                                 "train.log_every=2", "eval_data={shards: [c]}", "data.num_workers=0"])
    # and train.resume=false starts the folder over
    recipe.start(Config, "doc", ["--config", str(conf), "--out", str(out), "model.width=6", "train.resume=false"])


def test_main_turns_a_user_error_into_one_line(capsys, monkeypatch):
    def bad():
        raise ValueError("conf.yaml: model.width: expected int, got 'x'")
    monkeypatch.delenv(recipe.DEBUG_ENV, raising=False)
    with pytest.raises(SystemExit) as e:
        recipe.main(bad)
    err = capsys.readouterr().err
    assert e.value.code == 2 and "Traceback" not in err and err.count("\n") == 1
    assert "error: conf.yaml: model.width" in err
    monkeypatch.setenv(recipe.DEBUG_ENV, "1")
    with pytest.raises(SystemExit):
        recipe.main(bad)
    assert "Traceback" in capsys.readouterr().err
