"""Real jobs on the local 2-node SLURM cluster: sbatch scripts, preemption and requeue, failures,
the WeST and WhisTLE recipes, and the submitit launcher hitting a time limit.

Every job runs 2 nodes x 1 CPU rank (gloo) through srun -> launch/torchrun.sh -> DeepSpeed.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from slurm_helpers import ROOT, log_text, tail

pytestmark = pytest.mark.cluster

TOY = ROOT / "slurm" / "toy.sh"
LOCAL_OPTS = ("--gpus-per-node=0", "--cpus-per-task=1", "--time=10")


def resumed_steps(log: str) -> list[int]:
    return [int(s) for s in re.findall(r"resumed from \S+ at step (\d+)", log)]


def last_train_step(out_dir: Path) -> int:
    records = [json.loads(l) for l in (out_dir / "metrics.jsonl").read_text().splitlines()]
    return max(r["step"] for r in records if r["kind"] == "train")


def wait_for_log(path: Path, pattern: str, timeout: float, after: str | None = None) -> str:
    """Wait until ``pattern`` shows up in the log (after the last line matching ``after``)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        text = log_text(path)
        starts = [m.end() for m in re.finditer(after, text)] if after else [0]
        if starts and re.search(pattern, text[starts[-1]:]):
            return text
        time.sleep(0.5)
    raise TimeoutError(f"{pattern!r} not in {path} after {timeout:.0f} s:\n"
                       f"{tail(log_text(path))}")


def test_srun_spans_two_nodes(cluster):
    out = cluster.run("srun", "--nodes=2", "--ntasks-per-node=1", "bash", "-c",
                      "echo $SLURMD_NODENAME $SLURM_NODEID $SLURM_NNODES")
    assert out.returncode == 0, out.stderr
    assert sorted(out.stdout.split("\n")[:2]) == ["n1 0 2", "n2 1 2"]


@pytest.mark.slow
def test_toy_preempted_twice_resumes_and_completes(cluster, tmp_path):
    """The warning signal (what --signal=B:USR1@120 sends) makes the script checkpoint and
    requeue itself; `scontrol requeue` (SIGTERM from SLURM) does too; each start resumes."""
    out_dir = tmp_path / "toy"
    job = cluster.sbatch(TOY, "--steps", "40", "--step-seconds", "0.2", "--save-every", "5",
                         cwd=tmp_path, env={"OUT_DIR": str(out_dir)}, options=LOCAL_OPTS)
    log = tmp_path / f"slurm-westkit-toy-{job}.out"

    wait_for_log(log, r"saved checkpoint \S+step_00000005", timeout=180)
    assert cluster.run("scancel", "--batch", "--signal=USR1", job).returncode == 0
    # trains on after resuming before SLURM requeues it
    wait_for_log(log, r"saved checkpoint", timeout=180, after=r"resumed from \S+ at step \d+")
    assert cluster.run("scontrol", "requeue", job).returncode == 0
    info = cluster.wait(job, timeout=300)

    text = log_text(log)
    assert info["JobState"] == "COMPLETED", tail(text)
    assert info["Restarts"] == "2", tail(text)
    assert "requeueing job" in text and "caught SIGTERM" in text, tail(text)
    assert "world size 2 on cpu" in text
    steps = resumed_steps(text)
    assert len(steps) == 2 and 0 < steps[0] < steps[1] < 40, (steps, tail(text))
    assert (out_dir / "checkpoints" / "step_00000040").is_dir()
    assert (out_dir / "trainable.safetensors").is_file()
    assert last_train_step(out_dir) == 40


@pytest.mark.slow
def test_failing_job_reports_failure(cluster, tmp_path):
    job = cluster.sbatch(TOY, "--zero-stage", "5", cwd=tmp_path,
                         env={"OUT_DIR": str(tmp_path / "toy")}, options=LOCAL_OPTS)
    info = cluster.wait(job, timeout=180)
    text = log_text(tmp_path / f"slurm-westkit-toy-{job}.out")
    assert info["JobState"] == "FAILED", tail(text)
    assert info["ExitCode"] != "0:0" and info["Restarts"] == "0"
    assert "invalid choice: 5" in text, tail(text)                 # the cause, from the recipe
    assert "ERROR: training failed on job" in text, tail(text)    # the script's verdict


@pytest.mark.slow
def test_west_sbatch_two_nodes(cluster, tmp_path):
    out_dir = tmp_path / "west"
    job = cluster.sbatch(ROOT / "slurm" / "west.sh", "train.max_steps=2", "train.warmup_steps=1",
                         "train.log_every=1", "eval_data=null", "data.max_batch_size=2",
                         "data.num_workers=0", cwd=tmp_path,
                         env={"CONFIG": "recipes/west/conf/tiny.yaml", "OUT_DIR": str(out_dir)},
                         options=LOCAL_OPTS)
    info = cluster.wait(job, timeout=420)
    text = log_text(tmp_path / f"slurm-westkit-west-{job}.out")
    assert info["JobState"] == "COMPLETED", tail(text)
    assert "world size 2 on cpu" in text
    assert (out_dir / "checkpoints" / "step_00000002").is_dir()
    assert (out_dir / "trainable.safetensors").is_file()


@pytest.mark.slow
def test_tle_sbatch_two_nodes_both_stages(cluster, tmp_path):
    out_dir = tmp_path / "whistle"
    env = {"OUT_DIR": str(out_dir),
           "STAGE1_ARGS": "eval_data=null data.max_batch_size=2 data.num_workers=0 "
                          "stage1.decode_eval=false",
           "STAGE2_ARGS": "text.data.max_batch_size=2 data.max_batch_size=2 data.num_workers=0"}
    job = cluster.sbatch(ROOT / "slurm" / "tle.sh", "train.max_steps=1", "train.warmup_steps=0",
                         "train.log_every=1", cwd=tmp_path, env=env,
                         options=LOCAL_OPTS + ("--nodes=2",))
    info = cluster.wait(job, timeout=420)
    text = log_text(tmp_path / f"slurm-westkit-tle-{job}.out")
    assert info["JobState"] == "COMPLETED", tail(text)
    assert text.count("world size 2 on cpu") == 2, tail(text)     # both stages on 2 nodes
    assert (out_dir / "tle" / "checkpoints" / "step_00000001").is_dir()
    assert (out_dir / "tle" / "tle.safetensors").is_file()
    assert (out_dir / "adapt" / "checkpoints" / "step_00000001").is_dir()
    assert (out_dir / "adapt" / "hf" / "config.json").is_file()


@pytest.mark.slow
def test_recognize_sbatch_two_nodes_equals_one_process(cluster, tmp_path):
    """slurm/recognize.sh decodes a test set on 2 nodes; the report equals one process's."""
    from westkit.data import corpora
    from westkit.decode import recognize

    shards = str(corpora.make("asterisk-test", limit=6, progress=False))
    args = ["--whisper", "tiny=whisper-tiny.en", "--shards", shards, "--batch-size", "2", "--num-workers", "0"]
    assert recognize.main(args + ["--out", str(tmp_path / "one")]) == 0
    job = cluster.sbatch(ROOT / "slurm" / "recognize.sh", *args, "--out", str(tmp_path / "two"), cwd=tmp_path,
                         options=LOCAL_OPTS)
    info = cluster.wait(job, timeout=420)
    text = log_text(tmp_path / f"slurm-westkit-recognize-{job}.out")
    assert info["JobState"] == "COMPLETED", tail(text)
    assert "on 2 node(s)" in text, tail(text)
    one, two = ((tmp_path / d / "hyps.jsonl").read_text().splitlines() for d in ("one", "two"))
    assert len(one) == 6 and [json.loads(r)["hyp"] for r in two] == [json.loads(r)["hyp"] for r in one]
    report = [json.loads((tmp_path / d / "wer.json").read_text()) for d in ("one", "two")]
    for r in report:  # what may differ: timings, and the options (the --out folder)
        for k in ("decode_seconds", "rtf", "options"):
            r.pop(k)
    assert report[0] == report[1] and report[0]["all"]["ref_words"] == 30, report


def submit(cluster, tmp_path, *args: str) -> tuple[subprocess.CompletedProcess, str]:
    out = cluster.run(sys.executable, str(ROOT / "launch" / "submit.py"),
                      "--folder", str(tmp_path / "submitit" / "%j"), *args, cwd=tmp_path,
                      timeout=600)
    match = re.search(r"job_id=(\S+)", out.stdout)
    if match:
        cluster.submitted.append(match.group(1))
    return out, match.group(1) if match else ""


@pytest.mark.slow
def test_submitit_time_limit_checkpoints_requeues_and_completes(cluster, tmp_path):
    """A 1-minute job: SLURM's USR1 (30 s before the limit) reaches the training, which saves;
    the Checkpointable task requeues the job, and the next start resumes and finishes."""
    out_dir = tmp_path / "toy"
    # SLURM checks limits every 30 s and sends the warning up to one check early: asking for
    # 5 s makes it arrive 25-55 s into the minute, after start-up, and the limit itself ends
    # the run at 60-90 s. ~65 s of training cannot finish in the first start.
    out, job = submit(cluster, tmp_path, "--nodes", "2", "--time", "1", "--signal-delay", "5",
                      str(ROOT / "tests" / "train" / "toy_recipe.py"), "--out-dir", str(out_dir),
                      "--steps", "140", "--step-seconds", "0.2", "--save-every", "20")
    assert out.returncode == 0 and job, out.stdout + out.stderr
    assert re.search(r"stdout=\S+_0_log.out", out.stdout)

    # once requeued, give the second start room to finish (a second timeout is not the point)
    cluster.wait(job, timeout=240, until=lambda i: i.get("Restarts", "0") != "0"
                 or i.get("JobState") in ("COMPLETED", "FAILED"))
    cluster.run("scontrol", "update", f"JobId={job}", "TimeLimit=10")
    info = cluster.wait(job, timeout=300)

    stdout = log_text(tmp_path / "submitit" / job / f"{job}_0_log.out")
    stderr = log_text(tmp_path / "submitit" / job / f"{job}_0_log.err")
    both = stdout + stderr
    assert info["JobState"] == "COMPLETED", tail(both)
    assert info["Restarts"] == "1", tail(both)
    assert "Caught signal SIGUSR1" in both, tail(both)     # submitit's task got the warning
    # the training saved on it (or, had it come during start-up, on the limit's SIGTERM)
    assert re.search(r"SIG(USR1|TERM) received: checkpointing step \d+", both), tail(both)
    assert "requeueing" in both and "Requeued job" in both, tail(both)
    steps = resumed_steps(both)
    assert len(steps) == 1 and 0 < steps[0] < 140, (steps, tail(both))
    assert last_train_step(out_dir) == 140
    import cloudpickle
    with open(tmp_path / "submitit" / job / f"{job}_0_result.pkl", "rb") as f:
        status, result = cloudpickle.load(f)
    assert status == "success" and result["exit_code"] == 0


@pytest.mark.slow
def test_submitit_failure_is_reported(cluster, tmp_path):
    out, job = submit(cluster, tmp_path, "--nodes", "2", "--time", "5", "--wait",
                      str(ROOT / "tests" / "train" / "toy_recipe.py"),
                      "--out-dir", str(tmp_path / "toy"), "--zero-stage", "5")
    assert out.returncode == 1, out.stdout + out.stderr
    assert re.search(f"job {job}: FAILED: RuntimeError: .*toy_recipe.py failed with exit status "
                     r"[1-9]", out.stdout), out.stdout
    assert "invalid choice: 5" in log_text(tmp_path / "submitit" / job / f"{job}_0_log.err")


@pytest.mark.slow
def test_submitit_sweep_is_one_array_with_a_folder_per_point(cluster, tmp_path):
    out, _ = submit(cluster, tmp_path, "--time", "5", "--wait", "--sweep=--lr=0.01,0.03",
                    str(ROOT / "tests" / "train" / "toy_recipe.py"),
                    "--out-dir", str(tmp_path / "toy_{sweep}"), "--steps", "3", "--log-every", "1")
    assert out.returncode == 0, out.stdout + out.stderr
    jobs = re.findall(r"job_id=(\S+)", out.stdout)
    assert len(jobs) == 2 and jobs[0].endswith("_0") and jobs[1] == jobs[0][:-1] + "1"
    cluster.submitted += jobs
    lrs = []
    for name in ("lr-0.01", "lr-0.03"):
        records = [json.loads(l) for l in (tmp_path / f"toy_{name}" / "metrics.jsonl")
                   .read_text().splitlines()]
        lrs.append(next(r["lr"] for r in records if r["kind"] == "train" and r["step"] == 2))
    assert lrs[1] == pytest.approx(3 * lrs[0])   # each array task got its own override
