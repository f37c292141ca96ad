"""The training engine: one DeepSpeed engine behind `Trainer`, used by every recipe.

    from westkit.train import TrainConfig, Trainer, init_distributed
    where = init_distributed()               # rank / world size / device, before the loader
    loader = build_loader(data_cfg, where.rank, where.world_size)
    Trainer(model, loader, TrainConfig(max_steps=1000), "exp/run1").fit()

See docs/training.md for configs, checkpoints, resuming, preemption and exports.
"""
from westkit.train.checkpoint import consolidate, seed_everything
from westkit.train.config import TrainConfig
from westkit.train.distributed import DistInfo, init as init_distributed
from westkit.train.engine import Trainer, freeze
from westkit.train.losses import accumulation_weights
from westkit.train.preempt import PREEMPTED_EXIT_CODE

__all__ = ["TrainConfig", "Trainer", "init_distributed", "DistInfo", "freeze",
           "PREEMPTED_EXIT_CODE", "consolidate", "seed_everything", "accumulation_weights"]
