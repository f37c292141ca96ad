"""Keep the best model by an evaluation metric beside the latest checkpoint.

`BestKeeper` is called from a recipe's ``eval_fn`` on every rank with the metric just measured
(e.g. dev WER). When it improves, the model's artifact is written to ``OUT/best/`` through the
same export contract as the end of training (``model.export(folder, state)`` from gathered
weights), and ``OUT/best/best.json`` records the step and value. Checkpoints for resuming stay
in ``OUT/checkpoints`` (the latest ``keep_last``); the best export is never deleted by them.
"""
from __future__ import annotations

import json
import shutil
import types
from pathlib import Path

import torch
import torch.distributed as dist

from westkit.train import distributed
from westkit.train.checkpoint import full_state_dict, trainable_state_dict


class BestKeeper:
    """``update(model, step, value) -> bool`` (collective): export when ``value`` is the best so far
    (lower is better). Resumes from ``OUT/best/best.json`` when a run continues."""

    def __init__(self, out_dir: str | Path, metric: str):
        self.folder = Path(out_dir) / "best"
        self.metric = metric
        record = self.folder / "best.json"
        self.best = json.loads(record.read_text())["value"] if record.is_file() else float("inf")

    def update(self, model: torch.nn.Module, step: int, value: float) -> bool:
        if not value < self.best:
            return False
        self.best = value
        shim = types.SimpleNamespace(module=model)  # the gatherers only need `.module`
        full = getattr(model, "export_scope", "trainable") == "full"
        state = full_state_dict(shim) if full else trainable_state_dict(shim)
        if distributed.init().is_main:
            tmp = self.folder.with_name("best.partial")
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            if hasattr(model, "export"):
                model.export(tmp, state)
            (tmp / "best.json").write_text(json.dumps({"step": step, "metric": self.metric, "value": value}) + "\n")
            shutil.rmtree(self.folder, ignore_errors=True)
            tmp.rename(self.folder)
        if dist.is_initialized():
            dist.barrier()
        return True
