"""Writing shards as a job array on the local 2-node SLURM cluster (slurm/shards.sh): 4 slices,
one of them cancelled, so the merge job never runs; the same command again submits only that
slice, then the merge, and the merged set equals what one process writes."""
from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path

import pytest

from slurm_helpers import ROOT, log_text, tail

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

SCRIPT = ROOT / "slurm" / "shards.sh"
sys.path.insert(0, str(ROOT / "tests" / "data"))


def _inputs(folder: Path) -> Path:
    from data_helpers import write_wav

    lines = []
    for i in range(13):
        write_wav(folder / "audio" / f"a{i}.wav", 0.3 + 0.05 * i)
        lines.append({"wav": f"audio/a{i}.wav", "txt": f"utterance {i}"})
    lines.insert(4, {"wav": "audio/missing.wav", "txt": "gone"})
    lines.append({"wav": "audio/a2.wav", "txt": "a duplicate in the last slice", "key": "audio/a2"})
    path = folder / "train.jsonl"
    path.write_text("".join(json.dumps(l) + "\n" for l in lines))
    return path


def _submit(cluster, cwd: Path, manifest: Path, out: Path) -> tuple[str | None, str, str]:
    env = {**cluster.env, "SLICES": "4", "CPUS_PER_TASK": "1", "SBATCH_OPTS": "--time=10"}
    proc = cluster.run("bash", str(SCRIPT), str(manifest), "-o", str(out), "--shard-size", "60K",
                       cwd=cwd, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    array = re.search(r"array job (\d+)", proc.stdout)
    merge = re.search(r"merge job (\d+)", proc.stdout).group(1)
    cluster.submitted += [j for j in (array and array.group(1), merge) if j]
    return (array.group(1) if array else None), merge, proc.stdout


def _wait_gone(cluster, job: str, timeout: float) -> None:
    """Until no task of ``job`` is pending or running."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        out = cluster.run("squeue", "-h", "-j", job)
        if out.returncode == 0 and not out.stdout.strip():
            return
        time.sleep(1)
    raise TimeoutError(f"job {job} still queued after {timeout:.0f} s")


def test_array_with_a_cancelled_slice_then_rerun_of_that_slice_only(cluster, tmp_path):
    from westkit.data.prepare import slice_status
    from westkit.data.shards import REJECTS, read_index
    from westkit.data.shards_cli import main

    manifest = _inputs(tmp_path)
    out = tmp_path / "shards"
    array, merge, text = _submit(cluster, tmp_path, manifest, out)
    assert "slices 0,1,2,3 of 4" in text
    assert cluster.run("scancel", f"{array}_3").returncode == 0  # pending: 2 nodes x 1 CPU
    info = cluster.wait(merge, timeout=180)
    assert info["JobState"] == "CANCELLED", info  # its dependency can no longer be met
    _wait_gone(cluster, array, timeout=180)
    assert slice_status(out) == (4, [3]), [log_text(p)[-800:] for p in tmp_path.glob("slurm-*.out")]
    assert not (out / "index.json").exists()

    array2, merge2, text = _submit(cluster, tmp_path, manifest, out)
    assert "slices 3 of 4" in text
    info = cluster.wait(merge2, timeout=180)
    merge_log = log_text(tmp_path / f"slurm-westkit-shards-merge-{merge2}.out")
    assert info["JobState"] == "COMPLETED", tail(merge_log)
    assert "merged 4 slices" in merge_log
    task_logs = sorted(p.name for p in tmp_path.glob("slurm-westkit-shards-*_*.out"))
    assert task_logs == sorted([f"slurm-westkit-shards-{array}_{i}.out" for i in range(3)]
                               + [f"slurm-westkit-shards-{array2}_3.out"]), task_logs

    assert main([str(manifest), "-o", str(tmp_path / "single"), "--workers", "1", "--no-progress"]) == 0
    rows = lambda f: [r[:3] for s in read_index(f)["shards"] for r in s["samples"]]
    assert rows(out) == rows(tmp_path / "single") and len(rows(out)) == 13
    rejects = lambda f: [(r["key"], r["reason"]) for r in map(json.loads, (f / REJECTS).read_text().splitlines())]
    assert rejects(out) == rejects(tmp_path / "single") == [("audio_missing", "missing_file"),
                                                            ("audio_a2", "duplicate_key")]
    env = {**cluster.env, "SLICES": "4"}
    done = cluster.run("bash", str(SCRIPT), str(manifest), "-o", str(out), cwd=tmp_path, env=env)
    assert done.returncode == 0 and "nothing to do" in done.stdout  # and nothing submitted
