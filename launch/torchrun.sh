#!/usr/bin/env bash
# Run a westkit recipe under torchrun, on one machine or on every node of a SLURM job.
#
#   bash launch/torchrun.sh [--nproc N] SCRIPT [ARGS...]
#   srun --ntasks-per-node=1 bash launch/torchrun.sh recipes/west/train.py --config ...
#
# Processes per node: --nproc N, else $NPROC_PER_NODE, else the GPU count (nvidia-smi), else 1.
# Inside a SLURM allocation (SLURM_JOB_ID set) with one task per node, the rendezvous comes from
# SLURM: master = first host of SLURM_JOB_NODELIST (`scontrol show hostnames`, its NodeAddr), nnodes =
# SLURM_NNODES, node rank = SLURM_NODEID, port = 20000 + SLURM_JOB_ID % 20000 (override with
# $MASTER_PORT). Outside SLURM it is a single-node run on a free local port.
#
# Signals: SIGTERM is passed to torchrun (which passes it to the workers); SIGUSR1, which SLURM
# sends before a time limit with `#SBATCH --signal=USR1@120`, goes straight to the workers
# (torchrun would die of it). Ctrl-C (SIGINT) also goes straight to the workers, and torchrun
# ignores it: its own shutdown would signal each worker's whole process group, DataLoader
# workers included, which die of SIGTERM and take their rank down before it can save. A second
# Ctrl-C kills the workers at once. The engine checkpoints at the next step and exits; this
# script exits with westkit.train.PREEMPTED_EXIT_CODE (75) so that a requeue is in order.
set -euo pipefail

nproc=${NPROC_PER_NODE:-}
if [ "${1:-}" = "--nproc" ]; then nproc=$2; shift 2; fi
if [ $# -lt 1 ]; then
  echo "usage: $0 [--nproc N] SCRIPT [ARGS...]" >&2; exit 2
fi
if [ -z "$nproc" ]; then
  nproc=$( (nvidia-smi -L 2>/dev/null || true) | grep -c '^GPU' || true)
  [ "$nproc" -gt 0 ] 2>/dev/null || nproc=1
fi

if [ -n "${SLURM_JOB_ID:-}" ] && [ -n "${SLURM_JOB_NODELIST:-}" ]; then
  master=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
  # the node's address as SLURM knows it (NodeAddr, = the name unless set): node names of a
  # test cluster on one machine (n1, n2 on 127.0.0.1) do not resolve by DNS
  addr=$(scontrol show node "$master" -o 2>/dev/null | grep -o 'NodeAddr=[^ ]*' | cut -d= -f2 || true)
  master=${addr:-$master}
  # every node of a multi-node job must reach the master by name; a one-node job stays local
  [ "${SLURM_NNODES:-1}" -gt 1 ] || master=127.0.0.1
  port=${MASTER_PORT:-$((20000 + SLURM_JOB_ID % 20000))}
  rdzv=(--nnodes "${SLURM_NNODES:-1}" --node_rank "${SLURM_NODEID:-0}"
        --master_addr "$master" --master_port "$port")
else
  rdzv=(--standalone)
fi

export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} PYTHONUNBUFFERED=1
exit_file=$(mktemp "${TMPDIR:-/tmp}/westkit-exit.XXXXXX")
export WESTKIT_EXIT_FILE=$exit_file

# torchrun inherits SIGUSR1 ignored (Python keeps an inherited SIG_IGN); workers install
# their own handler, so only they react.
trap '' USR1
# torchrun starts with SIGINT ignored (a background job of a script) and stays so unless it
# installs its own handler (torch >= 2.8 has the flag to keep SIGINT off its list)
signals=()
torch_run=$(python -c 'import importlib.util as u, os; print(os.path.join(u.find_spec("torch").submodule_search_locations[0], "distributed", "run.py"))' 2>/dev/null || true)
if grep -q -- "--signals-to-handle" "$torch_run" 2>/dev/null; then
  signals=(--signals-to-handle SIGTERM,SIGHUP,SIGQUIT)
fi
python -m torch.distributed.run "${rdzv[@]}" --nproc_per_node "$nproc" --max_restarts 0 "${signals[@]}" "$@" &
torchrun_pid=$!
forward_usr1() { pkill -USR1 -P "$torchrun_pid" 2>/dev/null || true; }
interrupted=0
on_int() {
  if [ "$interrupted" = 1 ]; then
    echo "[torchrun.sh] second Ctrl-C: killing the workers without a checkpoint" >&2
    pkill -KILL -P "$torchrun_pid" 2>/dev/null || true
    kill -KILL "$torchrun_pid" 2>/dev/null || true
    return
  fi
  interrupted=1
  echo "[torchrun.sh] Ctrl-C: the workers checkpoint at the end of this step and exit (Ctrl-C again kills them)" >&2
  pkill -INT -P "$torchrun_pid" 2>/dev/null || true
}
trap 'kill -TERM "$torchrun_pid" 2>/dev/null || true' TERM
trap on_int INT
trap forward_usr1 USR1

status=0
# `wait` returns early (status > 128) whenever a trapped signal arrives: wait again
while true; do
  wait "$torchrun_pid" && status=0 || status=$?
  kill -0 "$torchrun_pid" 2>/dev/null || break
done
worker_status=$(cat "$exit_file" 2>/dev/null || true)
rm -f "$exit_file"
if [ -n "$worker_status" ]; then
  echo "[torchrun.sh] workers exited with $worker_status (preempted, checkpoint saved)" >&2
  exit "$worker_status"
fi
exit "$status"
