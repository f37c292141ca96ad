"""Helpers for the tests on the local SLURM cluster: submit, watch and read the logs of jobs."""
from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "slurm" / "local" / "cluster.sh"
SLURM_DIR = os.environ.get("WESTKIT_SLURM_DIR", "/tmp/westkit-slurm")
FINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY",
         "BOOT_FAIL", "DEADLINE", "PREEMPTED"}


class Cluster:
    """Submit and watch jobs on the local cluster; every job submitted here is cancelled at the
    end of the test that submitted it."""

    def __init__(self, env: dict[str, str]):
        self.env = env
        self.submitted: list[str] = []

    def run(self, *cmd: str, **kw) -> subprocess.CompletedProcess:
        return subprocess.run(cmd, env=kw.pop("env", self.env), capture_output=True, text=True,
                              timeout=kw.pop("timeout", 60), **kw)

    def sbatch(self, script: str | Path, *args: str, cwd: Path, env: dict | None = None,
               options: tuple[str, ...] = ()) -> str:
        out = self.run("sbatch", "--parsable", *options, str(script), *args, cwd=cwd,
                       env={**self.env, **(env or {})})
        assert out.returncode == 0, f"sbatch failed: {out.stderr}"
        job = out.stdout.strip().split(";")[0]
        self.submitted.append(job)
        return job

    def info(self, job: str) -> dict[str, str]:
        """``scontrol show job`` as a dict (JobState, Restarts, ExitCode, StdOut, ...)."""
        out = self.run("scontrol", "show", "job", "-o", job)
        if out.returncode != 0:
            return {}
        return dict(re.findall(r"(\w+)=(\S*)", out.stdout))

    def wait(self, job: str, timeout: float, until=None) -> dict[str, str]:
        """Poll until the job reaches a final state (or ``until(info)`` is true); return its info."""
        deadline = time.time() + timeout
        info = {}
        while time.time() < deadline:
            info = self.info(job)
            if until(info) if until else info.get("JobState") in FINAL:
                return info
            time.sleep(1)
        raise TimeoutError(f"job {job} still {info.get('JobState')} after {timeout:.0f} s")

    def cancel_all(self) -> None:
        for job in self.submitted:
            self.run("scancel", job)
        self.submitted.clear()


def log_text(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else f"(no log at {path})"


def tail(text: str, n: int = 60) -> str:
    """The last ``n`` lines without the deprecation noise, for assertion messages."""
    lines = [l for l in text.splitlines() if "Warning" not in l and "return func" not in l
             and "IPv6" not in l]
    return "\n".join(lines[-n:])


