"""End-to-end engine tests: the toy recipe on 2 CPU processes (torchrun, gloo, ZeRO-3).

One uninterrupted reference run is compared with runs that are killed (kill -9 at a random
step, a crash while saving, SIGTERM, Ctrl-C) and resumed: their final trainable weights must be
bitwise equal to the reference, which shows that weights, optimiser, schedule, data position
and RNG all come back. Each 2-process start costs ~10 s on a 2-core machine.
"""
import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from westkit.train import PREEMPTED_EXIT_CODE, consolidate
from westkit.train.logger import read_metrics

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
RECIPE = str(REPO / "tests/train/toy_recipe.py")
COMMON = ["--steps", "30", "--save-every", "5", "--grad-accum", "2", "--seed", "3"]
TIMEOUT = 240


def env():
    e = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", HF_HUB_OFFLINE="1")
    e["PATH"] = f"{Path(sys.executable).parent}:{e['PATH']}"   # torchrun.sh calls `python`
    e.pop("WESTKIT_EXIT_FILE", None)
    return e


def torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
            "2", "--max_restarts", "0", RECIPE, *args]


def run(cmd: list[str], log: Path) -> int:
    proc = start(cmd, log)
    try:
        return proc.wait(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        kill_tree(proc.pid)                                      # a hang must not outlive the test
        raise AssertionError(f"{cmd} hung; log: {log}") from None


def start(cmd: list[str], log: Path, **popen) -> subprocess.Popen:
    return subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env(),
                            cwd=REPO, **popen)


def kill_tree(pid: int, sig=signal.SIGKILL):
    """Signal ``pid`` and all its descendants (torchrun starts workers in their own sessions,
    so a process-group kill would miss them)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo.extend(children.get(p, []))
    for p in tree:
        try:
            os.kill(p, sig)
        except ProcessLookupError:
            pass


def wait_for(predicate, proc: subprocess.Popen, what: str, timeout: float = TIMEOUT):
    deadline = time.time() + timeout
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"run ended (rc {proc.returncode}) before {what}")
        if time.time() > deadline:
            kill_tree(proc.pid)
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def latest(out: Path) -> str | None:
    pointer = out / "checkpoints" / "latest"
    return pointer.read_text().strip() if pointer.exists() else None


def weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / "trainable.safetensors"))


def assert_bitwise_equal(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k}: max diff {(a[k] - b[k]).abs().max().item()}"


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("reference")
    rc = run(torchrun("--out-dir", str(out), *COMMON, "--eval-every", "10"), out / "log.txt")
    assert rc == 0, (out / "log.txt").read_text()[-3000:]
    return out


def test_loss_falls_and_outputs_are_written(reference):
    rows = read_metrics(reference / "metrics.jsonl")
    train = [r for r in rows if r["kind"] == "train"]
    evals = [r for r in rows if r["kind"] == "eval"]
    assert [r["step"] for r in train] == [5, 10, 15, 20, 25, 30]
    assert [r["step"] for r in evals] == [10, 20, 30]
    assert train[-1]["loss"] < 0.3 * train[0]["loss"]           # chance level is ln(12) = 2.5
    assert evals[-1]["loss"] < evals[0]["loss"] < 2.0
    assert train[-1]["lr"] < train[1]["lr"]                      # cosine decays
    assert train[0]["num_tokens"] > 0 and train[0]["tokens_per_s"] > 0
    assert (reference / "curves.png").stat().st_size > 5000
    assert list((reference / "tensorboard").glob("events.out.tfevents.*"))
    ckpts = reference / "checkpoints"
    assert latest(reference) == "step_00000030"
    assert sorted(p.name for p in ckpts.glob("step_*")) == ["step_00000025", "step_00000030"]
    for rank in (0, 1):
        assert (ckpts / "step_00000030" / f"trainer_rank{rank:05d}.pt").is_file()


def test_trainable_export_matches_offline_zero3_consolidation(reference, tmp_path):
    exported = weights(reference)
    assert sorted(exported) == ["head.bias", "head.weight", "projector.0.bias",
                                "projector.0.weight", "projector.3.bias", "projector.3.weight"]
    merged = load_file(str(consolidate(reference / "checkpoints", tmp_path / "merged.safetensors")))
    assert_bitwise_equal(exported, merged)


def test_kill_9_at_a_random_step_then_resume_equals_uninterrupted(reference, tmp_path):
    out = tmp_path / "killed"
    proc = start(torchrun("--out-dir", str(out), *COMMON, "--step-seconds", "0.05"),
                 tmp_path / "log1.txt")
    wait_for(lambda: (latest(out) or "") >= "step_00000010", proc, "the step-10 checkpoint")
    time.sleep(random.uniform(0.0, 1.5))                         # somewhere in steps 10..25
    kill_tree(proc.pid)                                          # like losing the node
    proc.wait()
    time.sleep(0.5)                                              # let the workers' deaths land
    killed_at = latest(out)
    assert killed_at is not None and killed_at != "step_00000030"
    assert not (out / "trainable.safetensors").exists()
    rc = run(torchrun("--out-dir", str(out), *COMMON), tmp_path / "log2.txt")
    log = (tmp_path / "log2.txt").read_text()
    assert rc == 0, log[-3000:]
    assert f"resumed from {out / 'checkpoints' / killed_at}" in log
    assert_bitwise_equal(weights(out), weights(reference))


def test_crash_while_saving_resumes_from_previous_complete_checkpoint(reference, tmp_path):
    out = tmp_path / "crashed"
    rc = run(torchrun("--out-dir", str(out), *COMMON, "--crash-in-save", "15"),
             tmp_path / "log1.txt")
    assert rc != 0
    ckpts = out / "checkpoints"
    assert latest(out) == "step_00000010"
    assert (ckpts / "step_00000015.partial").is_dir()            # the half-published save
    assert not (ckpts / "step_00000015").exists()
    rc = run(torchrun("--out-dir", str(out), *COMMON), tmp_path / "log2.txt")
    log = (tmp_path / "log2.txt").read_text()
    assert rc == 0, log[-3000:]
    assert "resumed from" in log and "step_00000010 at step 10" in log
    assert not list(ckpts.glob("*.partial"))
    assert_bitwise_equal(weights(out), weights(reference))


def test_sigterm_via_launcher_checkpoints_and_exits_with_preempted_code(reference, tmp_path):
    out = tmp_path / "preempted"
    cmd = ["bash", str(REPO / "launch/torchrun.sh"), "--nproc", "2", RECIPE, "--out-dir",
           str(out), *COMMON, "--step-seconds", "0.05"]
    proc = start(cmd, tmp_path / "log1.txt")
    wait_for(lambda: (latest(out) or "") >= "step_00000005", proc, "the step-5 checkpoint")
    proc.send_signal(signal.SIGTERM)                             # to the launcher script only
    assert proc.wait(timeout=TIMEOUT) == PREEMPTED_EXIT_CODE == 75
    log = (tmp_path / "log1.txt").read_text()
    assert "SIGTERM received: checkpointing step" in log
    step = int(log.split("SIGTERM received: checkpointing step ")[1].split()[0])
    assert 5 <= step < 30 and latest(out) == f"step_{step:08d}"
    # the requeued job continues from there to the same result
    rc = run(cmd[:-2], tmp_path / "log2.txt")
    assert rc == 0, (tmp_path / "log2.txt").read_text()[-3000:]
    assert_bitwise_equal(weights(out), weights(reference))


def test_ctrl_c_in_a_terminal_running_the_launcher_acts_like_sigterm(reference, tmp_path):
    """A terminal's Ctrl-C goes to its whole foreground process group (the launcher's session
    here): checkpoint, exit 75, no KeyboardInterrupt, and the rerun ends like the reference."""
    out = tmp_path / "interrupted"
    cmd = ["bash", str(REPO / "launch/torchrun.sh"), "--nproc", "2", RECIPE, "--out-dir",
           str(out), *COMMON, "--step-seconds", "0.2"]
    proc = start(cmd, tmp_path / "log1.txt", start_new_session=True)
    wait_for(lambda: (latest(out) or "") >= "step_00000005", proc, "the step-5 checkpoint")
    os.killpg(proc.pid, signal.SIGINT)                           # what Ctrl-C does
    assert proc.wait(timeout=TIMEOUT) == PREEMPTED_EXIT_CODE
    log = (tmp_path / "log1.txt").read_text()
    assert "Ctrl-C: the workers checkpoint" in log and "KeyboardInterrupt" not in log
    step = int(log.split("received: checkpointing step ")[1].split()[0])
    assert 5 <= step < 30 and latest(out) == f"step_{step:08d}"
    rc = run(cmd[:-2], tmp_path / "log2.txt")
    assert rc == 0, (tmp_path / "log2.txt").read_text()[-3000:]
    assert_bitwise_equal(weights(out), weights(reference))


def test_ctrl_c_in_plain_python_checkpoints_without_a_traceback_and_twice_aborts(tmp_path):
    single = [sys.executable, RECIPE, "--zero-stage", "2", "--steps", "20"]
    first_press = "westkit: Ctrl-C: checkpointing at the end of this step"
    for presses in (1, 2):
        out, log = tmp_path / f"pressed{presses}", tmp_path / f"log{presses}.txt"
        # 2 s steps when pressing twice: the second press lands before the step ends
        proc = start([*single, "--out-dir", str(out), "--step-seconds", str(0.1 * presses ** 4)], log)
        wait_for(lambda: "starting at step 0" in log.read_text(), proc, "start")
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        if presses == 2:                                         # once the first was handled
            wait_for(lambda: first_press in log.read_text(), proc, "the first Ctrl-C's message")
            proc.send_signal(signal.SIGINT)
        rc = proc.wait(timeout=TIMEOUT)
        text = log.read_text()
        assert first_press in text
        assert "Traceback" not in text, text[-3000:]
        if presses == 1:
            assert rc == PREEMPTED_EXIT_CODE, text[-3000:]
            step = int(text.split("SIGINT received: checkpointing step ")[1].split()[0])
            assert latest(out) == f"step_{step:08d}"
        else:
            assert rc == -signal.SIGINT                          # aborted at once


def test_rerun_after_a_kill_keeps_only_the_metrics_of_the_continued_run(tmp_path):
    """Killed after its step-10 checkpoint while logging steps past it: the resumed run's
    metrics.jsonl has each step once, from the run that the checkpoints continue."""
    out = tmp_path / "killed"
    args = ["--zero-stage", "2", "--steps", "20", "--save-every", "10", "--log-every", "1"]
    proc = start([sys.executable, RECIPE, *args, "--out-dir", str(out), "--step-seconds", "0.1"],
                 tmp_path / "log1.txt")
    wait_for(lambda: latest(out) == "step_00000010" and any(
        '"step": 13' in line for line in (out / "metrics.jsonl").read_text().splitlines()),
        proc, "records after the step-10 checkpoint")
    kill_tree(proc.pid)
    proc.wait()
    assert run([sys.executable, RECIPE, *args, "--out-dir", str(out)], tmp_path / "log2.txt") == 0
    assert "dropped" in (tmp_path / "log2.txt").read_text()
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r["step"] for r in lines if r["kind"] == "train"]
    assert train == list(range(1, 21))


def test_uneven_data_on_two_ranks_stops_together_without_hanging(tmp_path):
    out = tmp_path / "uneven"
    # rank 0 has 5 micro-batches (2 full steps), rank 1 has 8 (4 steps)
    rc = run(torchrun("--out-dir", str(out), "--steps", "30", "--uneven", "5"),
             tmp_path / "log.txt")
    log = (tmp_path / "log.txt").read_text()
    assert rc == 0, log[-3000:]
    assert "train data ran out at step 2" in log
    assert latest(out) == "step_00000002" and (out / "trainable.safetensors").is_file()


def test_plain_python_world_of_one_with_zero2_sigterm_and_resume(tmp_path):
    """No torchrun at all: SIGTERM gives the code directly, and a ZeRO-2 checkpoint resumes
    to the same weights as an uninterrupted run."""
    single = [sys.executable, RECIPE, "--zero-stage", "2", "--steps", "20", "--seed", "5"]
    out = tmp_path / "single"
    proc = start([*single, "--out-dir", str(out), "--step-seconds", "0.1"], tmp_path / "log1.txt")
    wait_for(lambda: "starting at step 0" in (tmp_path / "log1.txt").read_text(), proc, "start")
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=TIMEOUT) == PREEMPTED_EXIT_CODE
    assert latest(out) is not None and latest(out) != "step_00000020"
    assert (out / "checkpoints" / latest(out) / "trainer_rank00000.pt").is_file()
    assert run([*single, "--out-dir", str(out)], tmp_path / "log2.txt") == 0
    reference = tmp_path / "reference"
    assert run([*single, "--out-dir", str(reference)], tmp_path / "log3.txt") == 0
    assert_bitwise_equal(weights(out), weights(reference))


class _Tone:
    """Synthetic utterance audio for the shard writer: ``load() -> (T,) float32 at 16 kHz``."""

    def __init__(self, seconds: float, freq: float):
        self.seconds, self.freq = seconds, freq

    def load(self):
        import numpy as np
        t = np.arange(int(self.seconds * 16000)) / 16000
        return (0.3 * np.sin(2 * np.pi * self.freq * t)).astype(np.float32)


def test_real_loader_with_uneven_shards_on_two_ranks(tmp_path):
    """The engine with `westkit.data.loader` over 11 utterances in shards of unequal sizes:
    both ranks run every step through several epochs, and the data position is saved."""
    from westkit.data.shards import Entry, write_shards

    words = "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo".split()
    entries = [Entry(key=f"utt{i:02d}", text=" ".join(words[:i + 1]),
                     audio=_Tone(0.3 + 0.1 * i, 200 + 40 * i)) for i in range(11)]
    shards = tmp_path / "shards"
    write_shards(entries, shards, shard_bytes=30_000, workers=1, progress=False)
    assert len(list(shards.glob("*.tar"))) >= 3
    out = tmp_path / "run"
    rc = run(torchrun("--out-dir", str(out), "--shards", str(shards), "--steps", "8",
                      "--save-every", "4", "--log-every", "2"), tmp_path / "log.txt")
    assert rc == 0, (tmp_path / "log.txt").read_text()[-3000:]
    train = [r for r in read_metrics(out / "metrics.jsonl") if r["kind"] == "train"]
    assert [r["step"] for r in train] == [2, 4, 6, 8]
    assert all(r["audio_seconds"] > 0 and math.isfinite(r["loss"]) for r in train)
    state = torch.load(out / "checkpoints/step_00000008/trainer_rank00001.pt", weights_only=False)
    assert state["step"] == 8 and state["loader"]["epoch"] >= 1   # repeated the data
