"""Elastic resume with the toy recipe: a checkpoint written by N processes resumes on M
(2 -> 1 under ZeRO-2 reading local shards by offset, 1 -> 2 under ZeRO-3 streaming them from a
real HTTP server on 127.0.0.1 with 2 loader workers per rank). The weights come back bitwise through
DeepSpeed's universal checkpoint, and within the interrupted epoch no sample is repeated or
skipped: the second run first sees exactly the samples the first had not."""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
RECIPE = str(REPO / "tests/train/toy_recipe.py")
TIMEOUT = 240
N_UTTS = 60


def _run(nproc: int, out: Path, shards, steps: int, mode: str, log: Path, *extra: str) -> str:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", HF_HUB_OFFLINE="1")
    args = [RECIPE, "--out-dir", str(out), "--shards", str(shards), "--steps", str(steps),
            "--batch-seconds", "1.5", "--loader-mode", mode, "--record-keys", *extra]
    cmd = ([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
            str(nproc), "--max_restarts", "0", *args] if nproc > 1 else [sys.executable, *args])
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=REPO,
                                start_new_session=True)
        try:
            rc = proc.wait(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            # kill the launcher's whole process group, not just the launcher (a rank that
            # survives a timeout can make later 2-process runs hang; ranks that torchrun moved
            # to their own group may still survive this)
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise AssertionError(f"{nproc}-process run did not end in {TIMEOUT} s:\n{log.read_text()[-3000:]}")
    text = log.read_text()
    assert rc == 0, text[-3000:]
    return text


def _keys(out: Path) -> dict[int, list[list[str]]]:
    """Micro-batch keys per rank, in training order."""
    return {int(p.stem.split("rank")[1]): [json.loads(l) for l in p.read_text().splitlines()]
            for p in sorted(out.glob("keys_rank*.jsonl"))}


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    sys.path.insert(0, str(REPO / "tests" / "data"))
    from data_helpers import tone_shards

    folder = tone_shards(tmp_path_factory.mktemp("elastic") / "shards",
                         [0.3 + (i * 7 % 13) * 0.05 for i in range(N_UTTS)], shard_bytes=60_000)
    assert len(list(folder.glob("*.tar"))) >= 4
    return folder


@pytest.mark.parametrize("before, after, mode, zero", [(2, 1, "offset", "2"), (1, 2, "stream", "3")])
def test_resume_on_another_world_size_sees_each_sample_of_the_epoch_once(shards, tmp_path, before, after, mode,
                                                                        zero):
    from data_helpers import HttpShards

    server = HttpShards(shards, lifetime=TIMEOUT * 3) if mode == "stream" else None
    try:
        _check(before, after, mode, zero, server.url if server else shards, tmp_path)
        if server:  # the ranks really read over HTTP, each tar once per pass and not per sample
            tars = [p for p, status in server.requests() if p.endswith(".tar") and status == 200]
            assert tars and len(tars) <= 8 * len(list(shards.glob("*.tar"))), len(tars)
    finally:
        if server:
            server.close()


def _check(before, after, mode, zero, shards, tmp_path):
    out = tmp_path / "run"
    workers = ["--workers", "2"] if mode == "stream" else []
    zero = ["--zero-stage", zero, *workers]
    _run(before, out, shards, 3, mode, tmp_path / "log1.txt", "--save-every", "3", *zero)
    saved = load_file(str(out / "trainable.safetensors"))
    state = torch.load(out / "checkpoints/step_00000003/trainer_rank00000.pt", weights_only=False)
    assert state["world_size"] == before and state["loader"]["epoch"] == 0
    assert state["loader"]["position"] == 6  # 3 steps x 2 micro-batches: mid-epoch
    first = _keys(out)
    seen = [k for rank in first.values() for batch in rank for k in batch]
    assert len(seen) == len(set(seen)) and 0 < len(seen) < N_UTTS / 2 + 10
    for p in out.glob("keys_rank*.jsonl"):
        p.unlink()

    # resuming at the saved step trains nothing and exports the weights it loaded
    log = _run(after, out, shards, 3, mode, tmp_path / "log2.txt", *zero)
    assert (f"written by {before} processes, this run has {after}: resumed through DeepSpeed's "
            "universal checkpoint") in log
    loaded = load_file(str(out / "trainable.safetensors"))
    assert saved.keys() == loaded.keys() and all(torch.equal(saved[k], loaded[k]) for k in saved)

    log = _run(after, out, shards, 23, mode, tmp_path / "log3.txt", *zero)
    assert "resumed from" in log and "at step 3" in log
    second = _keys(out)
    assert sorted(second) == list(range(after))
    rest = set(f"u{i:04d}" for i in range(N_UTTS)) - set(seen)
    # the rest of epoch 0 is the first l micro-batches of every rank, for the same l
    for l in range(1, min(len(r) for r in second.values()) + 1):
        got = [k for rank in second.values() for batch in rank[:l] for k in batch]
        if rest <= set(got):
            break
    else:
        raise AssertionError(f"the second run never saw {sorted(rest - set(got))}")
    assert not set(got) & set(seen), "samples of the first run seen again in the same epoch"
    assert sorted(got) == sorted(rest), "a sample repeated within the epoch"
