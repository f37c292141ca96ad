"""Cost of planning one streaming epoch (metadata only): 1 million samples in 4000 shards, 8 ranks x 4 workers.

    python benchmarks/stream_plan_cost.py
"""
import time, types
import numpy as np
from westkit.data.loader import LoaderConfig
from westkit.data import streaming
rng = np.random.default_rng(0)
n, s = 1_000_000, 4000
cat = types.SimpleNamespace(paths=[f"s{i}" for i in range(s)], duration=rng.uniform(0.5, 20, n),
                            has_audio=np.ones(n, bool), bounds=np.linspace(0, n, s + 1).astype(np.int64))
cfg = LoaderConfig(shards=["x"])
t = time.perf_counter(); plan = streaming.stream_plan(cat, cfg, 0, 8, 4, train=True)
print(f"stream_plan 1M samples / 4000 shards / 8 ranks x 4 workers: {time.perf_counter() - t:.2f} s, "
      f"{len(plan[0])} batches per rank")
