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

import argparse
import itertools
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from westkit.config import build, load_yaml, to_dict
from westkit.data.loader import LoaderConfig, build_loader, plan_epoch
from westkit.decode.search import GenerateConfig, LLMStep, greedy, token_budget
from westkit.decode.scoring import score
from westkit.models.west import WestConfig, WestModel
from westkit.train import TrainConfig, Trainer, distributed, seed_everything

SECTIONS = ("model", "data", "eval_data", "eval", "train")


@dataclass
class EvalConfig:
    """The ``eval:`` section: greedy WER on ``eval_data`` every ``train.eval_every`` steps."""
    batches: int = 4                  # eval batches per rank per evaluation (0: the whole set)
    max_new_tokens: int = 128
    show: int = 2                     # hypotheses printed per evaluation (rank 0)


@dataclass
class RecipeConfig:
    model: WestConfig
    data: LoaderConfig
    eval_data: LoaderConfig | None
    eval: EvalConfig
    train: TrainConfig


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="recipe YAML (recipes/west/conf/tiny.yaml)")
    p.add_argument("--out", required=True, help="run folder (logs, checkpoints, trainable weights)")
    p.add_argument("overrides", nargs="*", help="section.key=value, e.g. train.max_steps=20")
    return p.parse_args(argv)


def init_config(path: str, overrides: list[str]) -> RecipeConfig:
    """Read and validate every section (the loader makes built-in corpora named in shards)."""
    conf = load_yaml(path, overrides)
    unknown = sorted(set(conf) - set(SECTIONS))
    if unknown:
        raise ValueError(f"{path}: unknown section(s) {unknown}; sections are {', '.join(SECTIONS)}")
    eval_data = conf.get("eval_data")
    return RecipeConfig(
        model=build(WestConfig, conf.get("model"), f"{path}: model"),
        data=build(LoaderConfig, conf.get("data"), f"{path}: data"),
        eval_data=build(LoaderConfig, eval_data, f"{path}: eval_data") if eval_data else None,
        eval=build(EvalConfig, conf.get("eval"), f"{path}: eval"),
        train=build(TrainConfig, conf.get("train"), f"{path}: train"))


def init_data(cfg: LoaderConfig, info, log=print):
    """The train loader for this rank; logs how much of the planned batches is padding."""
    loader = build_loader(cfg, info.rank, info.world_size, train=True)
    if info.is_main:
        log(padding_report(loader))
    return loader


def padding_report(loader) -> str:
    """Audio padding of the first epoch's batch plan (metadata only), vs padding to 30 s."""
    dur = loader.catalog.duration
    plan = plan_epoch(loader.catalog, loader.cfg, 0, loader.world_size, train=True)
    speech = sum(float(dur[b].sum()) for b in plan)
    padded = sum(len(b) * float(dur[b].max()) for b in plan)
    return (f"data: {len(dur)} utterances, {speech / 3600:.2f} h in {len(plan)} batches per epoch "
            f"(all ranks); audio padding {100 * (1 - speech / max(padded, 1e-9)):.1f}% "
            f"(padded to 30 s it would be {100 * (1 - speech / (30.0 * len(dur))):.1f}%)")


def init_eval(cfg: RecipeConfig, info):
    """eval_fn(model, step) -> {"wer", "cer", "stopped", "eval_loss"} on the eval shards, or None.

    Greedy decoding on every rank in lockstep (ZeRO-3 forwards are collective), counts summed
    over ranks. ``stopped`` is the share of hypotheses that ended with the end-of-turn token.
    """
    if cfg.eval_data is None:
        return None
    loader = build_loader(cfg.eval_data, info.rank, info.world_size, train=False)
    gen = GenerateConfig(max_new_tokens=cfg.eval.max_new_tokens)

    def everyone_done(done: bool) -> bool:
        return not distributed.any_rank(not done, info.device)

    def eval_fn(model: WestModel, step: int) -> dict:
        sums = {"errors": 0.0, "ref_words": 0.0, "char_errors": 0.0, "ref_chars": 0.0,
                "stopped": 0.0, "utts": 0.0, "loss": 0.0, "tokens": 0.0}
        batches = iter(loader)
        if cfg.eval.batches:
            batches = itertools.islice(batches, cfg.eval.batches)
        shown = []
        for batch in batches:
            batch = distributed.to_device(batch, info.device)
            out = model(batch)
            sums["loss"] += float(out["loss"]) * int(out["num_tokens"])
            sums["tokens"] += int(out["num_tokens"])
            inputs = model.prompt_inputs(batch["audio"], batch["audio_lens"])
            hyps = greedy(LLMStep(model.llm, inputs), token_budget(batch["audio_lens"], gen),
                          model.prompt.stop_ids, everyone_done)
            texts = [model.prompt.decode(h.ids) for h in hyps]
            s = score(batch["texts"], texts)
            sums["errors"] += s.substitutions + s.deletions + s.insertions
            sums["ref_words"] += s.ref_words
            sums["char_errors"] += s.cer * s.ref_chars
            sums["ref_chars"] += s.ref_chars
            sums["stopped"] += sum(not h.hit_limit for h in hyps)
            sums["utts"] += len(hyps)
            shown += list(zip(batch["texts"], texts))[:max(cfg.eval.show - len(shown), 0)]
        if info.is_main:
            for ref, hyp in shown:
                print(f"[eval step {step}] ref: {ref}\n[eval step {step}] hyp: {hyp}", file=sys.stderr)
        t = distributed.all_sum(sums, info.device)
        return {"wer": t["errors"] / max(t["ref_words"], 1), "cer": t["char_errors"] / max(t["ref_chars"], 1),
                "stopped": t["stopped"] / max(t["utts"], 1), "eval_loss": t["loss"] / max(t["tokens"], 1)}
    return eval_fn


def save_config(cfg: RecipeConfig, out: Path, info) -> None:
    """The resolved config next to the weights: what recognize rebuilds the model from."""
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        resolved = to_dict(cfg)
        (out / "config.yaml").write_text(yaml.safe_dump(resolved, sort_keys=False))


def main(argv=None) -> int:
    args = parse_args(argv)
    cfg = init_config(args.config, args.overrides)
    info = distributed.init()
    seed_everything(cfg.train.seed)  # before any module is made: the seed decides the projector's init
    model = WestModel.from_config(cfg.model)
    loader = init_data(cfg.data, info)
    eval_fn = init_eval(cfg, info)
    save_config(cfg, Path(args.out), info)
    Trainer(model, loader, cfg.train, args.out, eval_fn=eval_fn).fit()
    return 0


if __name__ == "__main__":
    sys.exit(main())
