#!/usr/bin/env bash
# TASTE (recipes/taste/train.py): cross-attention aggregator over a frozen Whisper encoder, RVQ
# text-aligned speech tokens and a unit decoder, beside the same decoder on text alone;
# DeepSpeed ZeRO, one rank per GPU on every node.
#
#   sbatch slurm/taste.sh                                         # defaults below
#   CONFIG=recipes/taste/conf/tiny.yaml OUT_DIR=exp/taste_tiny sbatch --nodes=1 slurm/taste.sh
#   sbatch slurm/taste.sh model.rvq_depth=0 units.codebook=/shared/units.safetensors   # extra args: YAML overrides
# Fit the unit codebook once beforehand on a shared path (`westkit units fit SHARDS --layer N
# --k 512 --out FILE`), or let the first start fit it (units.fit_on; ranks wait on a file lock).
# Command-line sbatch options override the #SBATCH lines. Submitting the same command again
# resumes from OUT_DIR/checkpoints/latest. Log: slurm-<job name>-<job id>.out in the submit dir.
#SBATCH --job-name=westkit-taste
#SBATCH --nodes=1                 # machines
#SBATCH --ntasks-per-node=1       # one launch/torchrun.sh per node; it starts one rank per GPU
#SBATCH --gpus-per-node=8         # 0 on CPU-only nodes (gloo)
#SBATCH --cpus-per-task=32        # CPUs per node, shared by its ranks and their data workers
#SBATCH --time=12:00:00
#SBATCH --signal=B:USR1@120       # warn the batch shell 120 s before the time limit -> checkpoint
#SBATCH --requeue                 # allow `scontrol requeue` after a preemption checkpoint
#SBATCH --open-mode=append        # keep the log of earlier starts of a requeued job
#SBATCH --output=slurm-%x-%j.out

# ---- variables (environment overrides: CONFIG=... OUT_DIR=... sbatch slurm/taste.sh) ----
CONFIG=${CONFIG:-recipes/taste/conf/tiny.yaml}   # relative: from the submit dir, else the checkout
OUT_DIR=${OUT_DIR:-exp/taste_$(basename "$CONFIG" .yaml)}   # shared filesystem; fixed name so a resubmit resumes
export NPROC_PER_NODE=${NPROC_PER_NODE:-}   # ranks per node; empty: one per GPU, 1 on CPU
# NCCL on InfiniBand clusters usually needs nothing; on Ethernet-only nodes set the interface:
# export NCCL_SOCKET_IFNAME=eth0 NCCL_IB_DISABLE=1 ; debugging: export NCCL_DEBUG=INFO

# ---- where westkit lives (sbatch runs a copy of this file from SLURM's spool folder) ----
WESTKIT_REPO=${WESTKIT_REPO:-${SLURM_SUBMIT_DIR:-.}}
if [ ! -f "$WESTKIT_REPO/slurm/common.sh" ] && [ -n "${SLURM_JOB_ID:-}" ]; then
  script=$(scontrol show job "$SLURM_JOB_ID" | sed -n 's/^ *Command=\([^ ]*\).*/\1/p')
  WESTKIT_REPO=$(cd "$(dirname "$script")/.." && pwd)
fi
# shellcheck source=slurm/common.sh
source "$WESTKIT_REPO/slurm/common.sh" || { echo "set WESTKIT_REPO to the westkit checkout" >&2; exit 2; }

westkit_run "$WESTKIT_REPO/recipes/taste/train.py" --config "$(westkit_path "$CONFIG")" --out "$OUT_DIR" "$@"
