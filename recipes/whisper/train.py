"""Whisper fine-tuning: full, LoRA or QLoRA, encoder frozen or trained, on any speech data.

    python recipes/whisper/train.py --config recipes/whisper/conf/tiny.yaml --out exp/whisper/tiny_lora \\
        whisper.strategy=lora
    westkit train recipes/whisper/conf/tiny.yaml --strategy qlora --no-freeze-encoder   # the same, via the CLI
    torchrun --nproc_per_node 8 recipes/whisper/train.py --config recipes/whisper/conf/large-v3.yaml --out ...

``data.shards`` takes shard folders and built-in corpora as they are, and converts anything else
westkit reads (a folder with metadata.csv, audio + .txt pairs, a WeST jsonl, Kaldi, LibriSpeech)
to shards once, cached in ``OUT/data``. Without ``eval_data``, ``data.test_split`` holds out a
deterministic fraction of those inputs for evaluation. Every evaluation decodes greedily with the
one decoder (`westkit.decode.recognizers.WhisperRecognizer`) and scores WER with the one scorer;
the best model by dev WER is exported to ``OUT/best`` beside the latest checkpoint, and the end of
training exports ``OUT/hf`` (merged plain Whisper), ``OUT/adapter`` (PEFT) and ``OUT/ct2``
(CTranslate2) as ``whisper.export`` lists. The same model (`westkit.models.whistle.WhisTLE`) is
WhisTLE's stage 2 when a TLE makes encoder states for text-only batches: add a ``text:``
section (``text.tle=exp/whistle/tle text.data.shards=[special-text]``) and text-only batches
are interleaved with the speech ones (recipes/tle/finetune_decoder.py runs the same model with
stage 2's own config and its TTS source).

Defaults that follow the strategy: ``train.trainable`` left at ``["*"]`` becomes the decoder
(full, encoder frozen), everything (full, encoder trained) or the adapters (lora/qlora);
``train.lr`` left at the engine default becomes 1e-5 (full) or 1e-3 (lora/qlora).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from westkit import recipe
from westkit.data.loader import LoaderConfig, build_loader
from westkit.data.mixing import MixedLoader
from westkit.data.pipeline import tokenize
from westkit.data.convert import as_shards
from westkit.decode.recognizers import WhisperRecognizer
from westkit.decode.scoring import WERAccumulator
from westkit.decode.search import GenerateConfig
from westkit.models.features import SAMPLE_RATE
from westkit.models.tle import load_tle
from westkit.models.whistle import WhisperFinetuneConfig, WhisTLE
from westkit.train import TrainConfig, Trainer, distributed
from westkit.train.best import BestKeeper

STRATEGY_LR = {"full": 1e-5, "lora": 1e-3, "qlora": 1e-3}


@dataclass
class WhisperData(LoaderConfig):
    """The ``data:`` section: a `LoaderConfig` whose ``shards`` may also be raw inputs."""
    test_split: float = 0.0
    """Fraction of the raw inputs held out for evaluation when there is no ``eval_data``."""

    def __post_init__(self):
        super().__post_init__()
        if not 0 <= self.test_split < 1:
            raise ValueError(f"test_split must be in [0, 1), got {self.test_split}")


@dataclass
class EvalConfig:
    """The ``eval:`` section: training-time decoding (greedy unless ``beam`` > 1)."""
    batches: int = 0            # dev batches per evaluation (0: all)
    max_new_tokens: int = 128
    beam: int = 1
    keep_best: bool = True      # export the best model by dev WER to OUT/best


@dataclass
class TextSource:
    """The ``text:`` section (WhisTLE stage 2's text source): text-only batches whose encoder
    states come from a frozen stage-1 TLE, mixed with the speech batches (`MixedLoader`)."""
    tle: str                    # output folder of recipes/tle/train.py
    data: LoaderConfig = field(default_factory=LoaderConfig)
    weight: float = 1.0         # text batches per speech batch (mode ratio)
    sample_z: bool = True       # z ~ q(z|text) (else its mean)


@dataclass
class RecipeConfig:
    whisper: WhisperFinetuneConfig = field(default_factory=WhisperFinetuneConfig)
    data: WhisperData = field(default_factory=WhisperData)
    text: TextSource | None = None
    eval_data: LoaderConfig | None = None
    eval: EvalConfig = field(default_factory=EvalConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(ds_config="zero2"))

    def __post_init__(self):
        default = TrainConfig()
        if self.train.lr == default.lr:
            self.train.lr = STRATEGY_LR[self.whisper.strategy]
        if self.train.trainable == default.trainable:
            self.train.trainable = self.whisper.trainable_patterns()
        if self.eval_data is not None and self.data.test_split > 0:
            raise ValueError("data.test_split holds out evaluation data, but eval_data is given too; "
                             "set data.test_split=0 or eval_data=null")
        if self.whisper.strategy == "qlora" and self.train.ds_config == "zero3":
            raise ValueError("whisper.strategy=qlora: ZeRO-3 cannot shard 4-bit weights; use train.ds_config=zero2")
        if self.text is not None and self.text.weight <= 0:
            raise ValueError(f"text.weight must be > 0, got {self.text.weight}; drop the text section instead")
        if not self.train.export_trainable and self.whisper.export:
            raise ValueError("train.export_trainable=false writes no artifact; leave it true or set whisper.export=[]")


def make_eval(run: recipe.Run, model: WhisTLE, loader):
    """eval_fn(model, step) -> {"dev_wer", "dev_rtf"}: greedy transcripts of the dev set."""
    import time

    cfg, info = run.cfg, run.info
    best = BestKeeper(run.out, "dev_wer") if cfg.eval.keep_best else None
    gen = GenerateConfig(beam=cfg.eval.beam, max_new_tokens=cfg.eval.max_new_tokens)

    def eval_fn(model: WhisTLE, step: int) -> dict:
        reader, wer = WhisperRecognizer(model.whisper, model.tokenizer, gen), WERAccumulator()
        started, audio = time.perf_counter(), 0.0
        for batch in recipe.eval_batches(loader, cfg.eval.batches, info.device):
            hyps = reader(batch["audio"], batch["audio_lens"], recipe.everyone_done(info.device))
            wer.add(batch["texts"], [h.text for h in hyps])
            audio += float(batch["audio_lens"].sum()) / SAMPLE_RATE
        score = wer.reduce(distributed.all_sum, info.device).result()
        result = {"dev_wer": score.wer, "dev_rtf": (time.perf_counter() - started) / max(audio, 1e-9)}
        if best is not None and best.update(model, step, score.wer):
            result["best_dev_wer"] = score.wer
        return result
    return eval_fn


def main(argv=None) -> int:
    run = recipe.start(RecipeConfig, __doc__, argv)
    cfg, info = run.cfg, run.info
    train_shards, held_out = as_shards(cfg.data.shards, run.out / "data", cfg.data.test_split)
    tle = load_tle(cfg.text.tle) if cfg.text else None
    model = WhisTLE.from_config(cfg.whisper, tle, sample_z=cfg.text.sample_z if cfg.text else True)
    steps = [tokenize("targets", model.text.targets)]
    loader = build_loader(dataclasses.replace(cfg.data, shards=train_shards), info.rank, info.world_size,
                          steps=steps)
    loader.require_audio("Whisper fine-tuning learns from paired speech")
    if cfg.text:  # WhisTLE stage 2: text-only batches through the TLE, interleaved with speech
        text = build_loader(cfg.text.data, info.rank, info.world_size,
                            steps=[*steps, tokenize("text_ids", model.text.text_ids)])
        loader = MixedLoader({"audio": loader, "text": text}, {"audio": 1.0, "text": cfg.text.weight},
                             mode="ratio", seed=cfg.data.seed)
    eval_data = cfg.eval_data or (dataclasses.replace(LoaderConfig(), shards=held_out, shuffle=False,
                                                      num_workers=0, max_batch_size=cfg.data.max_batch_size)
                                  if held_out else None)
    eval_fn = None
    if eval_data is not None:
        eval_shards, _ = as_shards(eval_data.shards, run.out / "data")
        eval_fn = make_eval(run, model, build_loader(dataclasses.replace(eval_data, shards=eval_shards),
                                                     info.rank, info.world_size, train=False, steps=steps))
    run.say(f"whisper.strategy={cfg.whisper.strategy} freeze_encoder={cfg.whisper.freeze_encoder} "
            f"trainable={cfg.train.trainable} lr={cfg.train.lr}")
    Trainer(model, loader, cfg.train, run.out, eval_fn=eval_fn).fit()
    run.say(f"exported {', '.join(str(run.out / e) for e in cfg.whisper.export)}")
    return 0


if __name__ == "__main__":
    recipe.main(main)
