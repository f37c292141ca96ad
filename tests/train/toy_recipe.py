"""A recipe-shaped toy training script for the engine (and for launch tests under SLURM).

It builds a tiny model that follows the model contract (frozen "encoder", trainable
"projector" and "head", loss = mean cross-entropy over target tokens) and a synthetic loader
that follows the loader protocol (batch schema of the interfaces, repeats forever, exact
``state_dict``), then hands both to `westkit.train.Trainer`. Runs in seconds on CPU.

Run (any of these; CLI is stable, other tools rely on it):
    python tests/train/toy_recipe.py --out-dir /tmp/toy --steps 20
    torchrun --nproc_per_node 2 tests/train/toy_recipe.py --out-dir /tmp/toy --zero-stage 3
    bash launch/torchrun.sh --nproc 2 tests/train/toy_recipe.py --out-dir /tmp/toy
    sbatch slurm/toy.sh   (srun -> launch/torchrun.sh -> this script, on 2 nodes)

Flags:
    --out-dir DIR        where metrics, checkpoints and trainable.safetensors go (required)
    --steps N            optimiser steps (default 20)
    --save-every N       checkpoint interval in steps (default 0: only at the end)
    --eval-every N       evaluation interval in steps (default 0: only at the end)
    --log-every N        log interval in steps (default 5)
    --zero-stage {2,3}   ds_configs/zero2.json or zero3.json (default 3)
    --grad-accum N       micro-batches per step (default 2)
    --lr X               peak learning rate (default 3e-2)
    --seed N             seed of model init, data and training (default 0)
    --uneven N           finite data: rank r gets N + 3*r batches, then stops (default: endless)
    --step-seconds X     sleep X s in every forward, to give signal tests time (default 0)
    --shards DIR         train on real WebDataset shards through westkit.data.loader (audio +
                         text, any content) instead of the synthetic loader
    --crash-in-save N    fault injection: rank 0 dies (exit 137) while saving step N, after
                         every rank wrote its files but before the checkpoint is published
    --batch-seconds X    with --shards: the loader's max_batch_seconds (default 4.0)
    --loader-mode M      with --shards: the loader's mode, auto/offset/stream (default auto)
    --workers N          with --shards: loader worker processes (default 0)
    --record-keys        append the keys of every training micro-batch to
                         OUT_DIR/keys_rank<R>.jsonl (one line per micro-batch)
Exit status: 0 when done; westkit.train.PREEMPTED_EXIT_CODE (75) after SIGTERM/SIGUSR1.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch
import torch.nn as nn

from westkit.models.losses import token_cross_entropy
from westkit.train import TrainConfig, Trainer, init_distributed, seed_everything
from westkit.train import checkpoint as checkpoint_module
from westkit.train.distributed import all_sum
from westkit.train.metrics import audio_seconds

FRAME = 8          # audio samples per frame ("features" per token)
VOCAB = 12         # target symbols: letters a..l


class ToyModel(nn.Module):
    """Per-frame classification: audio (B, T) -> frames (B, T/FRAME, FRAME) -> symbols."""

    def __init__(self, hidden: int = 32, step_seconds: float = 0.0, record: str | None = None):
        super().__init__()
        self.record = record
        self.encoder = nn.Linear(FRAME, hidden)        # frozen, like a pretrained encoder
        self.projector = nn.Sequential(nn.Linear(hidden, hidden), nn.GELU(),
                                       nn.Dropout(0.1), nn.Linear(hidden, hidden))
        self.head = nn.Linear(hidden, VOCAB)
        self.step_seconds = step_seconds

    @staticmethod
    def labels(texts: list[str], frames: int) -> torch.Tensor:
        """(B, frames) symbol ids (a..l for the synthetic data, any text folded into the
        vocabulary for real shards), -100 past each text's end."""
        out = torch.full((len(texts), frames), -100, dtype=torch.long)
        for i, t in enumerate(texts):
            t = t[:frames]
            out[i, :len(t)] = torch.tensor([(ord(c) - ord("a")) % VOCAB for c in t])
        return out

    @staticmethod
    def symbols(text: str) -> list[int]:
        """The target ids of a text (the data pipeline's tokenize step for real shards)."""
        return [(ord(c) - ord("a")) % VOCAB for c in text]

    def forward(self, batch: dict) -> dict:
        if self.step_seconds:
            time.sleep(self.step_seconds)
        if self.record and self.training:
            with open(self.record, "a") as f:
                f.write(json.dumps(batch["keys"]) + "\n")
        audio = batch["audio"]
        audio = nn.functional.pad(audio, (0, -audio.shape[1] % FRAME))  # whole frames
        # under bf16 DeepSpeed holds the weights in bf16; the batch stays float32
        frames = audio.view(audio.shape[0], -1, FRAME).to(self.encoder.weight.dtype)  # (B, F, FRAME)
        logits = self.head(self.projector(self.encoder(frames)))        # (B, F, V)
        labels = self.labels(batch["texts"], frames.shape[1]).to(audio.device)
        loss, n = token_cross_entropy(logits, labels)
        return {"loss": loss, "num_tokens": n, "audio_seconds": audio_seconds(batch)}


class ToyLoader:
    """Synthetic batches in the interfaces' batch schema; position is the whole state.

    Batch ``i`` of rank ``r`` depends only on (seed, r, i), so restoring ``index`` resumes
    exactly. Each symbol is a fixed random frame pattern plus noise; lengths vary per
    utterance so token-weighted normalisation matters.
    """

    def __init__(self, seed: int, rank: int, batch_size: int = 4, num_batches: int | None = None):
        self.seed, self.rank, self.batch_size, self.num_batches = seed, rank, batch_size, num_batches
        self.codebook = torch.randn(VOCAB, FRAME, generator=torch.Generator().manual_seed(1234))
        self.index = 0

    def make(self, index: int) -> dict:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.rank * 10_007 + index)
        lens = torch.randint(3, 17, (self.batch_size,), generator=g)
        frames = int(lens.max())
        symbols = torch.randint(0, VOCAB, (self.batch_size, frames), generator=g)
        x = self.codebook[symbols] + 0.3 * torch.randn(self.batch_size, frames, FRAME, generator=g)
        for i, n in enumerate(lens):
            x[i, n:] = 0
        texts = ["".join(chr(ord("a") + int(s)) for s in row[:n]) for row, n in zip(symbols, lens)]
        return {"keys": [f"r{self.rank}-b{index}-{i}" for i in range(self.batch_size)],
                "audio": x.reshape(self.batch_size, frames * FRAME),
                "audio_lens": lens * FRAME, "texts": texts, "langs": ["en"] * self.batch_size,
                "num_targets": int(lens.sum())}  # what the loss averages over

    def __iter__(self):
        while self.num_batches is None or self.index < self.num_batches:
            batch = self.make(self.index)
            self.index += 1  # counted when handed out: state_dict() is the consumer's position
            yield batch

    def state_dict(self) -> dict:
        return {"index": self.index}

    def load_state_dict(self, state: dict) -> None:
        self.index = state["index"]


def make_eval_fn(seed: int, rank: int, world_size: int):
    """Token-weighted loss on 4 fixed held-out batches per rank, summed over ranks."""
    held_out = ToyLoader(seed + 99, rank)

    def eval_fn(model: nn.Module, step: int) -> dict:
        device = next(model.parameters()).device
        sums = {"loss_sum": 0.0, "tokens": 0.0}
        for i in range(4):
            batch = held_out.make(i)
            batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
            out = model(batch)
            sums["loss_sum"] += float(out["loss"]) * int(out["num_tokens"])
            sums["tokens"] += int(out["num_tokens"])
        totals = all_sum(sums, device)
        return {"loss": totals["loss_sum"] / totals["tokens"]}

    return eval_fn


def crash_in_save(step: int):
    """Fault injection: make rank 0 die between writing the files and publishing them."""
    original = checkpoint_module.Checkpointer._publish

    def publish(self, partial, tag):
        if tag == checkpoint_module.tag_for(step):
            print(f"toy_recipe: crashing while saving {tag}", flush=True)
            os._exit(137)
        return original(self, partial, tag)

    checkpoint_module.Checkpointer._publish = publish


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out-dir", required=True)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--save-every", type=int, default=0)
    p.add_argument("--eval-every", type=int, default=0)
    p.add_argument("--log-every", type=int, default=5)
    p.add_argument("--zero-stage", type=int, choices=(2, 3), default=3)
    p.add_argument("--grad-accum", type=int, default=2)
    p.add_argument("--lr", type=float, default=3e-2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--uneven", type=int, default=None)
    p.add_argument("--step-seconds", type=float, default=0.0)
    p.add_argument("--shards", default=None)
    p.add_argument("--crash-in-save", type=int, default=None)
    p.add_argument("--batch-seconds", type=float, default=4.0)
    p.add_argument("--loader-mode", default="auto")
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--record-keys", action="store_true")
    args = p.parse_args(argv)

    where = init_distributed()  # rank and world size, needed by the loader
    rank, world = where.rank, where.world_size
    seed_everything(args.seed)  # same initial weights on every rank
    record = os.path.join(args.out_dir, f"keys_rank{rank}.jsonl") if args.record_keys else None
    if record:
        os.makedirs(args.out_dir, exist_ok=True)
    model = ToyModel(step_seconds=args.step_seconds, record=record)
    if args.shards:
        from westkit.data.loader import LoaderConfig, build_loader
        from westkit.data.pipeline import tokenize
        loader = build_loader(LoaderConfig(shards=[args.shards], max_batch_seconds=args.batch_seconds,
                                           num_workers=args.workers, seed=args.seed,
                                           mode=args.loader_mode, shuffle_buffer=16), rank, world,
                              steps=[tokenize("targets", ToyModel.symbols)])
    else:
        loader = ToyLoader(args.seed, rank, num_batches=(
            None if args.uneven is None else args.uneven + 3 * rank))
    cfg = TrainConfig(max_steps=args.steps, grad_accum=args.grad_accum, lr=args.lr,
                      warmup_steps=min(2, args.steps), trainable=["projector.*", "head.*"],
                      ds_config=f"zero{args.zero_stage}", seed=args.seed,
                      log_every=args.log_every, eval_every=args.eval_every,
                      save_every=args.save_every, keep_last=2)
    if args.crash_in_save is not None:
        crash_in_save(args.crash_in_save)
    Trainer(model, loader, cfg, args.out_dir, eval_fn=make_eval_fn(args.seed, rank, world)).fit()
    return 0


if __name__ == "__main__":
    sys.exit(main())
