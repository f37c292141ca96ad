"""WhisTLE stage 2: fine-tune the Whisper decoder from text, with the TLE standing in for speech.

Batches come from up to three sources mixed at a fixed ratio (`westkit.data.mixing.MixedLoader`):
``text`` (text-only, in-domain: encoder states from the frozen stage-1 TLE), ``audio`` (paired
speech through the frozen real encoder, so the decoder does not forget how real states look)
and ``tts`` (synthetic speech of the in-domain text, also through the real encoder). The
encoder is frozen; only ``whisper.model.decoder.*`` trains. At the end the model writes
``OUT/hf``, an ordinary Whisper folder with the real encoder that `westkit-recognize --whisper`
decodes.

    python recipes/tle/finetune_decoder.py --config recipes/tle/conf/finetune_tiny.yaml \\
        --out exp/whistle/special_tle stage2.tle=exp/whistle/tle text_data.shards=[special-text]

Weights of 0 leave a source out: TTS-only adaptation is ``mix.text=0 mix.tts=1``. Audio
sources may name precomputed encoder states (``audio_data.states=FOLDER``, `westkit-encode`).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from westkit import recipe
from westkit.data.loader import LoaderConfig, build_loader
from westkit.data.mixing import MixConfig, MixedLoader
from westkit.data.pipeline import tokenize
from westkit.data.states import check_states
from westkit.decode.recognizers import WhisperRecognizer
from westkit.decode.scoring import WERAccumulator
from westkit.decode.search import GenerateConfig
from westkit.models.tle import load_tle
from westkit.models.whisper import encoder_fingerprint, load_whisper
from westkit.models.whistle import WhisTLE
from westkit.train import TrainConfig, Trainer, distributed

SOURCES = ("text", "audio", "tts")


@dataclass
class Stage2Config:
    """The ``stage2:`` section."""
    whisper: str = "whisper-tiny.en"   # the model to adapt: asset name, hub id or local folder
    tle: str | None = None             # stage-1 output folder; needed when mix.text > 0
    sample_z: bool = True              # text batches: z ~ q(z|text) (else its mean)
    eval_batches: int = 2              # dev batches per evaluation (0: all)


@dataclass
class RecipeConfig:
    stage2: Stage2Config = field(default_factory=Stage2Config)
    mix: MixConfig = field(default_factory=MixConfig)
    text_data: LoaderConfig | None = None
    audio_data: LoaderConfig | None = None
    tts_data: LoaderConfig | None = None
    eval_data: LoaderConfig | None = None
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self):
        if not any(self.mix.weight(s) > 0 for s in SOURCES):
            raise ValueError("every mix weight is 0; give at least one source a weight > 0")
        for name in SOURCES:
            if self.mix.weight(name) > 0 and getattr(self, f"{name}_data") is None:
                raise ValueError(f"mix.{name}={self.mix.weight(name)} but there is no `{name}_data` "
                                 f"section; add one with its shards or set mix.{name}=0")
        if self.mix.text > 0 and not self.stage2.tle:
            raise ValueError(f"mix.text={self.mix.text} needs the stage-1 TLE: set "
                             "stage2.tle=<output folder of recipes/tle/train.py>")
        if not self.train.export_trainable:
            raise ValueError("train.export_trainable=false leaves no adapted Whisper in OUT/hf; leave it true")

    def sources(self) -> dict[str, LoaderConfig]:
        """The loader config of every source the mix uses (weight > 0)."""
        return {s: getattr(self, f"{s}_data") for s in SOURCES if self.mix.weight(s) > 0}


def make_eval(run: recipe.Run, model: WhisTLE, steps):
    """eval_fn(model, step) -> {"dev_wer"}: greedy transcripts through the real encoder."""
    cfg, info = run.cfg, run.info
    if cfg.eval_data is None:
        return None
    loader = build_loader(cfg.eval_data, info.rank, info.world_size, train=False, steps=steps)

    def eval_fn(model: WhisTLE, step: int) -> dict:
        reader, wer = WhisperRecognizer(model.whisper, model.tokenizer, GenerateConfig(max_new_tokens=128)), WERAccumulator()
        for batch in recipe.eval_batches(loader, cfg.stage2.eval_batches, info.device):
            hyps = reader.decode_states(model.encoder_states(batch))
            wer.add(batch["texts"], [h.text for h in hyps])
        return {"dev_wer": wer.reduce(distributed.all_sum, info.device).result().wer}
    return eval_fn


def main(argv=None) -> int:
    run = recipe.start(RecipeConfig, __doc__, argv)
    cfg, info = run.cfg, run.info
    whisper, tokenizer = load_whisper(cfg.stage2.whisper)
    tle = load_tle(cfg.stage2.tle) if cfg.mix.text > 0 else None
    model = WhisTLE(whisper, tle, tokenizer, sample_z=cfg.stage2.sample_z)
    steps = [tokenize("targets", model.text.targets), tokenize("text_ids", model.text.text_ids)]
    sources = cfg.sources()
    for data in (*sources.values(), cfg.eval_data):
        if data is not None and data.states:
            check_states(data.states, encoder_fingerprint(whisper.model.encoder))
    loaders = {name: build_loader(data, info.rank, info.world_size, steps=steps)
               for name, data in sources.items()}
    mix = MixedLoader(loaders, {name: cfg.mix.weight(name) for name in sources}, mode=cfg.mix.mode,
                      seed=cfg.mix.seed)
    Trainer(model, mix, cfg.train, run.out, eval_fn=make_eval(run, model, steps)).fit()
    run.say(f"adapted Whisper written to {run.out / 'hf'}")
    return 0


if __name__ == "__main__":
    recipe.main(main)
