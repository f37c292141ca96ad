"""WhisTLE stage 1: train the text-to-latent encoder (TLE) on paired speech.

The frozen Whisper encoder is the teacher: its states of each utterance's 30 s window are the
regression target of the TLE given the transcript (`westkit.models.whisper_decoder.TLERegression`).
Writes the trained TLE to ``OUT/tle.json`` + ``OUT/tle.safetensors`` for stage 2.

    python recipes/tle/train.py --config recipes/tle/conf/tle_tiny.yaml --out exp/whistle/tle
    bash launch/torchrun.sh --nproc 2 recipes/tle/train.py --config ... --out ... train.max_steps=50

Extra arguments are ``section.key=value`` overrides of the YAML. Shard lists may name built-in
corpora (``general-train``), made on first use.
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from westkit.config import build, load_yaml, to_dict
from westkit.data.loader import LoaderConfig, build_loader
from westkit.decode.scoring import score
from westkit.models.tle import TLE, TLEConfig, save_tle, speech_frames, tle_loss
from westkit.models.whisper import WhisperAudioEncoder, load_whisper
from westkit.models.whisper_decoder import StateCache, TLERegression, greedy_decode, language_ids, text_tokens
from westkit.train import TrainConfig, Trainer, seed_everything
from westkit.train import distributed, ds_config
from westkit.train.checkpoint import full_state_dict


@dataclass
class Stage1Config:
    """The ``stage1:`` section: which Whisper teaches, where its states are cached, evaluation."""
    whisper: str = "whisper-tiny.en"   # built-in asset name, hub id or local folder
    cache_dir: str | None = None       # teacher-state cache folder (fp16, ~1.1 MB per utterance
                                       # for tiny); None: kept in memory for the run
    eval_batches: int = 2              # dev batches per evaluation (0: the whole dev set)
    decode_eval: bool = True           # also read the TLE's states back with the frozen decoder


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="recipe YAML (recipes/tle/conf/tle_tiny.yaml)")
    p.add_argument("--out", required=True, help="output folder (checkpoints, logs, the TLE)")
    p.add_argument("overrides", nargs="*", help="section.key=value, e.g. train.max_steps=20")
    return p.parse_args(argv)


def make_eval_fn(loader, whisper, cfg: Stage1Config):
    """eval_fn(model, step): regression error and what the frozen decoder reads in TLE states.

    ``mse``/``speech_mse``/``full_mse`` (regressed / speech / all frames): with the true speech
    length; ``dur_abs_err``: |predicted - true|
    frames; ``readback_wer``: WER of greedy transcripts of the TLE's states made from the text
    alone (predicted length, z = mu) against that text, i.e. how usable the latents are for the
    decoder. Sums are reduced over ranks.
    """
    def eval_fn(model: TLERegression, step: int) -> dict:
        sums = {"mse": 0.0, "speech_mse": 0.0, "full_mse": 0.0, "dur_abs_err": 0.0, "utts": 0.0, "batches": 0.0,
                "errors": 0.0, "ref_words": 0.0}
        batches = iter(loader)
        if cfg.eval_batches:
            batches = itertools.islice(batches, cfg.eval_batches)
        device = next(model.parameters()).device
        for batch in batches:
            batch = distributed.to_device(batch, device)
            teacher = model.teacher_states(batch)
            n = speech_frames(batch["audio_lens"], model.tle.cfg.n_frames)
            tokens, lens = text_tokens(model.tokenizer, batch["texts"], device)
            langs = language_ids(batch["langs"], model.tle.cfg.langs, device)
            out = model.tle(tokens, lens, n=n, langs=langs)
            losses = tle_loss(out, teacher, n, model.tle.cfg, model.tle.beta())
            sums["mse"] += float(losses["mse"])
            sums["speech_mse"] += float(losses["speech_mse"])
            sums["full_mse"] += float(losses["full_mse"])
            sums["batches"] += 1
            free = model.tle(tokens, lens, langs=langs)
            sums["dur_abs_err"] += float((free.n - n).abs().sum())
            sums["utts"] += len(n)
            if cfg.decode_eval:
                hyps = greedy_decode(whisper, free.states.to(whisper.proj_out.weight.dtype), model.tokenizer)
                s = score(batch["texts"], hyps)
                sums["errors"] += s.substitutions + s.deletions + s.insertions
                sums["ref_words"] += s.ref_words
        sums = distributed.all_sum(sums, device)
        result = {"mse": sums["mse"] / max(sums["batches"], 1),
                  "speech_mse": sums["speech_mse"] / max(sums["batches"], 1),
                  "full_mse": sums["full_mse"] / max(sums["batches"], 1),
                  "dur_abs_err": sums["dur_abs_err"] / max(sums["utts"], 1)}
        if cfg.decode_eval:
            result["readback_wer"] = sums["errors"] / max(sums["ref_words"], 1)
        return result
    return eval_fn


def main(argv=None) -> int:
    args = parse_args(argv)
    conf = load_yaml(args.config, args.overrides)
    unknown = sorted(set(conf) - {"stage1", "tle", "data", "eval_data", "train"})
    if unknown:
        raise ValueError(f"{args.config}: unknown section(s) {unknown}; sections are stage1, tle, "
                         f"data, eval_data, train")
    stage = build(Stage1Config, conf.get("stage1"), f"{args.config}: stage1")
    tle_cfg = build(TLEConfig, conf.get("tle"), f"{args.config}: tle")
    data_cfg = build(LoaderConfig, conf.get("data"), f"{args.config}: data")
    eval_cfg = (build(LoaderConfig, conf["eval_data"], f"{args.config}: eval_data")
                if conf.get("eval_data") else None)
    train_cfg = build(TrainConfig, conf.get("train"), f"{args.config}: train")
    if ds_config.zero_stage(train_cfg.ds_config) == 3:
        # the encoder-state cache lets a rank skip the frozen encoder when its batch is cached;
        # under ZeRO-3 every forward gathers parameters from all ranks, so ranks would diverge
        raise ValueError(f"{args.config}: train.ds_config={train_cfg.ds_config!r} is ZeRO-3, which the "
                         "encoder-state cache cannot follow; use zero2 (the TLE and a Whisper decoder fit)")
    info = distributed.init()
    seed_everything(train_cfg.seed)  # before any module is made: the seed decides the TLE's init

    whisper, tokenizer = load_whisper(stage.whisper)
    whisper.eval()
    whisper.to(info.device)  # the engine moves the teacher encoder; the read-back decoder follows
    # the TLE's vocabulary and output grid are the teacher's, whatever the YAML says
    tle_cfg = dataclasses.replace(tle_cfg, vocab_size=whisper.config.vocab_size,
                                  d_model=whisper.config.d_model,
                                  n_frames=whisper.config.max_source_positions)
    teacher = WhisperAudioEncoder(whisper.model.encoder, pad_to_30s=True)
    cache = StateCache(whisper.model.encoder, stage.cache_dir)
    model = TLERegression(TLE(tle_cfg), teacher, tokenizer, cache)

    out = Path(args.out)
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        resolved = {"stage1": to_dict(stage), "tle": to_dict(tle_cfg), "data": to_dict(data_cfg),
                    "eval_data": to_dict(eval_cfg) if eval_cfg else None, "train": to_dict(train_cfg)}
        (out / "config.yaml").write_text(yaml.safe_dump(resolved, sort_keys=False))
    loader = build_loader(data_cfg, info.rank, info.world_size, train=True)
    eval_fn = None
    if eval_cfg is not None:
        eval_loader = build_loader(eval_cfg, info.rank, info.world_size, train=False)
        eval_fn = make_eval_fn(eval_loader, whisper, stage)

    trainer = Trainer(model, loader, train_cfg, out, eval_fn=eval_fn)
    trainer.fit()

    state = full_state_dict(trainer.engine)  # collective; rank 0 gets the tensors
    if info.is_main:
        keep = set(model.tle.state_dict())
        save_tle(out, tle_cfg, {k[len("tle."):]: v for k, v in state.items() if k[len("tle."):] in keep
                                and k.startswith("tle.")})
        print(f"TLE written to {out / 'tle.safetensors'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
