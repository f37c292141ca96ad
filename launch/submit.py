#!/usr/bin/env python
"""Submit any westkit recipe to SLURM with submitit, or run it the same way on this machine.

One SLURM task per node runs ``launch/torchrun.sh SCRIPT ARGS...`` (rendezvous from SLURM's
environment, one rank per GPU). A timeout or preemption checkpoints and requeues: SLURM sends
SIGUSR1 ``--signal-delay`` seconds before the time limit to every process of the job, the engine
saves at the next step boundary and exits with 75, and the task on global rank 0 (a
`submitit.helpers.Checkpointable`) waits for that, then requeues the job; the next start resumes
from ``OUT_DIR/checkpoints/latest``.

    # 2 nodes x 8 GPUs for 12 h on partition "gpu"
    python launch/submit.py --nodes 2 --gpus-per-node 8 --partition gpu --time 720 \\
        recipes/west/train.py --config recipes/west/conf/large.yaml --out exp/west1
    # a sweep: one array task per combination; {sweep} names each run's own output folder
    python launch/submit.py --sweep train.lr=1e-4,3e-4 --sweep train.warmup_steps=100,500 \\
        recipes/west/train.py --config recipes/west/conf/large.yaml --out 'exp/west_{sweep}'
    # the same job without SLURM (submitit's local executor), waiting for the result
    python launch/submit.py --local tests/train/toy_recipe.py --out-dir /tmp/toy

Each sweep point appends ``KEY=VALUE`` to the recipe's arguments: a YAML override such as
``train.lr=1e-4``, or a flag such as ``--lr=0.01`` (write ``--sweep=--lr=0.01,0.03`` then). Prints each job id with its log
files; ``--wait`` blocks until the jobs end and exits non-zero if one failed.
"""
from __future__ import annotations

import argparse
import itertools
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

# submitit reads its preemption signal when imported: use the one the engine checkpoints on
# (USR1), not submitit's USR2, which would kill the training processes outright
os.environ["SUBMITIT_PREEMPT_SIGNAL"] = "USR1"
import submitit  # noqa: E402
from submitit.core.utils import DelayedSubmission  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PREEMPTED_EXIT_CODE = 75  # westkit.train.PREEMPTED_EXIT_CODE (not imported: keeps this light)
PREEMPT_SIGNAL = signal.SIGUSR1


def _log(message: str) -> None:
    print(f"[submit {time.strftime('%H:%M:%S')}] {message}", flush=True)


def _descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (from /proc), parents before children."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(0), [])
        out += kids
        todo += kids
    return out


class RecipeJob(submitit.helpers.Checkpointable):
    """One node's share of a recipe run: ``bash launch/torchrun.sh SCRIPT ARGS...``.

    Runs as a submitit task (one per node). Returns ``{"exit_code": 0, ...}`` when training ends;
    raises with the exit status when it fails, so submitit records the job as failed.
    """

    def __init__(self, script: str, args: list[str], launcher: str, env: dict[str, str],
                 local: bool = False):
        self.script, self.args, self.launcher = script, list(args), launcher
        self.env, self.local = dict(env), local
        self._proc: subprocess.Popen | None = None
        self._rc: int | None = None
        self._signalled = False

    def __getstate__(self) -> dict:
        # the running process belongs to this start only; a requeued job starts a new one
        state = dict(self.__dict__)
        state.update(_proc=None, _rc=None, _signalled=False)
        return state

    def command(self) -> list[str]:
        return ["bash", self.launcher, self.script, *self.args]

    def __call__(self) -> dict:
        env = dict(os.environ)
        if self.local:  # outside SLURM even when submitted from inside an allocation
            env = {k: v for k, v in env.items() if not k.startswith("SLURM_")}
        env.update(self.env)
        node = env.get("SLURM_NODEID", "0")
        restarts = env.get("SLURM_RESTART_COUNT", "0")
        _log(f"node {node} (start #{int(restarts) + 1}): {shlex.join(self.command())}")
        # note the signal on every node, then let submitit's handler run (it checkpoints and
        # requeues on global rank 0 only, through `checkpoint` below)
        previous = signal.getsignal(PREEMPT_SIGNAL)

        def on_signal(signum, frame):
            self._signalled = True
            if callable(previous):
                previous(signum, frame)

        signal.signal(PREEMPT_SIGNAL, on_signal)
        self._proc = subprocess.Popen(self.command(), env=env)
        # a thread reaps the child so that the signal handler never waits on a lock the
        # interrupted main thread might hold: both only poll `_rc`
        threading.Thread(target=self._reap, daemon=True).start()
        rc = self._wait()
        if rc == 0:
            _log(f"node {node}: training finished")
            return self._result(node)
        if rc == PREEMPTED_EXIT_CODE and self._signalled:
            # another node's task requeues the job; ending cleanly here keeps the step quiet
            _log(f"node {node}: checkpointed after the preemption signal; rank 0 requeues")
            return {"exit_code": rc, "node": int(node), "preempted": True}
        if rc == PREEMPTED_EXIT_CODE:
            raise RuntimeError(
                f"{self.script} checkpointed and stopped (exit {rc}) on a SIGTERM from SLURM "
                f"(scancel, time limit or preemption); submit the same command again to resume")
        raise RuntimeError(f"{self.script} failed with exit status {rc} on node {node}; the "
                           f"first error is in this job's log files (stdout/stderr of each task)")

    def _reap(self) -> None:
        self._rc = self._proc.wait()

    def _wait(self) -> int:
        while self._rc is None:
            time.sleep(0.2)
        return self._rc

    def checkpoint(self, *args, **kwargs) -> DelayedSubmission:
        """Called by submitit (global rank 0) on the timeout/preemption signal: let training
        save and exit, then hand back this same job to requeue; it resumes from its checkpoint."""
        if self._proc is not None:
            if self.local:
                # submitit's local executor signals only this process; under SLURM the signal
                # reaches every process of the job already
                for pid in _descendants(os.getpid()):
                    try:
                        os.kill(pid, PREEMPT_SIGNAL)
                    except ProcessLookupError:
                        pass
            _log("preemption/timeout signal: waiting for training to save a checkpoint")
            rc = self._wait()
            if rc == 0:
                # it finished before it saw the signal (one that came during start-up is lost);
                # the requeued start only reports the result
                _log("training finished as the signal came: requeueing only to record that")
                return DelayedSubmission(_finished, self._result("0"))
            # any other exit after the signal means "out of time": even a rank that died
            # before its handler was installed resumes from the latest complete checkpoint;
            # submitit's --max-requeues bounds the timeouts
            _log(f"training exited with {rc}: requeueing (it resumes from its latest checkpoint)")
        return super().checkpoint(*args, **kwargs)

    def _result(self, node: str) -> dict:
        return {"exit_code": 0, "node": int(node), "script": self.script, "args": self.args}


def _finished(result: dict) -> dict:
    """The requeued stand-in for a job that finished while it was being signalled."""
    return result


if __name__ != "__main__" and __name__ in sys.modules:
    # launched jobs unpickle RecipeJob without importing this file (launch/ is not a package)
    import cloudpickle
    cloudpickle.register_pickle_by_value(sys.modules[__name__])


def sweep_points(sweeps: list[str]) -> list[list[tuple[str, str]]]:
    """``["a=1,2", "b=x"]`` -> ``[[("a","1"),("b","x")], [("a","2"),("b","x")]]``."""
    axes = []
    for item in sweeps:
        key, sep, values = item.partition("=")
        if not sep or not key or not values:
            raise ValueError(f"--sweep {item!r}: expected KEY=V1,V2,... e.g. train.lr=1e-4,3e-4")
        axes.append([(key, v) for v in values.split(",")])
    return [list(p) for p in itertools.product(*axes)] if axes else [[]]


def sweep_name(point: list[tuple[str, str]]) -> str:
    """A folder-safe name for one sweep point, e.g. ``train.lr-1e-4_seed-2``."""
    parts = [f"{k.lstrip('-')}-{v}" for k, v in point]
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", "_".join(parts)) or "run"


def parse_args(argv=None) -> argparse.Namespace:
    doc = __doc__ or ""
    p = argparse.ArgumentParser(
        description=doc.split("\n\n")[0], epilog=doc.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("script", help="the recipe script, e.g. recipes/west/train.py")
    p.add_argument("args", nargs=argparse.REMAINDER, help="arguments of the recipe script")
    g = p.add_argument_group("resources")
    g.add_argument("--nodes", type=int, default=1)
    g.add_argument("--gpus-per-node", type=int, default=0,
                   help="GPUs per node; the launcher starts one rank per GPU (default 0: CPU)")
    g.add_argument("--nproc-per-node", type=int, default=None,
                   help="ranks per node (default: one per GPU, 1 without GPUs)")
    g.add_argument("--cpus-per-task", type=int, default=None, help="CPUs per node (one task per node)")
    g.add_argument("--mem-gb", type=int, default=None, help="memory per node")
    g.add_argument("--partition", default=None)
    g.add_argument("--account", default=None)
    g.add_argument("--qos", default=None)
    g.add_argument("--constraint", default=None)
    g.add_argument("--time", type=int, default=60, help="time limit in minutes (default 60)")
    g.add_argument("--slurm", action="append", default=[], metavar="KEY=VALUE",
                   help="any other sbatch option, e.g. --slurm exclusive=true (repeatable)")
    g = p.add_argument_group("job")
    g.add_argument("--job-name", default=None, help="default: the recipe folder, e.g. west")
    g.add_argument("--folder", default="exp/submitit/%j",
                   help="submitit's logs and pickles, on a shared filesystem (%%j: job id)")
    g.add_argument("--signal-delay", type=int, default=120,
                   help="seconds before the time limit at which training is told to checkpoint")
    g.add_argument("--max-requeues", type=int, default=3,
                   help="requeues after a time limit before giving up (preemptions are unlimited)")
    g.add_argument("--sweep", action="append", default=[], metavar="KEY=V1,V2",
                   help="one array task per value (repeatable: all combinations); each appends "
                        "KEY=VALUE to the recipe's arguments and fills {sweep} in them")
    g.add_argument("--max-parallel", type=int, default=64, help="array tasks running at once")
    g.add_argument("--local", action="store_true",
                   help="run here with submitit's local executor instead of SLURM (implies --wait)")
    g.add_argument("--wait", action="store_true", help="wait for the jobs; exit 1 if one failed")
    args = p.parse_args(argv)
    if args.args[:1] == ["--"]:
        args.args = args.args[1:]
    return args


def check(args: argparse.Namespace) -> None:
    """User mistakes, before anything is submitted."""
    if not Path(args.script).is_file():
        raise SystemExit(f"submit.py: recipe script not found: {args.script}")
    if args.nodes < 1 or args.gpus_per_node < 0 or args.time < 1:
        raise SystemExit("submit.py: --nodes and --time must be >= 1, --gpus-per-node >= 0")
    if args.local and args.nodes > 1:
        raise SystemExit("submit.py: --local runs on this machine only: use --nodes 1")
    try:
        points = sweep_points(args.sweep)
    except ValueError as e:
        raise SystemExit(f"submit.py: {e}") from None
    if len(points) > 1 and not any("{sweep}" in a for a in args.args):
        raise SystemExit("submit.py: a sweep's runs would share one output folder: put {sweep} "
                         "in the recipe's output argument, e.g. --out 'exp/lr_{sweep}'")
    for item in args.slurm:
        if "=" not in item:
            raise SystemExit(f"submit.py: --slurm {item!r}: expected KEY=VALUE, e.g. exclusive=true")


def make_executor(args: argparse.Namespace):
    name = args.job_name or Path(args.script).resolve().parent.name
    if args.local:
        ex = submitit.LocalExecutor(folder=args.folder, max_num_timeout=args.max_requeues)
        ex.update_parameters(timeout_min=args.time, tasks_per_node=1,
                             gpus_per_node=args.gpus_per_node, signal_delay_s=args.signal_delay)
        return ex
    ex = submitit.SlurmExecutor(folder=args.folder, max_num_timeout=args.max_requeues)
    extra = {"requeue": True}
    for item in args.slurm:
        key, _, value = item.partition("=")
        extra[key.replace("_", "-")] = {"true": True, "false": False}.get(value.lower(), value)
    params = dict(job_name=name, time=args.time, nodes=args.nodes, ntasks_per_node=1,
                  # 0: no GPU request at all, so that --slurm gres=gpu:N can stand in for it
                  # on clusters that take only --gres
                  gpus_per_node=args.gpus_per_node or None, cpus_per_task=args.cpus_per_task,
                  partition=args.partition, account=args.account, qos=args.qos,
                  constraint=args.constraint, signal_delay_s=args.signal_delay,
                  array_parallelism=args.max_parallel, additional_parameters=extra,
                  # in case the cluster does not export the submitting environment
                  setup=["export SUBMITIT_PREEMPT_SIGNAL=USR1"])
    if args.mem_gb:
        params["mem"] = f"{args.mem_gb}GB"
    ex.update_parameters(**{k: v for k, v in params.items() if v is not None})
    return ex


def make_jobs(args: argparse.Namespace) -> list[tuple[str, RecipeJob]]:
    launcher = os.environ.get("WESTKIT_LAUNCHER", str(REPO / "launch" / "torchrun.sh"))
    env = {"PYTHONUNBUFFERED": "1"}
    if args.nproc_per_node:
        env["NPROC_PER_NODE"] = str(args.nproc_per_node)
    script = str(Path(args.script).resolve())
    jobs = []
    for point in sweep_points(args.sweep):
        name = sweep_name(point)
        recipe_args = [a.replace("{sweep}", name) for a in args.args]
        recipe_args += [f"{k}={v}" for k, v in point]
        jobs.append((name if point else "", RecipeJob(script, recipe_args, launcher, env,
                                                      local=args.local)))
    return jobs


def wait(submitted) -> int:
    """Block until every job ends; print each outcome; 0 if all succeeded."""
    failed = 0
    for name, job in submitted:
        try:
            result = job.results()[0]  # one task per node; global rank 0 speaks for the job
            _log(f"job {job.job_id}{' ' + name if name else ''}: done {result}")
        except Exception as e:  # submitit re-raises the job's error with its traceback
            failed += 1
            # submitit's message carries the job's traceback: show its last exception line
            causes = re.findall(r"^\w*(?:Error|Exception): .*$", str(e), re.MULTILINE)
            _log(f"job {job.job_id}{' ' + name if name else ''}: FAILED: "
                 f"{causes[-1] if causes else str(e).strip()[-500:]}")
            _log(f"  logs: {job.paths.stdout}  {job.paths.stderr}")
    return 1 if failed else 0


def main(argv=None) -> int:
    args = parse_args(argv)
    check(args)
    executor = make_executor(args)
    jobs = make_jobs(args)
    if len(jobs) == 1:
        handles = [executor.submit(jobs[0][1])]
    else:
        with executor.batch():  # one SLURM job array
            handles = [executor.submit(job) for _, job in jobs]
    submitted = [(name, handle) for (name, _), handle in zip(jobs, handles)]
    where = "locally" if args.local else "to SLURM"
    for (name, job), handle in zip(jobs, handles):
        _log(f"submitted {where}: job {handle.job_id}: {shlex.join(job.command()[2:])}")
        print(f"job_id={handle.job_id} stdout={handle.paths.stdout} "
              f"stderr={handle.paths.stderr}", flush=True)
    if args.local or args.wait:
        return wait(submitted)
    return 0


if __name__ == "__main__":
    sys.exit(main())
