# Shared body of the sbatch scripts in slurm/ (sourced, not run): environment, one
# launch/torchrun.sh per node under srun, signal forwarding and requeue after a preemption
# checkpoint. The recipe scripts keep only their #SBATCH header and variables.
#
#   source "$WESTKIT_REPO/slurm/common.sh"
#   westkit_run SCRIPT ARGS...      # returns the training's exit status
#
# Signals: `#SBATCH --signal=B:USR1@120` sends USR1 to this batch shell only, 120 s before the
# time limit. It is forwarded to every process of the training step (srun relays it to the
# tasks); the engine checkpoints at the next step boundary and exits with 75
# (westkit.train.PREEMPTED_EXIT_CODE); the job then requeues itself (`scontrol requeue`, needs
# `#SBATCH --requeue`) and the engine resumes from OUT_DIR/checkpoints/latest. Exit 75 without
# any signal here (someone signalled the step itself) requeues too. A SIGTERM alone means SLURM
# itself is ending the job (scancel, time limit, preemption, `scontrol requeue`): it reaches
# the training processes directly and SLURM decides what happens next.

PREEMPTED_EXIT_CODE=75  # westkit.train.preempt.PREEMPTED_EXIT_CODE

westkit_log() { echo "[westkit-slurm $(date -u +%H:%M:%S)] $*"; }

# A path as given when it exists from the submit directory, else relative to the checkout
# (so CONFIG=recipes/west/conf/tiny.yaml works from anywhere).
westkit_path() { if [ -e "$1" ] || [ "${1#/}" != "$1" ]; then echo "$1"; else echo "$WESTKIT_REPO/$1"; fi; }

# Venv: WESTKIT_VENV if given, else whatever python the submitting shell had (sbatch exports it).
westkit_env() {
  if [ -n "${WESTKIT_VENV:-}" ]; then
    # shellcheck disable=SC1091
    source "$WESTKIT_VENV/bin/activate"
  fi
  export PYTHONUNBUFFERED=1
  # one BLAS/OpenMP thread pool per rank, sized to the CPUs SLURM gave the task
  if [ -z "${OMP_NUM_THREADS:-}" ] && [ -n "${SLURM_CPUS_PER_TASK:-}" ]; then
    local nproc=${NPROC_PER_NODE:-${SLURM_GPUS_ON_NODE:-1}}
    [ "$nproc" -ge 1 ] 2>/dev/null || nproc=1
    export OMP_NUM_THREADS=$(( SLURM_CPUS_PER_TASK / nproc > 0 ? SLURM_CPUS_PER_TASK / nproc : 1 ))
  fi
}

_westkit_on_signal() {
  local sig=$1
  if [ "$sig" = TERM ]; then
    # scancel, time limit, preemption or `scontrol requeue`: SLURM signals the training
    # processes itself and decides what happens next
    _westkit_got_term=1
    westkit_log "caught SIGTERM: SLURM is stopping this job; training checkpoints if it can"
  elif [ -n "${_westkit_srun_pid:-}" ] && kill -0 "$_westkit_srun_pid" 2>/dev/null; then
    _westkit_got_usr1=1
    westkit_log "caught SIG$sig: forwarding SIGUSR1 to the training processes (checkpoint, then exit $PREEMPTED_EXIT_CODE)"
    # srun relays it to its tasks; SLURM delivers it to every process of the step
    kill -USR1 "$_westkit_srun_pid" 2>/dev/null || true
  else
    _westkit_got_usr1=1
    westkit_log "caught SIG$sig before training started"
  fi
}

westkit_run() {
  [ -n "${SLURM_JOB_ID:-}" ] || { echo "westkit_run: not inside a SLURM job; submit with sbatch" >&2; return 2; }
  local launcher=${WESTKIT_LAUNCHER:-$WESTKIT_REPO/launch/torchrun.sh}
  [ -f "$launcher" ] || { westkit_log "error: $launcher not found (set WESTKIT_REPO to the westkit checkout)"; return 2; }
  westkit_env
  westkit_log "job $SLURM_JOB_ID '${SLURM_JOB_NAME:-}' start #$(( ${SLURM_RESTART_COUNT:-0} + 1 )) on ${SLURM_JOB_NUM_NODES} node(s): ${SLURM_JOB_NODELIST}"
  westkit_log "gpus/node=${SLURM_GPUS_ON_NODE:-0} cpus/task=${SLURM_CPUS_PER_TASK:-?} nproc/node=${NPROC_PER_NODE:-auto} python=$(command -v python)"
  westkit_log "running: $launcher $*"

  _westkit_got_term=0
  _westkit_got_usr1=0
  _westkit_srun_pid=
  trap '_westkit_on_signal USR1' USR1
  trap '_westkit_on_signal TERM' TERM
  # one launcher per node; it derives nnodes/node rank/master from SLURM's environment.
  # --kill-on-bad-exit: a rank that dies must not leave the other nodes hanging in a collective.
  local cpus=()
  [ -n "${SLURM_CPUS_PER_TASK:-}" ] && cpus=(--cpus-per-task="$SLURM_CPUS_PER_TASK")
  srun --nodes="$SLURM_JOB_NUM_NODES" --ntasks-per-node=1 "${cpus[@]}" --kill-on-bad-exit=1 \
    bash "$launcher" "$@" &
  _westkit_srun_pid=$!
  local rc
  # `wait` returns early (status > 128) whenever a trapped signal arrives: wait again; bash
  # keeps the exit status of a finished child, so the last `wait` returns srun's own status
  while kill -0 "$_westkit_srun_pid" 2>/dev/null; do wait "$_westkit_srun_pid"; done
  wait "$_westkit_srun_pid"; rc=$?
  trap - USR1 TERM

  if [ "$rc" = 0 ]; then
    westkit_log "training finished (exit 0)"
  elif [ "$_westkit_got_usr1" = 1 ] || { [ "$rc" = "$PREEMPTED_EXIT_CODE" ] && [ "$_westkit_got_term" = 0 ]; }; then
    # after the warning any exit means "out of time", even one cut short by the time limit's
    # SIGTERM or a rank that died before its handler was installed: the next start resumes
    # from the latest complete checkpoint
    westkit_log "training stopped after the preemption signal (exit $rc): requeueing job $SLURM_JOB_ID"
    if scontrol requeue "$SLURM_JOB_ID"; then
      westkit_log "requeued; the next start resumes from the latest checkpoint"
    else
      westkit_log "ERROR: scontrol requeue failed (submit with --requeue); resume by hand by submitting the same command again"
    fi
  elif [ "$_westkit_got_term" = 1 ]; then
    westkit_log "training stopped by SLURM (exit $rc); if it was requeued it resumes from its latest checkpoint"
  else
    # srun reports the highest task status: 143 often just means "killed after another failed"
    westkit_log "ERROR: training failed on job $SLURM_JOB_ID (srun exit status $rc). The first 'srun: error:' line above names the task that failed first; the first Python traceback above says why"
  fi
  return "$rc"
}
