"""What every recipe's ``main()`` starts with: CLI, typed config, process group, run folder.

    def main(argv=None) -> int:
        run = recipe.start(RecipeConfig, __doc__, argv)   # --config, --out, key=value overrides
        model = build_model(run.cfg.model)
        loader = build_loader(run.cfg.data, run.info.rank, run.info.world_size, steps=...)
        Trainer(model, loader, run.cfg.train, run.out).fit()

    if __name__ == "__main__":
        recipe.main(main)                                 # user errors: one line, exit 2

`start` parses ``--config FILE --out DIR [section.key=value ...]``, builds the recipe's whole
config dataclass in one `westkit.config.build` call (unknown sections and keys are errors),
joins the process group, checks before any heavy work that ``--out`` can be written and, when
it holds a checkpoint, that the new config can continue it (naming the keys that differ),
then writes the resolved ``OUT/config.yaml`` on rank 0 and seeds the RNGs. ``run.say`` prints
on rank 0 only, so recipes never ask which rank they are.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import traceback
from pathlib import Path
from typing import Any, Callable, TypeVar

import yaml

from westkit.config import build, load_yaml, to_dict
from westkit.train import distributed
from westkit.train.checkpoint import seed_everything

T = TypeVar("T")

CONFIG = "config.yaml"
DEBUG_ENV = "WESTKIT_DEBUG"

# what may change when a run continues from its checkpoint: how long and how it logs, saves,
# evaluates and reads; everything else (models, data, what trains, the engine) must match
RESUME_FREE_KEYS = {"train.max_steps", "train.log_every", "train.eval_every", "train.save_every",
                    "train.keep_last", "train.resume", "train.export_trainable"}
RESUME_FREE_LEAVES = {"num_workers", "prefetch_factor", "pin_memory", "max_read_errors",
                      "eval_batches", "decode_eval"}
RESUME_FREE_SECTIONS = {"eval", "eval_data"}


@dataclasses.dataclass
class Run:
    """A started recipe: its config, run folder and place in the process group."""
    cfg: Any
    out: Path
    info: distributed.DistInfo

    def say(self, message: str) -> None:
        """Print on rank 0 (progress a user should see); nothing elsewhere."""
        if self.info.is_main:
            print(message, file=sys.stderr, flush=True)


def parse_args(doc: str, argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="recipe YAML (see the recipe's conf/ folder)")
    p.add_argument("--out", required=True, help="run folder: config, logs, checkpoints, artifacts")
    p.add_argument("overrides", nargs="*", help="section.key=value, e.g. train.max_steps=20")
    return p.parse_args(argv)


def load_config(config_cls: type[T], path: str, overrides: list[str] = ()) -> T:
    """The recipe's whole config from its YAML and ``section.key=value`` overrides."""
    return build(config_cls, load_yaml(path, overrides), str(path))


def start(config_cls: type[T], doc: str, argv=None) -> Run:
    """Parse the command line, build and check ``config_cls``, prepare ``--out`` (see above)."""
    args = parse_args(doc, argv)
    cfg = load_config(config_cls, args.config, args.overrides)
    out = Path(args.out)
    check_writable(out)
    check_resumable(out, to_dict(cfg))
    info = distributed.init()
    if info.is_main:
        save_config(cfg, out)
    seed_everything(cfg.train.seed)  # before any module is made: the seed decides fresh weights
    return Run(cfg, out, info)


def check_writable(out: Path) -> None:
    """Fail now, not after training, when the run folder cannot be made or written."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; name a folder for the run")
    probe = out
    while not probe.exists():
        probe = probe.parent
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ValueError(f"--out {out}: {probe} is not writable; choose a folder you can write")
    for sub in (out / "checkpoints", out / CONFIG):
        if sub.exists() and not os.access(sub, os.W_OK):
            raise ValueError(f"--out {out}: {sub} is not writable; fix its permissions or use a new --out")


def _flat(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(_flat(v, key + "."))
        else:
            out[key] = v
    return out


def config_differences(old: dict, new: dict) -> list[str]:
    """Keys whose values differ between two resolved configs and would break a resume."""
    a, b = _flat(old), _flat(new)
    diffs = []
    for key in sorted(set(a) | set(b)):
        if a.get(key) == b.get(key) or key in RESUME_FREE_KEYS:
            continue
        if key.split(".")[0] in RESUME_FREE_SECTIONS or key.rsplit(".", 1)[-1] in RESUME_FREE_LEAVES:
            continue
        diffs.append(f"{key}: {a.get(key, '<unset>')!r} -> {b.get(key, '<unset>')!r}")
    return diffs


def check_resumable(out: Path, resolved: dict) -> None:
    """A run folder with a checkpoint continues only under a config that fits it; say which
    keys differ before anything is overwritten. (``train.resume=false`` starts over.)"""
    saved = out / CONFIG
    if not resolved["train"]["resume"] or not saved.is_file() or not (out / "checkpoints").is_dir():
        return
    if not any((out / "checkpoints").glob("step_*")):
        return
    diffs = config_differences(yaml.safe_load(saved.read_text()) or {}, resolved)
    if diffs:
        raise ValueError(f"--out {out} holds a run with another config, which its checkpoint cannot "
                         f"continue: {'; '.join(diffs)}. Use a new --out (or train.resume=false to "
                         f"start this folder over)")


def save_config(cfg, out: Path) -> Path:
    """The resolved config next to the weights (written atomically): what decoding rebuilds from."""
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".{CONFIG}.tmp"
    tmp.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    os.replace(tmp, out / CONFIG)
    return out / CONFIG


def main(fn: Callable[..., int]) -> None:
    """Run a recipe's ``main``: a user error (ValueError) is one line and exit status 2; set
    ``WESTKIT_DEBUG=1`` for the traceback."""
    try:
        code = fn()
    except ValueError as e:
        if os.environ.get(DEBUG_ENV):
            traceback.print_exc()
        print(f"{Path(sys.argv[0]).name}: error: {e}", file=sys.stderr)
        code = 2
    sys.exit(code)


def eval_batches(loader, limit: int, device):
    """The first ``limit`` batches of ``loader`` (0: all of them), on ``device``: the loop every
    training-time evaluation runs (each rank gets the same number of batches)."""
    for i, batch in enumerate(loader):
        if limit and i >= limit:
            return
        yield distributed.to_device(batch, device)


def everyone_done(device) -> Callable[[bool], bool]:
    """For decoding under ZeRO-3, where every forward is collective: True once no rank has
    work left (`westkit.decode.search` keeps finished ranks stepping until then)."""
    return lambda done: not distributed.any_rank(not done, device)
