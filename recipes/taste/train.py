"""TASTE (simplified): text-aligned speech tokens from a cross-attention aggregator over a frozen
Whisper encoder, and a unit decoder trained on them, beside the same decoder on text alone.

    torchrun --nproc_per_node 2 recipes/taste/train.py --config recipes/taste/conf/tiny.yaml --out exp/taste_tiny
    bash launch/torchrun.sh recipes/taste/train.py --config recipes/taste/conf/tiny.yaml --out ... model.rvq_depth=0

Targets are speech units made in the data pipeline: k-means units over a Whisper layer
(``units.kind: kmeans``; the codebook ``units.codebook`` is fitted there on first use when
``units.fit_on`` names shards, or beforehand with ``westkit units fit``), or CosyVoice S3
tokens (``units.kind: s3``, needs the ``s3tokenizer`` package and its weights). Encoder states
can be precomputed (``westkit-encode SHARDS --out DIR --model M --layer N --no-pad-to-30s``,
then ``data.states=DIR``). The run folder gets the engine's logs and checkpoints,
``trainable.safetensors`` + ``taste.json``, and ``step_log.csv``, ``loss_curve.png``,
``batch_loss_curve.png``, ``final_accuracy.txt`` (unit accuracy, unit error rate, bitrate and
codebook use of TASTE and of the text-only baseline).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

import torch

from westkit import recipe
from westkit.data.loader import LoaderConfig, build_loader
from westkit.data.pipeline import tokenize
from westkit.data.states import check_states, read_states_index
from westkit.data.units import KMeansUnits, S3Units, codebook_for
from westkit.decode.search import GenerateConfig, greedy, token_budget
from westkit.models.features import SAMPLE_RATE
from westkit.models.taste import TasteConfig, TasteModel, UnitStep, code_usage, text_encoder_name
from westkit.models.whisper import WhisperText, encoder_fingerprint, load_whisper_tokenizer
from westkit.train import TrainConfig, Trainer, distributed
from westkit.train.reports import write_loss_reports


@dataclass
class UnitsConfig:
    """The ``units:`` section: what the decoder learns to predict."""
    kind: Literal["kmeans", "s3"] = "kmeans"
    codebook: str = ""                    # kmeans: the codebook file (`westkit units fit`)
    fit_on: list[str] = field(default_factory=list)   # kmeans: fit the codebook on these shards if missing
    layer: int = 3                        # ... on this encoder layer
    k: int = 512
    pool: int = 2                         # 50 Hz states per unit (2: 25 units/s)
    s3_model: str = "speech_tokenizer_v1"  # s3: the s3tokenizer model name

    def __post_init__(self):
        if self.kind == "kmeans" and not self.codebook:
            raise ValueError("units.codebook is empty: name a codebook file (fit one with `westkit units "
                             "fit SHARDS --layer N --k 512 --out FILE`, or set units.fit_on=[SHARDS] to "
                             "fit it there on first use)")


@dataclass
class EvalConfig:
    """The ``eval:`` section: unit accuracy and error rate on ``eval_data``."""
    batches: int = 0                      # eval batches per rank (0: the whole set)
    units_per_second_budget: float = 40.0  # greedy budget per second of audio (units: 50 / pool)
    max_units: int = 900


@dataclass
class RecipeConfig:
    model: TasteConfig = field(default_factory=TasteConfig)
    units: UnitsConfig = field(default_factory=UnitsConfig)
    data: LoaderConfig = field(default_factory=LoaderConfig)
    eval_data: LoaderConfig | None = None
    eval: EvalConfig = field(default_factory=EvalConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def unit_step(cfg: RecipeConfig):
    """(pipeline step audio -> targets, number of units, what they are)."""
    u = cfg.units
    if u.kind == "s3":
        step = S3Units(u.s3_model)
        return step, step.eos, f"CosyVoice S3 tokens ({u.s3_model})"
    book = codebook_for(u.codebook, u.fit_on, cfg.model.whisper, u.layer, u.k, u.pool, cfg.train.seed)
    # precomputed states [last | middle] already hold the codebook's layer when it is one of them
    index = read_states_index(cfg.data.states) if cfg.data.states else {}
    part = {index.get("n_layers"): "last", cfg.model.layer: "middle"}.get(book.layer) if index else None
    return KMeansUnits(u.codebook, from_states=part), book.k, (f"k-means units: {book.k} centroids over layer {book.layer} of "
                                              f"{book.model}, {50 / book.pool:g} per second ({u.codebook})")


def text_step(cfg: TasteConfig):
    """The tokenizer of the embedding table the queries come from, as a ``text_ids`` step."""
    if cfg.text_embed == "whisper":
        return tokenize("text_ids", WhisperText(load_whisper_tokenizer(cfg.whisper)).text_ids)
    from transformers import AutoTokenizer
    from westkit.assets import resolve
    tok = AutoTokenizer.from_pretrained(resolve(text_encoder_name(cfg)))
    return tokenize("text_ids", lambda text: tok.encode(text.strip(), add_special_tokens=False) or [0])


def unit_edits(ref: list[int], hyp: list[int]) -> int:
    from rapidfuzz.distance import Levenshtein
    return Levenshtein.distance(ref, hyp)


def make_eval(run: recipe.Run, steps):
    """eval_fn(model, step) -> per decoder (taste, baseline): ``acc_*`` top-1 unit accuracy
    under teacher forcing over every unit and EOS of every utterance, ``uer_*`` unit error
    rate of greedy decoding (edits / reference units), ``eval_loss_*``; and for the
    quantised tokens ``bitrate`` (bit/s of audio), ``codebook_usage`` (share of codes used
    per quantiser over the set) and ``codebook_perplexity``. Sums over ranks."""
    cfg, info = run.cfg, run.info
    if cfg.eval_data is None:
        return None
    loader = build_loader(cfg.eval_data, info.rank, info.world_size, train=False, steps=steps)
    gen = GenerateConfig(tokens_per_second=cfg.eval.units_per_second_budget, base_tokens=8,
                         max_new_tokens=cfg.eval.max_units)
    done = recipe.everyone_done(info.device)

    def eval_fn(model: TasteModel, step: int) -> dict:
        sums = {"seconds": 0.0, "text_tokens": 0.0, "utts": 0.0}
        usage = None
        for batch in recipe.eval_batches(loader, cfg.eval.batches, info.device):
            pre = model.prefixes(batch)
            sums["seconds"] += float(batch["audio_lens"].sum()) / SAMPLE_RATE
            sums["text_tokens"] += float(batch["text_lens"].sum())
            sums["utts"] += len(batch["keys"])
            refs = [t[:n - 1].tolist() for t, n in zip(batch["targets"], batch["target_lens"])]
            budgets = token_budget(batch["audio_lens"], gen)
            for name, decoder in model.decoders().items():
                logits, labels = decoder(pre[name], batch["text_lens"], batch["targets"], batch["target_lens"])
                scored = labels != -100
                s = lambda k, v: sums.__setitem__(f"{name}/{k}", sums.get(f"{name}/{k}", 0.0) + float(v))
                s("correct", ((logits.argmax(-1) == labels) & scored).sum())
                s("scored", scored.sum())
                s("loss", torch.nn.functional.cross_entropy(logits[scored].float(), labels[scored], reduction="sum"))
                hyps = greedy(UnitStep(decoder, pre[name], batch["text_lens"]), budgets, [decoder.eos],
                              everyone_done=done)
                s("edits", sum(unit_edits(r, h.ids) for r, h in zip(refs, hyps)))
                s("ref_units", sum(len(r) for r in refs))
                s("stopped", sum(not h.hit_limit for h in hyps))
            if pre["codes"] is not None:
                u = code_usage(pre["codes"], pre["text_mask"], model.cfg.rvq_codes).double()
                usage = u if usage is None else usage + u
        if model.cfg.rvq_depth:
            usage = usage if usage is not None else torch.zeros(model.cfg.rvq_depth, model.cfg.rvq_codes)
            sums.update({f"usage/{i}": float(v) for i, v in enumerate(usage.flatten().tolist())})
        t = distributed.all_sum(sums, info.device)
        seconds = t["seconds"]
        result = {}
        for name in model.decoders():
            result[f"acc_{name}"] = t[f"{name}/correct"] / max(t[f"{name}/scored"], 1)
            result[f"uer_{name}"] = t[f"{name}/edits"] / max(t[f"{name}/ref_units"], 1)
            result[f"eval_loss_{name}"] = t[f"{name}/loss"] / max(t[f"{name}/scored"], 1)
            result[f"stopped_{name}"] = t[f"{name}/stopped"] / max(t["utts"], 1)
        result["text_tokens_per_s"] = t["text_tokens"] / max(seconds, 1e-9)
        result["units_per_s"] = t["taste/ref_units"] / max(seconds, 1e-9)
        if model.cfg.rvq_depth:
            counts = torch.tensor([t[f"usage/{i}"] for i in range(usage.numel())]).reshape(usage.shape)
            p = counts / counts.sum(-1, keepdim=True).clamp(min=1)
            result["bitrate"] = result["text_tokens_per_s"] * model.cfg.bits_per_token
            result["codebook_usage"] = float((counts > 0).double().mean())
            entropy = -(p * p.clamp(min=1e-12).log()).sum(-1)
            result["codebook_perplexity"] = float(entropy.exp().mean())
        return result
    return eval_fn


def main(argv=None) -> int:
    run = recipe.start(RecipeConfig, __doc__, argv)
    cfg = run.cfg
    units, n_units, about = unit_step(cfg)
    run.say(f"targets: {about}")
    model = TasteModel.from_config(dataclasses.replace(cfg.model, n_units=n_units))
    for section in (cfg.data, cfg.eval_data):
        if section is not None and section.states:
            check_states(section.states, encoder_fingerprint(model.encoder.encoder), pad_to_30s=False,
                         layer=cfg.model.layer)
    steps = [text_step(cfg.model), units]
    loader = build_loader(cfg.data, run.info.rank, run.info.world_size, steps=steps)
    loader.require_audio("TASTE aggregates each utterance's speech")
    eval_fn = make_eval(run, steps)
    Trainer(model, loader, cfg.train, run.out, eval_fn=eval_fn).fit()
    for path in write_loss_reports(run.info, run.out, len(loader) / cfg.train.grad_accum,
                                   header=f"# {about}; eval data {cfg.eval_data.shards if cfg.eval_data else None}"):
        run.say(f"wrote {path}")
    return 0


if __name__ == "__main__":
    recipe.main(main)
