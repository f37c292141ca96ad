"""The local SLURM cluster (slurm/local/cluster.sh) for the launch tests.

The session fixture `slurm_cluster` starts the controller and two `slurmd -N` nodes (as root;
elsewhere the cluster tests skip) and stops them at the end if it started them.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from slurm_helpers import CLUSTER, ROOT, SLURM_DIR, Cluster


@pytest.fixture(scope="session")
def slurm_env() -> dict[str, str]:
    """Environment for SLURM clients and jobs: the local cluster's SLURM_CONF, this venv first
    on PATH (jobs inherit it through sbatch), offline hub."""
    if os.geteuid() != 0:
        pytest.skip("the local SLURM cluster needs root (slurm/local/cluster.sh)")
    env = dict(os.environ)
    env.update(SLURM_CONF=f"{SLURM_DIR}/slurm.conf", WESTKIT_SLURM_DIR=SLURM_DIR,
               PATH=f"{Path(sys.executable).parent}:{env.get('PATH', '')}",
               HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1",
               WESTKIT_REPO=str(ROOT))
    env.pop("WESTKIT_LAUNCHER", None)
    return env


@pytest.fixture(scope="session")
def slurm_cluster(slurm_env):
    """Start the local 2-node cluster for the session; stop it at the end if we started it."""
    was_up = subprocess.run(["bash", str(CLUSTER), "status"], env=slurm_env,
                            capture_output=True).returncode == 0
    out = subprocess.run(["bash", str(CLUSTER), "start"], env=slurm_env, capture_output=True,
                         text=True, timeout=300)
    if out.returncode != 0:
        if shutil.which("apt-get") is None:
            pytest.skip(f"cannot start the local SLURM cluster: {out.stderr[-500:]}")
        pytest.fail(f"slurm/local/cluster.sh start failed:\n{out.stdout}\n{out.stderr}")
    yield slurm_env
    if not was_up:
        subprocess.run(["bash", str(CLUSTER), "stop"], env=slurm_env, capture_output=True,
                       timeout=120)


@pytest.fixture
def cluster(slurm_cluster):
    """A `Cluster` helper for one test; cancels the jobs that test submitted."""
    c = Cluster(slurm_cluster)
    yield c
    c.cancel_all()
