#!/usr/bin/env bash
# Smoke test of the whole launch path on a cluster: the engine's toy recipe
# (tests/train/toy_recipe.py, a tiny model, seconds of work) on 2 nodes x 1 rank, through srun ->
# launch/torchrun.sh -> DeepSpeed, with checkpoints, preemption and requeue like the real recipes.
#
#   sbatch slurm/toy.sh                              # defaults below, from the westkit checkout
#   sbatch --gpus-per-node=1 slurm/toy.sh --steps 200   # NCCL instead of gloo; extra args go to the recipe
# Command-line sbatch options override the #SBATCH lines. Log: slurm-<job name>-<job id>.out in
# the submit directory (appended to across requeues).
#SBATCH --job-name=westkit-toy
#SBATCH --nodes=2                 # machines
#SBATCH --ntasks-per-node=1       # one launch/torchrun.sh per node; it starts NPROC_PER_NODE ranks
#SBATCH --gpus-per-node=0         # 0: CPU ranks over gloo; with GPUs: one rank per GPU over NCCL
#SBATCH --cpus-per-task=1         # CPUs per node for all ranks and data workers of that node
#SBATCH --time=00:15:00
#SBATCH --signal=B:USR1@120       # warn the batch shell 120 s before the time limit -> checkpoint
#SBATCH --requeue                 # allow `scontrol requeue` after a preemption checkpoint
#SBATCH --open-mode=append        # keep the log of earlier starts of a requeued job
#SBATCH --output=slurm-%x-%j.out

# ---- variables (environment overrides: OUT_DIR=... sbatch slurm/toy.sh) ----
OUT_DIR=${OUT_DIR:-exp/toy-slurm-${SLURM_JOB_ID:-local}}   # shared filesystem: every node writes here
STEPS=${STEPS:-40}
SAVE_EVERY=${SAVE_EVERY:-10}
ZERO_STAGE=${ZERO_STAGE:-3}
export NPROC_PER_NODE=${NPROC_PER_NODE:-}   # ranks per node; empty: one per GPU, 1 on CPU

# ---- where westkit lives (sbatch runs a copy of this file from SLURM's spool folder) ----
WESTKIT_REPO=${WESTKIT_REPO:-${SLURM_SUBMIT_DIR:-.}}
if [ ! -f "$WESTKIT_REPO/slurm/common.sh" ] && [ -n "${SLURM_JOB_ID:-}" ]; then
  script=$(scontrol show job "$SLURM_JOB_ID" | sed -n 's/^ *Command=\([^ ]*\).*/\1/p')
  WESTKIT_REPO=$(cd "$(dirname "$script")/.." && pwd)
fi
# shellcheck source=slurm/common.sh
source "$WESTKIT_REPO/slurm/common.sh" || { echo "set WESTKIT_REPO to the westkit checkout" >&2; exit 2; }

westkit_run "$WESTKIT_REPO/tests/train/toy_recipe.py" --out-dir "$OUT_DIR" --steps "$STEPS" \
  --save-every "$SAVE_EVERY" --zero-stage "$ZERO_STAGE" "$@"
