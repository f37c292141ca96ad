"""WhisTLE stage 2: fine-tune the Whisper decoder from text, with the TLE standing in for speech.

Batches come from up to three sources mixed at a fixed ratio (`westkit.data.lang_sampling.MixedLoader`):
``text`` (text-only, in-domain: encoder states from the frozen stage-1 TLE), ``audio`` (paired
speech through the frozen real encoder, so the decoder does not forget how real states look)
and ``tts`` (synthetic speech of the in-domain text, also through the real encoder). The
encoder is frozen; only ``whisper.model.decoder.*`` trains. At the end the real encoder is back
in place: ``OUT/hf`` is an ordinary Whisper checkpoint that `westkit-recognize --whisper` decodes.

    python recipes/tle/finetune_decoder.py --config recipes/tle/conf/finetune_tiny.yaml \\
        --out exp/whistle/special_tle stage2.tle=exp/whistle/tle text_data.shards=[special-text]

Weights of 0 leave a source out: TTS-only adaptation is ``mix.text=0 mix.tts=1``.
"""
from __future__ import annotations

import argparse
import itertools
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml

from westkit.assets import resolve
from westkit.config import build, load_yaml, to_dict
from westkit.data.lang_sampling import MixedLoader
from westkit.data.loader import LoaderConfig, build_loader
from westkit.decode.scoring import score
from westkit.models.tle import load_tle
from westkit.models.whisper import load_whisper
from westkit.models.whisper_decoder import StateCache, WhisTLE, greedy_decode
from westkit.train import TrainConfig, Trainer
from westkit.train import distributed, ds_config

SOURCES = ("text", "audio", "tts")


@dataclass
class Stage2Config:
    """The ``stage2:`` section."""
    whisper: str = "whisper-tiny.en"   # the model to adapt: asset name, hub id or local folder
    tle: str | None = None             # stage-1 output folder; needed when mix.text > 0
    sample_z: bool = True              # text batches: z ~ q(z|text) (else its mean)
    cache_dir: str | None = None       # encoder-state cache of audio batches (see StateCache)
    eval_batches: int = 2              # dev batches per evaluation (0: all)


@dataclass
class MixConfig:
    """The ``mix:`` section: relative weights of the batch sources and how to follow them."""
    text: float = 1.0
    audio: float = 1.0
    tts: float = 0.0
    mode: Literal["ratio", "random"] = "ratio"   # ratio: deterministic interleaving
    seed: int = 0


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="recipe YAML (recipes/tle/conf/finetune_tiny.yaml)")
    p.add_argument("--out", required=True, help="output folder (logs, checkpoints, hf/)")
    p.add_argument("overrides", nargs="*", help="section.key=value, e.g. mix.tts=1")
    return p.parse_args(argv)


def mix_sources(conf: dict, where: str, mix: MixConfig) -> dict[str, LoaderConfig]:
    """The loader config of every source with weight > 0 (checked before anything is loaded)."""
    cfgs = {}
    for name in SOURCES:
        weight = getattr(mix, name)
        if weight <= 0:
            continue
        section = f"{name}_data"
        if not conf.get(section):
            raise ValueError(f"{where}: mix.{name}={weight} but there is no `{section}` section; "
                             f"add one with its shards or set mix.{name}=0")
        cfgs[name] = build(LoaderConfig, conf[section], f"{where}: {section}")
    if not cfgs:
        raise ValueError(f"{where}: every mix weight is 0; give at least one source a weight > 0")
    return cfgs


def build_mix(cfgs: dict[str, LoaderConfig], mix: MixConfig, rank: int, world_size: int) -> MixedLoader:
    """One train loader per source, interleaved by `MixedLoader` at the mix's weights."""
    loaders = {name: build_loader(cfg, rank, world_size, train=True) for name, cfg in cfgs.items()}
    return MixedLoader(loaders, {name: getattr(mix, name) for name in cfgs}, mode=mix.mode, seed=mix.seed)


def make_eval_fn(loader, cfg: Stage2Config):
    """eval_fn(model, step) -> {"dev_wer"}: greedy transcripts through the real encoder."""
    def eval_fn(model: WhisTLE, step: int) -> dict:
        sums = {"errors": 0.0, "ref_words": 0.0}
        device = model.whisper.proj_out.weight.device
        batches = iter(loader)
        if cfg.eval_batches:
            batches = itertools.islice(batches, cfg.eval_batches)
        for batch in batches:
            batch = distributed.to_device(batch, device)
            hyps = greedy_decode(model.whisper, model.encoder_states(batch, device), model.tokenizer)
            s = score(batch["texts"], hyps)
            sums["errors"] += s.substitutions + s.deletions + s.insertions
            sums["ref_words"] += s.ref_words
        sums = distributed.all_sum(sums, device)
        return {"dev_wer": sums["errors"] / max(sums["ref_words"], 1)}
    return eval_fn


def export_whisper(base: str, trainable_file: Path, out: Path) -> Path:
    """Base Whisper folder + the trained decoder weights -> a complete HF folder at ``out``.

    The engine exports only what trained (``whisper.model.decoder.*``); everything else, the
    encoder included, is the base model's, which is what the frozen encoder was all along.
    """
    from safetensors.torch import load_file
    from transformers import WhisperForConditionalGeneration

    model = WhisperForConditionalGeneration.from_pretrained(base)
    state = {k[len("whisper."):]: v for k, v in load_file(str(trainable_file)).items() if k.startswith("whisper.")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected, unexpected
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    for f in Path(base).iterdir():  # tokenizer, preprocessor and generation files
        if (f.is_file() and f.suffix in (".json", ".txt") and not (tmp / f.name).exists()
                and f.name != "westkit-asset.json"):  # that manifest marks a built-in asset
            shutil.copy(f, tmp / f.name)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    conf = load_yaml(args.config, args.overrides)
    known = {"stage2", "mix", "eval_data", "train"} | {f"{s}_data" for s in SOURCES}
    unknown = sorted(set(conf) - known)
    if unknown:
        raise ValueError(f"{args.config}: unknown section(s) {unknown}; sections are {sorted(known)}")
    stage = build(Stage2Config, conf.get("stage2"), f"{args.config}: stage2")
    mix_cfg = build(MixConfig, conf.get("mix"), f"{args.config}: mix")
    train_cfg = build(TrainConfig, conf.get("train"), f"{args.config}: train")
    if ds_config.zero_stage(train_cfg.ds_config) == 3:
        # the encoder-state cache lets a rank skip the frozen encoder when its batch is cached;
        # under ZeRO-3 every forward gathers parameters from all ranks, so ranks would diverge
        raise ValueError(f"{args.config}: train.ds_config={train_cfg.ds_config!r} is ZeRO-3, which the "
                         "encoder-state cache cannot follow; use zero2 (the TLE and a Whisper decoder fit)")
    if not train_cfg.export_trainable:
        raise ValueError(f"{args.config}: train.export_trainable=false leaves no decoder weights "
                         "to merge into OUT/hf; leave it true")
    if mix_cfg.text > 0 and not stage.tle:
        raise ValueError(f"{args.config}: mix.text={mix_cfg.text} needs the stage-1 TLE: set "
                         f"stage2.tle=<output folder of recipes/tle/train.py>")
    data_cfgs = mix_sources(conf, args.config, mix_cfg)
    info = distributed.init()

    base = resolve(stage.whisper)
    whisper, tokenizer = load_whisper(base)
    tle = load_tle(stage.tle) if mix_cfg.text > 0 else None
    cache = StateCache(whisper.model.encoder, stage.cache_dir)
    model = WhisTLE(whisper, tle, tokenizer, sample_z=stage.sample_z, cache=cache)

    loader = build_mix(data_cfgs, mix_cfg, info.rank, info.world_size)
    eval_fn = None
    if conf.get("eval_data"):
        eval_cfg = build(LoaderConfig, conf["eval_data"], f"{args.config}: eval_data")
        eval_fn = make_eval_fn(build_loader(eval_cfg, info.rank, info.world_size, train=False), stage)
    out = Path(args.out)
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        resolved = {"stage2": to_dict(stage), "mix": to_dict(mix_cfg), "train": to_dict(train_cfg)}
        resolved |= {f"{k}_data": to_dict(v) for k, v in data_cfgs.items()}
        (out / "config.yaml").write_text(yaml.safe_dump(resolved, sort_keys=False))

    trainer = Trainer(model, loader, train_cfg, out, eval_fn=eval_fn)
    trainer.fit()
    if info.is_main:
        path = export_whisper(base, out / "trainable.safetensors", out / "hf")
        print(f"adapted Whisper written to {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
