"""Issue 11: a run's log at default verbosity shows progress and the warnings that matter only."""
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_known_harmless_warnings_are_silenced_and_others_are_not():
    from westkit.noise import silence_known

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        silence_known()
        warnings.warn("`torch.distributed.reduce_scatter_tensor` is deprecated. Please use ...", FutureWarning)
        warnings.warn("`is_gradient_checkpointing` is deprecated and will be removed in v6.", FutureWarning)
        warnings.warn("something else is deprecated", FutureWarning)
        warnings.warn("`torch.distributed.reduce_scatter_tensor` is deprecated", UserWarning)
    assert [str(w.message) for w in seen] == ["something else is deprecated",
                                              "`torch.distributed.reduce_scatter_tensor` is deprecated"]


@pytest.mark.slow
def test_a_zero3_run_prints_no_warning_per_step(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    env.pop("PYTHONWARNINGS", None)  # default verbosity: what a user sees
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(REPO / "tests" / "train" / "toy_recipe.py"), "--out-dir", str(tmp_path / "run"),
                           "--steps", "4", "--zero-stage", "3", "--log-every", "1"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    assert "Warning" not in log, [line for line in log.splitlines() if "Warning" in line][:5]
    assert "train:" in log or "step" in log   # progress is still there
