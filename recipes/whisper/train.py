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
(CTranslate2) as ``whisper.export`` lists.

The same model (`westkit.models.whistle.WhisTLE`) is WhisTLE's stage 2 (``conf/whistle_stage2.yaml``):
up to four batch sources are interleaved by `MixedLoader` at the ``mix`` weights, in this order:
``text`` (the ``text:`` section: text-only shards whose encoder states come from the frozen
stage-1 TLE), ``audio`` (``data``: paired speech), ``tts`` (the ``tts:`` section: synthetic
speech of the in-domain text) and ``real`` (the ``real:`` section: a second paired-speech set,
for real human speech replayed beside synthetic ``data``, so adaptation does not cost accuracy
on real voices); the speech sources go through the real encoder, or read precomputed states
(``data.states``, ``tts.states``, ``real.states``: `westkit-encode` of this model's encoder,
checked by fingerprint). A source is used when its section is there and its weight is > 0, so
TTS-only adaptation is ``mix.text=0 mix.tts=1``.

    python recipes/whisper/train.py --config recipes/whisper/conf/whistle_stage2.yaml \\
        --out exp/whistle/special-tle text.tle=exp/whistle/tle text.data.shards=[special-text]

Defaults that follow the strategy: ``train.trainable`` left at ``["*"]`` becomes the decoder
(full, encoder frozen), everything (full, encoder trained) or the adapters (lora/qlora);
``train.lr`` left at the engine default becomes 1e-5 (full) or 1e-3 (lora/qlora).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from westkit import recipe
from westkit.data.loader import LanguageMix, LoaderConfig, build_loader
from westkit.data.mixing import MixConfig, MixedLoader
from westkit.data.pipeline import decoder_prefix, tokenize
from westkit.data.convert import as_shards
from westkit.data.states import check_states
from westkit.decode.recognizers import WhisperRecognizer
from westkit.decode.scoring import WERAccumulator
from westkit.decode.search import GenerateConfig
from westkit.models.features import SAMPLE_RATE
from westkit.models.tle import load_tle
from westkit.models.whisper import encoder_fingerprint
from westkit.models.whistle import WhisperFinetuneConfig, WhisTLE
from westkit.train import TrainConfig, Trainer, distributed
from westkit.train.best import BestKeeper

STRATEGY_LR = {"full": 1e-5, "lora": 1e-3, "qlora": 1e-3}
SOURCES = ("text", "audio", "tts", "real")   # the mix's order (it breaks ties of the ratio schedule)


@dataclass
class WhisperData(LoaderConfig):
    """The ``data:`` section: a `LoaderConfig` whose ``shards`` may also be raw inputs."""
    test_split: float = 0.0
    """Fraction of the raw inputs held out for evaluation when there is no ``eval_data``."""

    def __post_init__(self):
        super().__post_init__()
        if not 0 <= self.test_split < 1:
            raise ValueError(f"test_split must be in [0, 1), got {self.test_split}")
        if self.langs and self.test_split > 0:
            raise ValueError("test_split cannot hold out data of langs; give eval_data (its own langs or shards)")


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
    states come from a frozen stage-1 TLE, mixed with the speech batches at ``mix.text``."""
    tle: str | None = None      # output folder of recipes/tle/train.py
    data: LoaderConfig = field(default_factory=LoaderConfig)
    sample_z: bool = True       # z ~ q(z|text) (else its mean)

    def __post_init__(self):
        if not self.tle:
            raise ValueError("text.tle: the text source needs the stage-1 TLE: set "
                             "text.tle=<output folder of recipes/tle/train.py>, or text=null")


@dataclass
class RecipeConfig:
    whisper: WhisperFinetuneConfig = field(default_factory=WhisperFinetuneConfig)
    data: WhisperData = field(default_factory=WhisperData)
    text: TextSource | None = None
    tts: LoaderConfig | None = None
    real: LoaderConfig | None = None
    mix: MixConfig = field(default_factory=MixConfig)
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
        for name in ("tts", "real"):
            if self.mix.weight(name) > 0 and getattr(self, name) is None:
                raise ValueError(f"mix.{name}={self.mix.weight(name)} but there is no `{name}` section; add one "
                                 f"with its shards or set mix.{name}=0")
        if not self.sources():
            raise ValueError("no batch source: mix.audio=0 and no text/tts section with a weight > 0")
        if not self.train.export_trainable and self.whisper.export:
            raise ValueError("train.export_trainable=false writes no artifact; leave it true or set whisper.export=[]")

    def sources(self) -> dict[str, float]:
        """name -> mix weight of every batch source in use (section given, weight > 0), in
        `SOURCES` order."""
        given = {"text": self.text is not None, "audio": True, "tts": self.tts is not None,
                 "real": self.real is not None}
        return {s: self.mix.weight(s) for s in SOURCES if given[s] and self.mix.weight(s) > 0}


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
            done = recipe.everyone_done(info.device)
            langs = batch["langs"]   # each row decoded with, and scored by, its own language
            hyps = (reader.decode_states(batch["states"].float(), batch["audio_lens"], done, langs)
                    if "states" in batch else reader(batch["audio"], batch["audio_lens"], done, langs))
            wer.add(batch["texts"], [h.text for h in hyps], langs)
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
    sources = cfg.sources()
    tle = load_tle(cfg.text.tle) if "text" in sources else None
    model = WhisTLE.from_config(cfg.whisper, tle, sample_z=cfg.text.sample_z if cfg.text else True)
    check_precomputed_states(cfg, sources, model)
    steps = [tokenize("targets", model.text.targets), decoder_prefix(model.text.sample_prefix)]
    loaders = {name: build_source(name, cfg, run, steps, model) for name in sources}
    for name, source in loaders.items():
        if isinstance(source, LanguageMix):
            run.say(f"{name}: {source.describe()}")
    loader = (loaders["audio"] if list(sources) == ["audio"]
              else MixedLoader(loaders, sources, mode=cfg.mix.mode, seed=cfg.mix.seed))
    dev = build_eval_loader(cfg, run, steps)
    eval_fn = make_eval(run, model, dev) if dev is not None else None
    run.say(f"whisper.strategy={cfg.whisper.strategy} freeze_encoder={cfg.whisper.freeze_encoder} "
            f"trainable={cfg.train.trainable} lr={cfg.train.lr} sources={sources}")
    Trainer(model, loader, cfg.train, run.out, eval_fn=eval_fn).fit()
    run.say(f"exported {', '.join(str(run.out / e) for e in cfg.whisper.export)}")
    return 0


def build_source(name: str, cfg: RecipeConfig, run: recipe.Run, steps: list, model: WhisTLE):
    """The train loader of one batch source: ``audio`` (``data``, raw inputs converted to
    shards), ``tts`` (synthetic speech), ``real`` (replayed real speech) or ``text`` (TLE
    text-only batches, with text ids)."""
    info = run.info
    if name == "text":
        return build_loader(cfg.text.data, info.rank, info.world_size,
                            steps=[*steps, tokenize("text_ids", model.text.text_ids)])
    if name == "audio":
        data, _ = converted(cfg.data, run.out / "data", cfg.data.test_split)
    else:
        data = getattr(cfg, name)
    loader = build_loader(data, info.rank, info.world_size, steps=steps)
    loader.require_audio(f"the {name} source of Whisper fine-tuning is paired speech")
    return loader


def build_eval_loader(cfg: RecipeConfig, run: recipe.Run, steps: list):
    """The dev loader: ``eval_data``, or the part of ``data`` that ``data.test_split`` holds
    out (the conversion is cached, so asking again costs nothing); None without either."""
    if cfg.eval_data is not None:
        data, _ = converted(cfg.eval_data, run.out / "data")
    else:
        _, held_out = converted(cfg.data, run.out / "data", cfg.data.test_split)
        if not held_out:
            return None
        data = dataclasses.replace(LoaderConfig(), shards=held_out, shuffle=False, num_workers=0,
                                   max_batch_size=cfg.data.max_batch_size)
    return build_loader(data, run.info.rank, run.info.world_size, train=False, steps=steps)


def converted(data: LoaderConfig, cache: Path, test_split: float = 0.0) -> tuple[LoaderConfig, list[str]]:
    """(``data`` with its raw inputs converted to shards, every language's too, the held-out
    shard specs of ``test_split``)."""
    if data.langs:
        return dataclasses.replace(data, langs={lang: as_shards(specs, cache)[0]
                                                for lang, specs in data.langs.items()}), []
    train, held_out = as_shards(data.shards, cache, test_split)
    return dataclasses.replace(data, shards=train), held_out


def check_precomputed_states(cfg: RecipeConfig, sources: dict, model: WhisTLE) -> None:
    """States made by `westkit-encode` are only valid for this model's encoder."""
    speech = {"audio": cfg.data, "tts": cfg.tts, "real": cfg.real}
    used = [d for d in [*(speech[s] for s in sources if s in speech), cfg.eval_data] if d is not None and d.states]
    if used:
        fingerprint = encoder_fingerprint(model.whisper.model.encoder)
        for data in used:
            check_states(data.states, fingerprint)


if __name__ == "__main__":
    recipe.main(main)
