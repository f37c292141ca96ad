"""The one training engine: a plain model + a batch loader -> DeepSpeed training by steps.

Model contract: an ``nn.Module`` whose ``forward(batch: dict) -> dict`` returns ``"loss"`` (a
scalar mean over the micro-batch's target tokens) and optionally counters (``"num_tokens"``,
``"audio_seconds"``). Export contract: at the end the engine gathers the weights (all of them
when the model says ``export_scope = "full"``, else the trainable ones), writes
``trainable.safetensors`` and, on rank 0, calls ``model.export(out_dir, state) -> [paths]``
when the model has it, so each model writes its own artifact from the live module.
Loader contract: iterable of batch dicts, repeating forever for training, with
``state_dict()`` / ``load_state_dict()`` giving its exact position; a batch's ``num_targets``
(counted by the data pipeline) makes the update a true mean over all target tokens of a step
(see `westkit.train.losses`).
"""
from __future__ import annotations

import fnmatch
import time
from pathlib import Path
from typing import Callable, Iterable

import torch
import torch.distributed as dist

from westkit.config import to_dict
from westkit.train import distributed, ds_config as ds_configs
from westkit.train.checkpoint import (Checkpointer, full_state_dict, rng_state, save_safetensors,
                                      seed_everything, set_rng_state, trainable_state_dict)
from westkit.train.config import TrainConfig
from westkit.train.logger import make_logger
from westkit.train.losses import accumulation_weights
from westkit.train.metrics import StepStats
from westkit.train.preempt import PREEMPTED_EXIT_CODE, PreemptionFlag, record_exit_code
from westkit.train.schedule import make_scheduler

EvalFn = Callable[[torch.nn.Module, int], dict]


def freeze(model: torch.nn.Module, patterns: list[str]) -> list[str]:
    """Make exactly the parameters whose names match a pattern trainable; return their names."""
    names = [n for n, _ in model.named_parameters()]
    for pattern in patterns:
        if not any(fnmatch.fnmatchcase(n, pattern) for n in names):
            examples = ", ".join(names[:6])
            raise ValueError(f"train.trainable: pattern {pattern!r} matches no parameter; "
                             f"names look like: {examples}, ...")
    chosen = []
    for name, p in model.named_parameters():
        p.requires_grad_(any(fnmatch.fnmatchcase(name, pat) for pat in patterns))
        if p.requires_grad:
            chosen.append(name)
    return chosen


def enable_gradient_checkpointing(model: torch.nn.Module) -> list[str]:
    """Turn on activation checkpointing in the outermost Hugging Face models inside ``model``
    (frozen ones too: gradients to a projector still flow through a frozen LLM's
    activations). Returns their names ("" for ``model`` itself)."""
    done: list[str] = []
    for name, m in model.named_modules():
        if any(name.startswith(f"{d}.") for d in done if d) or "" in done:
            continue
        if getattr(m, "supports_gradient_checkpointing", False):
            kwargs = {"use_reentrant": False}
            if hasattr(m, "activation_checkpointing_enable"):  # transformers >= 5
                m.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
            else:
                m.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
            done.append(name)
    return done


def make_optimizer(params: list[torch.nn.Parameter], cfg: TrainConfig, ds: dict, on_gpu: bool):
    """AdamW over the trainable parameters: DeepSpeed's CPU Adam when optimiser states are
    offloaded (the only one ZeRO-Offload accepts), else torch's (fused on GPU)."""
    kwargs = dict(lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay)
    if ds_configs.offloads_optimizer(ds):
        from deepspeed.ops.adam import DeepSpeedCPUAdam
        return DeepSpeedCPUAdam(params, adamw_mode=True, **kwargs)
    return torch.optim.AdamW(params, fused=on_gpu, **kwargs)


class Trainer:
    """Trains ``model`` on ``train_loader`` under DeepSpeed; outputs go to ``out_dir``.

    ``ds_config`` (a ``ds_configs/`` stem or a JSON path) overrides ``cfg.ds_config``.
    ``eval_fn(model, step) -> {name: number}`` runs on every rank (ZeRO-3 gathers weights
    collectively) every ``cfg.eval_every`` steps and at the end; rank 0's answer is logged,
    so reduce over ranks inside it (`westkit.train.distributed.all_sum`).
    """

    def __init__(self, model: torch.nn.Module, train_loader: Iterable[dict], cfg: TrainConfig,
                 out_dir: str | Path, ds_config: str | None = None,
                 eval_fn: EvalFn | None = None):
        self.dist = distributed.init()
        self.cfg, self.out_dir, self.eval_fn = cfg, Path(out_dir), eval_fn
        self.train_loader = train_loader
        self.log = make_logger(self.dist.is_main, self.out_dir)
        on_gpu = self.dist.device.type == "cuda"

        names = freeze(model, cfg.trainable)
        n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
        n_all = sum(p.numel() for p in model.parameters())
        self.log.info(f"world size {self.dist.world_size} on {self.dist.device.type}; trainable "
                      f"{n_train:,} of {n_all:,} parameters ({len(names)} tensors)")
        if cfg.gradient_checkpointing:
            where = enable_gradient_checkpointing(model)
            if not where:
                raise ValueError("train.gradient_checkpointing=true, but the model holds no "
                                 "Hugging Face model that supports it; set it to false")
            self.log.info(f"gradient checkpointing in {where}")
        self.ds = ds_configs.load(ds_config or cfg.ds_config, cfg, self.dist.world_size, on_gpu,
                                  model)
        params = [p for p in model.parameters() if p.requires_grad]
        import deepspeed
        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=model, optimizer=make_optimizer(params, cfg, self.ds, on_gpu),
            lr_scheduler=lambda opt: make_scheduler(opt, cfg), config=self.ds)
        self.checkpoints = Checkpointer(self.out_dir / "checkpoints", cfg.keep_last,
                                        self.dist.rank)
        self.step = 0
        self.last_saved = self.last_evaluated = -1

    # ----------------------------------------------------------------------------------------
    def fit(self) -> dict:
        """Train to ``cfg.max_steps`` (resuming if a checkpoint exists); returns the last
        train record. Exits the process with `PREEMPTED_EXIT_CODE` after a preemption save."""
        cfg = self.cfg
        self._resume_or_start()
        preempt = PreemptionFlag()
        stats, record = StepStats(), {}
        batches = iter(self.train_loader)
        self.log.start(total=cfg.max_steps, initial=self.step)
        try:
            while self.step < cfg.max_steps:
                window = self._next_window(batches)
                if distributed.any_rank(window is None, self.dist.device):
                    self.log.info(f"a rank's train data ran out at step {self.step}; stopping "
                                  f"(train loaders should repeat forever)")
                    break
                self.train_step(window, stats)
                self.step += 1
                self.log.advance(self.step)
                if self.step % cfg.log_every == 0 or self.step == cfg.max_steps:
                    record = self._log_train(stats)
                # save first: a failing evaluation must not cost the checkpoint
                if cfg.save_every and self.step % cfg.save_every == 0:
                    self.save()
                if cfg.eval_every and self.step % cfg.eval_every == 0:
                    self.evaluate()
                if distributed.any_rank(preempt.requested, self.dist.device):
                    self._exit_preempted(preempt.signal_name or "a signal on another rank")
            if self.step != self.last_saved:
                self.save()
            if self.step != self.last_evaluated:
                self.evaluate()
            if cfg.export_trainable:
                self.export(self.out_dir / "trainable.safetensors")
        finally:
            if hasattr(batches, "close"):
                batches.close()  # stops the loader's workers now, not at interpreter exit
            preempt.restore()
            self.log.close()
        return record

    def train_step(self, window: list[dict], stats: StepStats) -> None:
        """One optimiser update from ``grad_accum`` micro-batches (DeepSpeed steps at the end)."""
        counts = self._loss_token_counts(window)
        weights = [1.0] * len(window)
        if counts is not None:
            total = distributed.all_sum({"n": sum(counts)}, self.dist.device)["n"]
            weights = accumulation_weights(counts, int(total), self.dist.world_size)
        self.engine.train()
        for i, (batch, weight) in enumerate(zip(window, weights)):
            out = self.engine(distributed.to_device(batch, self.dist.device))
            loss = out["loss"]
            self.engine.backward(loss * weight if weight != 1.0 else loss)
            self.engine.step()  # applies the update only at the accumulation boundary
            stats.add(out, counts[i] if counts is not None else out.get("num_tokens"))
        stats.end_step()

    # ----------------------------------------------------------------------------------------
    def _next_window(self, batches) -> list[dict] | None:
        window = []
        for _ in range(self.cfg.grad_accum):
            batch = next(batches, None)
            if batch is None:
                return None
            window.append(batch)
        return window

    @staticmethod
    def _loss_token_counts(window: list[dict]) -> list[int] | None:
        if not all("num_targets" in b for b in window):
            return None
        return [int(b["num_targets"]) for b in window]

    def _log_train(self, stats: StepStats) -> dict:
        record = stats.reduce(self.dist.device)  # collective
        record["lr"] = self.scheduler.get_last_lr()[0]
        remaining = (self.cfg.max_steps - self.step) * record["step_time"]
        record["eta_min"] = remaining / 60
        self.log.record(self.step, record, "train")
        return record

    def evaluate(self) -> dict:
        """Run ``eval_fn`` (all ranks), log its numbers and redraw the curves."""
        self.last_evaluated = self.step
        result = {}
        if self.eval_fn is not None:
            self.engine.eval()
            started = time.perf_counter()
            with torch.no_grad():
                result = dict(self.eval_fn(self.engine.module, self.step))
            self.engine.train()
            result["eval_time_s"] = time.perf_counter() - started
            self.log.record(self.step, result, "eval")
        self.log.plot()
        return result

    def save(self) -> Path:
        """Checkpoint the full training state at the current step (collective)."""
        state = {"step": self.step, "world_size": self.dist.world_size,
                 "loader": self.train_loader.state_dict(), "rng": rng_state(),
                 "train_config": to_dict(self.cfg)}
        path = self.checkpoints.save(self.engine, self.step, state)
        self.last_saved = self.step
        self.log.info(f"saved checkpoint {path}")
        return path

    def export(self, path: str | Path) -> Path:
        """The trained artifact (collective): trainable weights as safetensors at ``path``, and
        whatever the model's own ``export(out_dir, state)`` writes (see the module docstring)."""
        module = self.engine.module
        full = getattr(module, "export_scope", "trainable") == "full"
        state = full_state_dict(self.engine) if full else trainable_state_dict(self.engine)
        if self.dist.is_main:
            trained = {n for n, p in module.named_parameters() if p.requires_grad}
            save_safetensors({k: v for k, v in state.items() if k in trained}, path,
                             {"step": str(self.step)})
            self.log.info(f"exported {len(trained)} trainable tensors to {path}")
            if hasattr(module, "export"):
                for written in module.export(self.out_dir, state):
                    self.log.info(f"exported {written}")
        dist.barrier()
        return Path(path)

    def _resume_or_start(self) -> None:
        tag = self.checkpoints.latest() if self.cfg.resume else None
        if tag is None:
            seed_everything(self.cfg.seed + self.dist.rank)
            self.log.info(f"starting at step 0 (out_dir {self.out_dir})")
            self.log.continue_from(0)
            return
        state = self.checkpoints.load(self.engine, tag)
        self.step = self.last_saved = state["step"]
        self.train_loader.load_state_dict(state["loader"])
        if state["elastic"]:  # another world size: no RNG state belongs to this rank
            seed_everything(self.cfg.seed + self.dist.rank + 7919 * self.step)
            self.log.info(f"checkpoint {tag} was written by {state['world_size']} processes, this run "
                          f"has {self.dist.world_size}: resumed through DeepSpeed's universal checkpoint")
        else:
            set_rng_state(state["rng"])
        self.log.info(f"resumed from {self.checkpoints.root / tag} at step {self.step}")
        self.log.continue_from(self.step)

    def _exit_preempted(self, signal_name: str) -> None:
        self.log.info(f"{signal_name} received: checkpointing step {self.step} and exiting "
                      f"with code {PREEMPTED_EXIT_CODE}")
        if self.step != self.last_saved:
            self.save()
        record_exit_code(PREEMPTED_EXIT_CODE)
        self.log.close()
        dist.barrier()
        dist.destroy_process_group()
        raise SystemExit(PREEMPTED_EXIT_CODE)
