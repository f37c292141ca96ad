"""launch/submit.py without a cluster: sweeps, user errors, the SLURM parameters it asks for, the
preemption hand-off of its Checkpointable task, and a whole run on submitit's local executor."""
from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import threading

import pytest

from slurm_helpers import ROOT

SUBMIT = ROOT / "launch" / "submit.py"


@pytest.fixture(scope="module")
def submit():
    spec = importlib.util.spec_from_file_location("westkit_launch_submit", SUBMIT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def test_sweep_points_are_all_combinations(submit):
    points = submit.sweep_points(["train.lr=1e-4,3e-4", "--seed=1,2,3"])
    assert len(points) == 6
    assert points[0] == [("train.lr", "1e-4"), ("--seed", "1")]
    assert points[-1] == [("train.lr", "3e-4"), ("--seed", "3")]
    assert submit.sweep_points([]) == [[]]
    assert submit.sweep_name([("train.lr", "1e-4"), ("--seed", "2")]) == "train.lr-1e-4_seed-2"
    with pytest.raises(ValueError, match="expected KEY=V1,V2"):
        submit.sweep_points(["train.lr"])


def test_sweep_jobs_get_their_overrides_and_folders(submit, tmp_path):
    args = submit.parse_args(["--sweep", "train.lr=1e-4,3e-4", "recipes/west/train.py",
                              "--config", "c.yaml", "--out", "exp/w_{sweep}"])
    jobs = submit.make_jobs(args)
    assert [name for name, _ in jobs] == ["train.lr-1e-4", "train.lr-3e-4"]
    assert jobs[1][1].args == ["--config", "c.yaml", "--out", "exp/w_train.lr-3e-4",
                               "train.lr=3e-4"]
    assert jobs[0][1].command()[:2] == ["bash", str(ROOT / "launch" / "torchrun.sh")]


@pytest.mark.parametrize("argv, message", [
    (["missing/train.py"], "recipe script not found"),
    (["--local", "--nodes", "2", "tests/train/toy_recipe.py"], "use --nodes 1"),
    (["--sweep=--lr=1,2", "tests/train/toy_recipe.py", "--out-dir", "x"], "put {sweep}"),
    (["--slurm", "exclusive", "tests/train/toy_recipe.py"], "expected KEY=VALUE"),
    (["--sweep", "train.lr", "tests/train/toy_recipe.py"], "expected KEY=V1,V2"),
])
def test_user_mistakes_are_cli_errors(argv, message):
    out = subprocess.run([sys.executable, str(SUBMIT), *argv], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode != 0 and message in out.stderr, out.stderr


def test_slurm_parameters(submit, tmp_path):
    args = submit.parse_args(["--nodes", "2", "--gpus-per-node", "8", "--partition", "gpu",
                              "--time", "720", "--cpus-per-task", "64", "--slurm",
                              "exclusive=true", "--folder", str(tmp_path / "%j"),
                              "recipes/west/train.py"])
    params = submit.make_executor(args).parameters
    assert params["nodes"] == 2 and params["ntasks_per_node"] == 1   # one launcher per node
    assert params["gpus_per_node"] == 8 and params["partition"] == "gpu"
    assert params["time"] == 720 and params["cpus_per_task"] == 64
    assert params["job_name"] == "west"
    assert params["additional_parameters"] == {"requeue": True, "exclusive": True}
    assert "export SUBMITIT_PREEMPT_SIGNAL=USR1" in params["setup"]
    # the signal submitit asks SLURM for is the one the engine checkpoints on
    from submitit.slurm.slurm import SlurmJobEnvironment
    assert SlurmJobEnvironment.USR_SIG == "USR1"


def test_checkpoint_waits_for_the_training_to_save_then_requeues(submit, tmp_path):
    """The preemption signal reaches the task; `checkpoint` forwards it to the whole process
    tree (local mode), waits for the exit and hands back the same job for the requeue."""
    launcher = tmp_path / "fake_torchrun.sh"
    marker = tmp_path / "saved"
    # a stand-in "training": a child process that saves and exits 75 on SIGUSR1
    launcher.write_text(f"""
trap '' USR1
python -c "
import signal, sys, time
def save(*a):
    time.sleep(0.5); open('{marker}', 'w').write('step 7'); sys.exit(75)
signal.signal(signal.SIGUSR1, save)
print('ready', flush=True)
time.sleep(60)
" &
trap 'kill -USR1 $!' USR1
wait $!; wait $!
""")
    job = submit.RecipeJob("train.py", [], str(launcher), {}, local=True)
    handed_back = []
    previous = signal.getsignal(signal.SIGUSR1)
    # what submitit's handler does on global rank 0
    signal.signal(signal.SIGUSR1,
                  lambda s, f: handed_back.append((job.checkpoint(), marker.exists())))
    timer = threading.Timer(3.0, os.kill, (os.getpid(), signal.SIGUSR1))
    try:
        timer.start()
        result = job()
    finally:
        timer.cancel()
        signal.signal(signal.SIGUSR1, previous)
    assert len(handed_back) == 1
    delayed, saved_before_hand_back = handed_back[0]
    assert saved_before_hand_back and marker.read_text() == "step 7"
    assert delayed.function is job
    assert result == {"exit_code": 75, "node": 0, "preempted": True}
    # what is pickled for the requeue is the job, not this start's process
    assert job.__getstate__()["_proc"] is None


def test_training_that_finishes_as_the_signal_comes_is_not_rerun(submit, tmp_path):
    """A warning lost during start-up lets training finish: the requeued start only reports."""
    launcher = tmp_path / "finishes.sh"
    launcher.write_text("trap '' USR1\nsleep 2\nexit 0\n")
    job = submit.RecipeJob("train.py", ["--x"], str(launcher), {}, local=True)
    handed_back = []
    previous = signal.getsignal(signal.SIGUSR1)
    signal.signal(signal.SIGUSR1, lambda s, f: handed_back.append(job.checkpoint()))
    timer = threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGUSR1))
    try:
        timer.start()
        assert job()["exit_code"] == 0
    finally:
        timer.cancel()
        signal.signal(signal.SIGUSR1, previous)
    assert len(handed_back) == 1
    assert handed_back[0].function is not job
    assert handed_back[0].result() == {"exit_code": 0, "node": 0, "script": "train.py",
                                       "args": ["--x"]}


def test_failure_raises_with_the_exit_status(submit, tmp_path):
    launcher = tmp_path / "fail.sh"
    launcher.write_text("exit 3\n")
    job = submit.RecipeJob("train.py", [], str(launcher), {}, local=True)
    with pytest.raises(RuntimeError, match="failed with exit status 3"):
        job()


@pytest.mark.slow
def test_local_mode_runs_the_toy_recipe(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env.pop("WESTKIT_LAUNCHER", None)
    out = subprocess.run([sys.executable, str(SUBMIT), "--local", "--folder",
                          str(tmp_path / "logs" / "%j"), "tests/train/toy_recipe.py",
                          "--out-dir", str(tmp_path / "toy"), "--steps", "4",
                          "--log-every", "2"], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr[-3000:]
    assert "done {'exit_code': 0" in out.stdout
    assert (tmp_path / "toy" / "trainable.safetensors").is_file()
    assert (tmp_path / "toy" / "checkpoints" / "step_00000004").is_dir()
