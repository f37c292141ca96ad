"""The TASTE recipe: the shipped configs build; 2 processes under ZeRO-3 with real whisper-tiny.en
fit the units on first use, train a few steps, resume, evaluate TASTE beside the text-only
baseline and write the reports."""
import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from westkit.recipe import load_config

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "recipes" / "taste" / "conf"
SHIPPED = sorted(CONF.glob("*.yaml"))


def recipe():
    import importlib.util

    spec = importlib.util.spec_from_file_location("taste_train_recipe", ROOT / "recipes" / "taste" / "train.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_shipped_config_builds(path):
    cfg = load_config(recipe().RecipeConfig, str(path))
    assert cfg.units.kind == "kmeans" and cfg.units.codebook
    assert set(cfg.train.trainable) <= {"aggregator.*", "fusion.*", "decoder.*", "baseline.*"}


def test_config_errors_name_the_key_and_the_fix(tmp_path):
    train = recipe()
    bad = tmp_path / "bad.yaml"
    bad.write_text("units: {kind: kmeans}\n")
    with pytest.raises(ValueError, match="units.codebook is empty.*westkit units fit"):
        load_config(train.RecipeConfig, str(bad))
    with pytest.raises(ValueError, match=r"model.heads \(3\)"):
        load_config(train.RecipeConfig, str(CONF / "tiny.yaml"), ["model.heads=3"])


@pytest.mark.slow
def test_torchrun_two_processes_zero3_resume_baseline_and_reports(tmp_path, whisper_tiny_path):
    from westkit.data import corpora

    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    shards = str(corpora.make("general-test", limit=4))
    out = tmp_path / "run"
    book = tmp_path / "units.safetensors"

    def torchrun(steps):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
               str(ROOT / "recipes" / "taste" / "train.py"), "--config", str(CONF / "tiny.yaml"),
               "--out", str(out), f"train.max_steps={steps}", f"data.shards=[{shards}]",
               f"eval_data.shards=[{shards}]", f"units.codebook={book}", f"units.fit_on=[{shards}]",
               "units.k=8", "model.rvq_codes=16", "model.dec_layers=1", "data.max_batch_size=2",
               "data.num_workers=0", "eval_data.max_batch_size=2", "eval.max_units=12",
               "train.ds_config=zero3", "train.warmup_steps=0", "train.save_every=2", "train.eval_every=0"]
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc.stderr + proc.stdout

    first = torchrun(2)
    assert "world size 2" in first and "k-means units: 8 centroids over layer 4" in first
    assert book.is_file()                                   # fitted once, under the lock
    second = torchrun(3)
    assert re.search(r"resumed from .*step_0+2 at step 2", second)
    records = [json.loads(line) for line in open(out / "metrics.jsonl")]
    assert [r["step"] for r in records if r["kind"] == "train"][-3:] == [1, 2, 3]
    final = [r for r in records if r["kind"] == "eval"][-1]
    for name in ("taste", "baseline"):
        assert 0 <= final[f"acc_{name}"] <= 1 and final[f"uer_{name}"] >= 0
    # 4 quantisers x log2(16) bits per text token
    assert final["bitrate"] == pytest.approx(final["text_tokens_per_s"] * 16)
    assert 0 < final["codebook_usage"] <= 1
    for name in ("step_log.csv", "loss_curve.png", "batch_loss_curve.png", "final_accuracy.txt",
                 "trainable.safetensors", "taste.json", "curves.png"):
        assert (out / name).is_file(), name
    rows = list(csv.DictReader(open(out / "step_log.csv")))
    assert [int(r["step"]) for r in rows] == [1, 2, 3] and float(rows[0]["loss_baseline"]) > 0
    text = (out / "final_accuracy.txt").read_text()
    assert text.startswith("# k-means units") and "acc_baseline" in text and "uer_taste" in text
