"""The west recipe: every shipped config parses and builds; end to end under torchrun with
2 processes (ZeRO-3 on CPU), resuming, then recognize decodes the run with a WER report."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from westkit.config import build, load_yaml
from westkit.recipe import load_config
from westkit.data.loader import LoaderConfig
from westkit.models.projector import build_projector
from westkit.models.encoders import ENCODERS
from westkit.models.west import PROMPTS, WestConfig
from westkit.train import TrainConfig

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "recipes" / "west" / "conf"
SHIPPED = sorted(CONF.glob("*.yaml"))


def recipe():
    """recipes/west/train.py as a module (recipes are scripts, not an importable package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("west_train_recipe", ROOT / "recipes" / "west" / "train.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_shipped_config_parses_and_builds(path):
    conf = load_yaml(path)
    model = build(WestConfig, conf["model"], f"{path}: model")
    build(LoaderConfig, conf["data"], f"{path}: data")
    train = build(TrainConfig, conf["train"], f"{path}: train")
    assert train.trainable and all(p.startswith(("projector.", "llm.")) for p in train.trainable)
    # the projector the config names builds (widths of the models it names, from their configs)
    dims = {"whisper-tiny.en": 384, "openai/whisper-large-v3": 1280, "openai/whisper-small": 768,
            "facebook/hubert-base-ls960": 768, "facebook/mms-1b-all": 1280}
    llm_dims = {"smollm2-135m-instruct": 576, "Qwen/Qwen2-1.5B-Instruct": 1536, "Qwen/Qwen2-1.5B": 1536}
    proj = build_projector(model.projector, dims[model.encoder], llm_dims[model.llm])
    assert sum(p.numel() for p in proj.parameters()) > 0
    assert model.encoder_kind in ENCODERS and model.prompt_format in PROMPTS
    assert (model.lora is not None) == any("lora" in p for p in train.trainable)


def test_recipe_reads_every_section_and_rejects_unknown_keys(tmp_path):
    train = recipe()
    cfg = load_config(train.RecipeConfig, str(CONF / "tiny.yaml"), ["train.max_steps=70", "model.projector.rate=3"])
    assert cfg.train.max_steps == 70 and cfg.model.projector.rate == 3
    assert cfg.data.shards == ["general-train"]  # a corpus name: the loader makes and finds it
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {projector: {kind: conv1d, ratio: 4}}\n")
    with pytest.raises(ValueError, match=r"bad.yaml: model.projector.*ratio"):
        load_config(train.RecipeConfig, str(bad), [])
    bad.write_text("modle: {}\n")
    with pytest.raises(ValueError, match="unknown section"):
        load_config(train.RecipeConfig, str(bad), [])


# the shipped configs whose models are built-in assets: each builds the real model
BUILT_IN = ["tiny.yaml", "tiny_lora.yaml", "tiny_context.yaml"]


@pytest.mark.parametrize("name", BUILT_IN)
def test_tiny_configs_build_the_real_model(name, whisper_tiny_path, smollm2_path):
    from westkit.models.west import WestModel

    cfg = load_config(recipe().RecipeConfig, str(CONF / name), [f"model.encoder={whisper_tiny_path}",
                                                                f"model.llm={smollm2_path}"])
    model = WestModel.from_config(cfg.model)
    names = [n for n, _ in model.named_parameters()]
    from westkit.train import freeze
    trainable = freeze(model, cfg.train.trainable)
    assert trainable and all(n.startswith(("projector.", "llm.")) for n in trainable) and len(trainable) < len(names)
    assert any("lora_" in n for n in trainable) == (cfg.model.lora is not None)
    assert model.prompt.eot == model.prompt.tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert model.prompt.dynamic == ("{context}" in cfg.model.prompt)
    assert cfg.data.shards == ["general-train"]          # inherited from tiny.yaml


SMALL = ["data.max_batch_seconds=8", "data.max_batch_size=4", "data.num_workers=0",
         "eval.batches=1", "eval.max_new_tokens=6", "eval_data.max_batch_seconds=8",
         "train.log_every=1", "train.warmup_steps=0", "train.save_every=1", "train.eval_every=0"]


@pytest.mark.slow
def test_torchrun_two_processes_zero3_resume_and_recognize(tmp_path, whisper_tiny_path, smollm2_path):
    from westkit.data import corpora

    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    out = tmp_path / "run"
    test_shards = str(corpora.make("general-test", limit=4))

    def torchrun(steps):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
               str(ROOT / "recipes" / "west" / "train.py"), "--config", str(CONF / "tiny.yaml"),
               "--out", str(out), f"train.max_steps={steps}", f"eval_data.shards=[{test_shards}]", *SMALL]
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc.stderr + proc.stdout

    first = torchrun(2)
    assert "world size 2" in first and re.search(r"audio padding \d+\.\d%", first)
    second = torchrun(3)
    assert re.search(r"resumed from .*step_0+2 at step 2", second)
    records = [json.loads(line) for line in open(out / "metrics.jsonl")]
    train_steps = [r["step"] for r in records if "loss" in r]
    assert train_steps[-3:] == [1, 2, 3]
    evals = [r for r in records if "wer" in r]
    assert evals and 0 <= evals[-1]["stopped"] <= 1
    assert (out / "trainable.safetensors").is_file() and (out / "config.yaml").is_file()

    proc = subprocess.run([sys.executable, str(ROOT / "recognize.py"), "--west", str(out), "--shards",
                           test_shards, "--out", str(tmp_path / "dec"), "--max-new-tokens", "8",
                           "--num-workers", "0"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "dec" / "wer.json").read_text())
    assert report["utterances"] == 4 and report["all"]["ref_words"] > 0
    assert "WER" in proc.stdout


@pytest.mark.slow
def test_text_only_shards_are_refused_before_training(tmp_path):
    """Issue 11: text-only shards crashed WeST mid-training (KeyError 'audio'); now the recipe
    checks its data at start and says what to do, in one line."""
    from westkit.data.shards import Entry, write_shards

    write_shards([Entry(key=f"t{i}", text=f"only text {i}") for i in range(4)], tmp_path / "text",
                 workers=1, progress=False)
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env.pop("RANK", None)
    proc = subprocess.run([sys.executable, str(ROOT / "recipes" / "west" / "train.py"), "--config",
                           str(CONF / "tiny.yaml"), "--out", str(tmp_path / "run"),
                           f"data.shards=[{tmp_path / 'text'}]", "eval_data=null", "data.num_workers=0"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "4 of 4 samples" in proc.stderr and "text-only" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()
