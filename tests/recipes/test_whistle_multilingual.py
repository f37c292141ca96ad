"""Multilingual WhisTLE end to end from the shipped configs: stage 1 then stage 2 on
whisper-base for a few steps over tiny limits of the en/de/es corpora."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
STAGE1, STAGE2 = ROOT / "recipes" / "tle" / "train.py", ROOT / "recipes" / "whisper" / "train.py"
CONF1 = ROOT / "recipes" / "tle" / "conf" / "tle_base_multilingual.yaml"
CONF2 = ROOT / "recipes" / "whisper" / "conf" / "whistle_stage2_multilingual.yaml"
SMALL_TLE = ["tle.d_text=16", "tle.text_layers=1", "tle.text_heads=2", "tle.d_latent=4", "tle.d_conv=16",
             "tle.conv_layers=2", "tle.beta_warmup_steps=2"]


def langs(base: str, limit: int = 2) -> str:
    """A ``langs`` override: en/de/es limits of corpus ``base`` (built once, cached)."""
    from westkit.data import corpora

    folders = {lang: corpora.make(base if lang == "en" else f"{base}-{lang}", limit=limit, progress=False)
               for lang in ("en", "de", "es")}
    return "{" + ", ".join(f"{lang}: [{folder}]" for lang, folder in folders.items()) + "}"


def run(script: Path, *args: str, cwd: Path) -> str:
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    env.pop("RANK", None)
    proc = subprocess.run([sys.executable, str(script), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def languages_line(log: str, source: str) -> dict[str, float]:
    line = next(x for x in log.splitlines() if x.startswith(f"{source}: languages "))
    return {lang: float(p) for lang, p in re.findall(r"(\w+): \d+ utts p=([\d.]+)", line)}


@pytest.mark.slow
def test_stage1_then_stage2_from_the_multilingual_configs(tmp_path):
    from westkit.assets import materialise
    from westkit.data.mixing import temperature_probs
    from westkit.models.tle import load_tle

    try:
        materialise("whisper-base")
    except ValueError as e:
        pytest.skip(str(e))
    stage1 = tmp_path / "tle"
    log = run(STAGE1, "--config", str(CONF1), "--out", str(stage1), f"data.langs={langs('general-train')}",
              f"eval_data.langs={langs('general-test', 1)}", "data.num_workers=0", "data.max_batch_size=2",
              "stage1.eval_batches=1", "train.max_steps=3", "train.warmup_steps=1", "train.eval_every=0",
              "train.save_every=0", "train.log_every=1", *SMALL_TLE, cwd=tmp_path)
    # 2 utterances per language (general-train has 2 renditions of each sentence: the first 2 entries)
    assert languages_line(log, "data") == pytest.approx(temperature_probs({"en": 2, "de": 2, "es": 2}, 0.5), abs=1e-3)
    tle = load_tle(stage1)
    assert tle.cfg.langs == ["en", "de", "es"] and tle.lang_embed.num_embeddings == 3

    stage2 = tmp_path / "ft"
    log = run(STAGE2, "--config", str(CONF2), "--out", str(stage2), f"text.tle={stage1}",
              f"text.data.langs={langs('special-text', 3)}", f"data.langs={langs('general-train')}",
              f"tts.langs={langs('special-tts')}", "mix.tts=1", "data.num_workers=0", "tts.num_workers=0",
              "text.data.max_batch_size=2", "data.max_batch_size=2", "tts.max_batch_size=2",
              "train.max_steps=3", "train.warmup_steps=1", "train.log_every=1", cwd=tmp_path)
    for source in ("text", "audio", "tts"):
        assert set(languages_line(log, source)) == {"en", "de", "es"}
    assert "sources={'text': 1.0, 'audio': 1.0, 'tts': 1.0}" in log
    assert (stage2 / "hf" / "config.json").exists()


def test_the_recipe_pipeline_gives_each_row_its_language_token(tmp_path):
    """The steps stage 2 adds to every loader, on a mixed-language text section."""
    from westkit.assets import materialise
    from westkit.data.loader import LoaderConfig, build_loader
    from westkit.data.pipeline import decoder_prefix, tokenize
    from westkit.data.shards import Entry, write_shards
    from westkit.models.whisper import WhisperText, load_whisper_tokenizer

    try:
        tokenizer = load_whisper_tokenizer(str(materialise("whisper-base")))
    except ValueError as e:
        pytest.skip(str(e))
    text = WhisperText(tokenizer)
    rows = [Entry(key=f"{lang}{i}", text=f"{lang} {i}", lang=lang) for lang in ("en", "de", "es") for i in range(3)]
    write_shards(rows, tmp_path / "mixed", workers=1, progress=False)
    cfg = LoaderConfig(shards=[str(tmp_path / "mixed")], num_workers=0, max_batch_size=9)
    steps = [tokenize("targets", text.targets), decoder_prefix(text.sample_prefix)]
    batch = next(iter(build_loader(cfg, train=False, steps=steps)))
    got = [tokenizer.convert_ids_to_tokens(int(t)) for t in batch["prefix_ids"][:, 1]]
    assert got == [f"<|{lang}|>" for lang in batch["langs"]] and len(set(got)) == 3
