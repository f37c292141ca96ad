"""WhisTLE stage 1: train the text-to-latent encoder (TLE) on paired speech.

The frozen Whisper encoder is the teacher: its states of each utterance's 30 s window are the
regression target of the TLE given the transcript (`westkit.models.whistle.TLERegression`).
Writes the trained TLE to ``OUT/tle.json`` + ``OUT/tle.safetensors`` for stage 2.

    python recipes/tle/train.py --config recipes/tle/conf/tle_tiny.yaml --out exp/whistle/tle
    bash launch/torchrun.sh --nproc 2 recipes/tle/train.py --config ... --out ... train.max_steps=50

Extra arguments are ``section.key=value`` overrides of the YAML. Shard lists may name built-in
corpora (``general-train``), made on first use. The teacher's states can be computed once
beforehand (``westkit-encode general-train --out STATES --model whisper-tiny.en``, then
``data.states=STATES``); without them the encoder runs in every step.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from westkit import recipe
from westkit.data.loader import LanguageMix, LoaderConfig, build_loader
from westkit.data.pipeline import decoder_prefix, tokenize
from westkit.data.states import check_states
from westkit.decode.recognizers import WhisperRecognizer
from westkit.decode.scoring import WERAccumulator
from westkit.decode.search import GenerateConfig
from westkit.models.tle import TLE, TLEConfig, speech_frames, tle_loss
from westkit.models.whisper import WhisperAudioEncoder, WhisperText, encoder_fingerprint, load_whisper
from westkit.models.whistle import TLERegression, frozen_states
from westkit.train import TrainConfig, Trainer, distributed


@dataclass
class Stage1Config:
    """The ``stage1:`` section: which Whisper teaches, and evaluation."""
    whisper: str = "whisper-tiny.en"   # built-in asset name, hub id or local folder
    eval_batches: int = 2              # dev batches per evaluation (0: the whole dev set)
    decode_eval: bool = True           # also read the TLE's states back with the frozen decoder
    decoder_ce: float = 0.0            # weight of the frozen decoder's cross-entropy on TLE states (0: MSE only)


@dataclass
class RecipeConfig:
    stage1: Stage1Config = field(default_factory=Stage1Config)
    tle: TLEConfig = field(default_factory=TLEConfig)   # vocab_size, d_model, n_frames: the teacher's
    data: LoaderConfig = field(default_factory=LoaderConfig)
    eval_data: LoaderConfig | None = None
    train: TrainConfig = field(default_factory=TrainConfig)


def make_eval(run: recipe.Run, whisper, tokenizer, steps):
    """eval_fn(model, step): regression error and what the frozen decoder reads in TLE states.

    ``mse``/``speech_mse``/``full_mse`` (regressed / speech / all frames): with the true speech
    length; ``dur_abs_err``: |predicted - true| frames; ``readback_wer``: WER of greedy
    transcripts of the TLE's states made from the text alone (predicted length, z = mu)
    against that text, i.e. how usable the latents are for the decoder. Sums over ranks.
    """
    cfg, info = run.cfg, run.info
    if cfg.eval_data is None:
        return None
    loader = build_loader(cfg.eval_data, info.rank, info.world_size, train=False, steps=steps)
    reader = WhisperRecognizer(whisper, tokenizer, GenerateConfig(max_new_tokens=128))

    def eval_fn(model: TLERegression, step: int) -> dict:
        sums = {"mse": 0.0, "speech_mse": 0.0, "full_mse": 0.0, "dur_abs_err": 0.0, "utts": 0.0,
                "batches": 0.0}
        wer = WERAccumulator()
        for batch in recipe.eval_batches(loader, cfg.stage1.eval_batches, info.device):
            teacher = frozen_states(model.teacher, batch)
            n = speech_frames(batch["audio_lens"], model.tle.cfg.n_frames)
            losses = tle_loss(model.outputs(batch, n), teacher, n, model.tle.cfg, model.tle.beta())
            for k in ("mse", "speech_mse", "full_mse"):
                sums[k] += float(losses[k])
            sums["batches"] += 1
            free = model.outputs(batch)
            sums["dur_abs_err"] += float((free.n - n).abs().sum())
            sums["utts"] += len(n)
            if cfg.stage1.decode_eval:
                hyps = reader.decode_states(free.states.to(whisper.proj_out.weight.dtype), langs=batch["langs"])
                wer.add(batch["texts"], [h.text for h in hyps], batch["langs"])
        sums = distributed.all_sum(sums, info.device)
        result = {k: sums[k] / max(sums["batches"], 1) for k in ("mse", "speech_mse", "full_mse")}
        result["dur_abs_err"] = sums["dur_abs_err"] / max(sums["utts"], 1)
        if cfg.stage1.decode_eval:
            result["readback_wer"] = wer.reduce(distributed.all_sum, info.device).result().wer
        return result
    return eval_fn


def main(argv=None) -> int:
    run = recipe.start(RecipeConfig, __doc__, argv)
    cfg = run.cfg
    whisper, tokenizer = load_whisper(cfg.stage1.whisper)
    whisper.eval().to(run.info.device)  # the engine moves the teacher encoder; the read-back decoder follows
    # the TLE's vocabulary and output grid are the teacher's, whatever the YAML says
    tle_cfg = dataclasses.replace(cfg.tle, vocab_size=whisper.config.vocab_size, d_model=whisper.config.d_model,
                                  n_frames=whisper.config.max_source_positions)
    text = WhisperText(tokenizer)
    model = TLERegression(TLE(tle_cfg), WhisperAudioEncoder(whisper.model.encoder, pad_to_30s=True),
                          cfg.stage1.decoder_ce, whisper, text)
    steps = [tokenize("text_ids", text.text_ids)]
    if cfg.stage1.decoder_ce > 0:
        steps += [tokenize("targets", text.targets), decoder_prefix(text.sample_prefix)]
    for section in (cfg.data, cfg.eval_data):
        if section is not None and section.states:
            check_states(section.states, encoder_fingerprint(whisper.model.encoder))
    loader = build_loader(cfg.data, run.info.rank, run.info.world_size, steps=steps)
    loader.require_audio("the TLE regresses the encoder's states of paired speech")
    if isinstance(loader, LanguageMix):
        run.say(f"data: {loader.describe()}")
    Trainer(model, loader, cfg.train, run.out, eval_fn=make_eval(run, whisper, tokenizer, steps)).fit()
    run.say(f"TLE written to {run.out / 'tle.safetensors'}")
    return 0


if __name__ == "__main__":
    recipe.main(main)
