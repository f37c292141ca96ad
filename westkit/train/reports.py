"""Per-step tables and loss plots from a run's ``metrics.jsonl`` (rank 0 writes, others skip).

`write_loss_reports` adds, beside the engine's ``metrics.jsonl``/``curves.png``:
``step_log.csv`` (every train record: step, epoch and each logged number), ``loss_curve.png``
(mean train loss per epoch, one line per ``loss*`` key), ``batch_loss_curve.png`` (each train
record, raw and smoothed with a moving average) and ``final_accuracy.txt`` (the last eval
record, one ``name value`` per line). A train record is one step when ``train.log_every`` is 1,
else the mean over the steps since the previous one.
"""
from __future__ import annotations

import csv
import os
from pathlib import Path

from westkit.train.logger import read_metrics

SKIP = {"kind", "time"}


def _save(fig, path: Path) -> None:
    import matplotlib.pyplot as plt
    tmp = path.with_suffix(".tmp.png")
    fig.tight_layout()
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)


def moving_average(values: list[float], window: int) -> list[float]:
    """Trailing mean over up to ``window`` values (the first points average what they have)."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def write_loss_reports(info, out_dir: str | Path, steps_per_epoch: float, smooth: int = 10,
                       header: str = "") -> list[Path]:
    """Write the files named in the module docstring from ``out_dir/metrics.jsonl``; on ranks
    other than 0 (``info``: `westkit.train.distributed.DistInfo`) do nothing. ``header`` opens
    ``final_accuracy.txt`` (say there which units and data the numbers are about)."""
    if not info.is_main:
        return []
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    rows = read_metrics(out / "metrics.jsonl")
    train = [r for r in rows if r["kind"] == "train"]
    evals = [r for r in rows if r["kind"] == "eval"]
    keys = sorted({k for r in train for k in r} - SKIP - {"step"})
    epoch = lambda step: int((step - 1) // max(steps_per_epoch, 1e-9))
    written = []
    with open(out / "step_log.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["step", "epoch", *keys])
        for r in train:
            w.writerow([r["step"], epoch(r["step"]), *[r.get(k, "") for k in keys]])
    written.append(out / "step_log.csv")

    loss_keys = [k for k in keys if k.startswith("loss")]
    fig, ax = plt.subplots(figsize=(7, 4))
    for k in loss_keys:
        by_epoch: dict[int, list[float]] = {}
        for r in train:
            if k in r:
                by_epoch.setdefault(epoch(r["step"]), []).append(r[k])
        xs = sorted(by_epoch)
        ax.plot([x + 1 for x in xs], [sum(by_epoch[x]) / len(by_epoch[x]) for x in xs], "o-", label=k)
    ax.set_xlabel("epoch")
    ax.set_ylabel("mean train loss")
    ax.legend()
    ax.grid(alpha=0.3)
    _save(fig, out / "loss_curve.png")
    written.append(out / "loss_curve.png")

    fig, ax = plt.subplots(figsize=(7, 4))
    for k in loss_keys:
        pts = [(r["step"], r[k]) for r in train if k in r]
        if not pts:
            continue
        steps, values = zip(*pts)
        line, = ax.plot(steps, values, alpha=0.25)
        ax.plot(steps, moving_average(list(values), smooth), color=line.get_color(),
                label=f"{k} (moving average of {smooth})")
    ax.set_xlabel("step")
    ax.set_ylabel("train loss")
    ax.legend()
    ax.grid(alpha=0.3)
    _save(fig, out / "batch_loss_curve.png")
    written.append(out / "batch_loss_curve.png")

    if evals:
        last = evals[-1]
        lines = [header] if header else []
        lines += [f"step {last['step']}"]
        lines += [f"{k} {last[k]:.6g}" for k in sorted(last) if k not in SKIP | {"step"}]
        (out / "final_accuracy.txt").write_text("\n".join(lines) + "\n")
        written.append(out / "final_accuracy.txt")
    return written
