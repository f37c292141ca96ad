"""Rank-0 outputs: console progress, ``metrics.jsonl``, TensorBoard events, a curves PNG.

`make_logger` returns a `RunLogger` on rank 0 and a `NullLogger` (same methods, no effect)
on every other rank, so the engine never asks "am I rank 0?" at a call site.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from tqdm import tqdm


class NullLogger:
    """What ranks other than 0 get: every method does nothing."""

    def info(self, message: str) -> None: ...
    def continue_from(self, step: int) -> None: ...
    def start(self, total: int, initial: int) -> None: ...
    def advance(self, step: int) -> None: ...
    def record(self, step: int, values: dict, kind: str = "train") -> None: ...
    def plot(self) -> None: ...
    def close(self) -> None: ...


class RunLogger(NullLogger):
    """Writes under ``out_dir``: ``metrics.jsonl`` (one JSON object per record, appended
    across resumes), ``tensorboard/`` events and ``curves.png`` (loss and lr against step).

    Call `continue_from` with the step training starts at before the first record, so the
    files hold one run's history: the one the checkpoints continue."""

    def __init__(self, out_dir: str | Path):
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.metrics = self.out_dir / "metrics.jsonl"
        self.jsonl = None  # opened at the first record
        self._tb = None
        self._purge_step = None
        self.bar = None

    def info(self, message: str) -> None:
        line = f"[westkit.train {time.strftime('%H:%M:%S')}] {message}"
        if self.bar is not None:
            self.bar.write(line)
        else:
            print(line, flush=True)

    def continue_from(self, step: int) -> None:
        """Drop what a run no checkpoint continues left in ``metrics.jsonl``: at step 0 the
        whole file moves to ``metrics.jsonl.stale``; at a resumed step N the records after N
        (written after the last checkpoint by a run that then died) go, in an atomic rewrite.
        TensorBoard hides its events after ``step`` likewise (``purge_step``)."""
        self._purge_step = step + 1
        if not self.metrics.is_file() or self.metrics.stat().st_size == 0:
            return
        if step == 0:
            stale = self.metrics.with_name(self.metrics.name + ".stale")
            os.replace(self.metrics, stale)
            self.info(f"{self.metrics} holds records of a run no checkpoint continues: moved it "
                      f"to {stale}")
            return
        keep, dropped = [], 0
        with open(self.metrics) as f:
            for line in f:
                if not line.strip():
                    continue
                try:
                    row_step = json.loads(line)["step"]
                except (ValueError, KeyError):  # a line torn by a kill mid-write
                    row_step = None
                if row_step is not None and row_step <= step and line.endswith("\n"):
                    keep.append(line)
                else:
                    dropped += 1
        if dropped:
            tmp = self.metrics.with_name(self.metrics.name + ".tmp")
            with open(tmp, "w") as f:
                f.writelines(keep)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.metrics)
            self.info(f"{self.metrics}: dropped {dropped} records after step {step}, written by "
                      f"the previous run after its last checkpoint")

    def start(self, total: int, initial: int) -> None:
        # in a batch job's log file every refresh is a line: refresh rarely there
        self.bar = tqdm(total=total, initial=initial, desc="train", unit="step",
                        dynamic_ncols=True, mininterval=1.0 if sys.stderr.isatty() else 60.0)

    def advance(self, step: int) -> None:
        if self.bar is not None:
            self.bar.update(step - self.bar.n)

    @property
    def tb(self):
        if self._tb is None:  # deferred: importing TensorBoard costs seconds
            from torch.utils.tensorboard import SummaryWriter
            self._tb = SummaryWriter(str(self.out_dir / "tensorboard"), purge_step=self._purge_step)
        return self._tb

    def record(self, step: int, values: dict, kind: str = "train") -> None:
        """One record of numbers at ``step``; ``kind`` is "train" or "eval" (TensorBoard prefix)."""
        row = {"kind": kind, "step": step, "time": round(time.time(), 3)}
        row.update({k: float(v) for k, v in values.items()})
        if self.jsonl is None:
            self.jsonl = open(self.metrics, "a")
        self.jsonl.write(json.dumps(row) + "\n")
        self.jsonl.flush()
        for k, v in values.items():
            self.tb.add_scalar(f"{kind}/{k}", float(v), step)
        self.tb.flush()
        if self.bar is not None and kind == "train":
            shown = {"loss": "{:.4f}", "lr": "{:.2e}", "audio_s_per_s": "{:.1f}",
                     "tokens_per_s": "{:.0f}"}
            self.bar.set_postfix({k.replace("_per_", "/"): f.format(values[k])
                                  for k, f in shown.items() if k in values}, refresh=True)
        elif kind != "train":
            self.info(f"step {step} {kind}: " + ", ".join(f"{k}={v:.4g}" for k, v in values.items()))

    def plot(self) -> None:
        """Redraw ``curves.png`` from ``metrics.jsonl``: train loss (+ eval numbers) and lr."""
        plot_curves(self.out_dir / "metrics.jsonl", self.out_dir / "curves.png")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self.jsonl is not None:
            self.jsonl.close()
            self.jsonl = None


def read_metrics(path: str | Path) -> list[dict]:
    """The records of a ``metrics.jsonl``; a resumed run's repeated steps keep the last copy."""
    rows: dict[tuple, dict] = {}
    with open(path) as f:
        for line in f:
            if line.strip():
                row = json.loads(line)
                rows[(row["kind"], row["step"])] = row
    return sorted(rows.values(), key=lambda r: (r["kind"], r["step"]))


def plot_curves(metrics_path: str | Path, png_path: str | Path) -> None:
    """Loss and learning rate against step, written atomically to ``png_path``."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(metrics_path)
    train = [r for r in rows if r["kind"] == "train"]
    evals = [r for r in rows if r["kind"] != "train"]
    eval_keys = sorted({k for r in evals for k in r} - {"kind", "step", "time", "eval_time_s"})
    loss_keys = [k for k in eval_keys if "loss" in k]
    other_keys = [k for k in eval_keys if "loss" not in k]      # e.g. wer, cer
    panels = 3 if other_keys else 2
    fig, axes = plt.subplots(panels, 1, figsize=(7, 3 * panels), sharex=True)
    ax_loss, ax_lr = axes[0], axes[1]
    ax_loss.plot([r["step"] for r in train], [r["loss"] for r in train], label="train loss")
    for key in loss_keys:
        pts = [(r["step"], r[key]) for r in evals if key in r]
        ax_loss.plot(*zip(*pts), "o-", label=f"eval {key}")
    ax_loss.set_ylabel("loss")
    ax_loss.legend()
    ax_lr.plot([r["step"] for r in train if "lr" in r], [r["lr"] for r in train if "lr" in r])
    ax_lr.set_ylabel("learning rate")
    if other_keys:
        for key in other_keys:
            pts = [(r["step"], r[key]) for r in evals if key in r]
            axes[2].plot(*zip(*pts), "o-", label=f"eval {key}")
        axes[2].set_ylabel("eval")
        axes[2].legend()
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel("step")
    fig.tight_layout()
    tmp = Path(png_path).with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, png_path)


def make_logger(is_main: bool, out_dir: str | Path) -> NullLogger:
    """`RunLogger` for rank 0, `NullLogger` for the others."""
    return RunLogger(out_dir) if is_main else NullLogger()
