"""WeST / SLAM-ASR: train the projector (and optional LoRA) between a frozen Whisper encoder
and a frozen LLM, on WebDataset shards, with the westkit engine (DeepSpeed ZeRO).

    python recipes/west/train.py --config recipes/west/conf/tiny.yaml --out exp/west_tiny
    torchrun --nproc_per_node 2 recipes/west/train.py --config recipes/west/conf/tiny.yaml --out exp/west_tiny
    bash launch/torchrun.sh recipes/west/train.py --config recipes/west/conf/large.yaml --out /shared/west_large

Extra arguments are ``section.key=value`` overrides of the YAML (e.g. ``train.max_steps=20``).
Shard lists may name built-in corpora (``general-train``), made on first use. The run folder
gets ``config.yaml`` (the resolved config), the engine's logs and checkpoints, and
``trainable.safetensors``; decode it with ``westkit-recognize --west OUT --shards ...``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from westkit import recipe
from westkit.data.loader import LoaderConfig, build_loader, padding_report
from westkit.data.pipeline import prompt_tokens, tokenize
from westkit.decode.recognizers import WestRecognizer
from westkit.decode.scoring import WERAccumulator
from westkit.decode.search import GenerateConfig
from westkit.models.west import WestConfig, WestModel
from westkit.train import TrainConfig, Trainer, distributed


@dataclass
class EvalConfig:
    """The ``eval:`` section: greedy WER on ``eval_data`` every ``train.eval_every`` steps."""
    batches: int = 4                  # eval batches per rank per evaluation (0: the whole set)
    max_new_tokens: int = 128
    show: int = 2                     # hypotheses printed per evaluation (rank 0)


@dataclass
class RecipeConfig:
    model: WestConfig = field(default_factory=WestConfig)
    data: LoaderConfig = field(default_factory=LoaderConfig)
    eval_data: LoaderConfig | None = None
    eval: EvalConfig = field(default_factory=EvalConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def data_steps(model: WestModel) -> list:
    """Per-sample steps the model needs: its targets and, when the prompt varies per utterance
    (an {instruction} or {context} in model.prompt), each utterance's prompt ids."""
    steps = [tokenize("targets", model.prompt.target)]
    return steps + [prompt_tokens(model.prompt.for_sample)] if model.prompt.dynamic else steps


def make_eval(run: recipe.Run, model: WestModel):
    """eval_fn(model, step) -> {"wer", "cer", "stopped", "eval_loss"} on the eval shards, or None.

    Greedy decoding on every rank in lockstep (ZeRO-3 forwards are collective), counts summed
    over ranks. ``stopped`` is the share of hypotheses that ended with the end-of-turn token.
    """
    cfg, info = run.cfg, run.info
    if cfg.eval_data is None:
        return None
    loader = build_loader(cfg.eval_data, info.rank, info.world_size, train=False, steps=data_steps(model))
    gen = GenerateConfig(max_new_tokens=cfg.eval.max_new_tokens)
    done = recipe.everyone_done(info.device)

    def eval_fn(model: WestModel, step: int) -> dict:
        wer, shown = WERAccumulator(), []
        sums = {"stopped": 0.0, "utts": 0.0, "loss": 0.0, "tokens": 0.0}
        recognizer = WestRecognizer(model, gen)
        for batch in recipe.eval_batches(loader, cfg.eval.batches, info.device):
            out = model(batch)
            sums["loss"] += float(out["loss"]) * int(out["num_tokens"])
            sums["tokens"] += int(out["num_tokens"])
            hyps = recognizer(batch["audio"], batch["audio_lens"], everyone_done=done, prompts=batch.get("prompts"))
            wer.add(batch["texts"], [h.text for h in hyps])
            shown += [(r, h.text) for r, h in zip(batch["texts"], hyps)][:max(cfg.eval.show - len(shown), 0)]
            sums["stopped"] += sum(not h.hit_limit for h in hyps)
            sums["utts"] += len(hyps)
        for ref, hyp in shown:
            run.say(f"[eval step {step}] ref: {ref}\n[eval step {step}] hyp: {hyp}")
        score, t = wer.reduce(distributed.all_sum, info.device).result(), distributed.all_sum(sums, info.device)
        return {"wer": score.wer, "cer": score.cer, "stopped": t["stopped"] / max(t["utts"], 1),
                "eval_loss": t["loss"] / max(t["tokens"], 1)}
    return eval_fn


def main(argv=None) -> int:
    run = recipe.start(RecipeConfig, __doc__, argv)
    model = WestModel.from_config(run.cfg.model)
    loader = build_loader(run.cfg.data, run.info.rank, run.info.world_size, steps=data_steps(model))
    loader.require_audio("WeST learns from paired speech")
    run.say(padding_report(loader))
    Trainer(model, loader, run.cfg.train, run.out, eval_fn=make_eval(run, model)).fit()
    return 0


if __name__ == "__main__":
    recipe.main(main)
