#!/usr/bin/env bash
# Decoding and scoring on several nodes (westkit-recognize / recognize.py): every rank of every
# node decodes its share of each test set's batches, rank 0 writes one report identical to a
# single-process run (westkit/decode/ranks.py). Arguments are recognize.py's own.
#
#   sbatch slurm/recognize.sh --west exp/west_large --shards /data/test-clean /data/test-other --out exp/dec
#   sbatch --nodes=4 slurm/recognize.sh --whisper base=openai/whisper-large-v3 ft=exp/whisper/large \
#       --shards /data/test --out exp/dec_whisper --device cuda
# Relative paths are from the submit dir. Decoding keeps no checkpoint: a job cut by its time
# limit is submitted again and decodes again. Log: slurm-<job name>-<job id>.out.
#SBATCH --job-name=westkit-recognize
#SBATCH --nodes=2                 # machines
#SBATCH --ntasks-per-node=1       # one launch/torchrun.sh per node; it starts one rank per GPU
#SBATCH --gpus-per-node=8         # 0 on CPU-only nodes (gloo)
#SBATCH --cpus-per-task=32        # CPUs per node, shared by its ranks and their data workers
#SBATCH --time=04:00:00
#SBATCH --output=slurm-%x-%j.out

export NPROC_PER_NODE=${NPROC_PER_NODE:-}   # ranks per node; empty: one per GPU, 1 on CPU

# ---- where westkit lives (sbatch runs a copy of this file from SLURM's spool folder) ----
WESTKIT_REPO=${WESTKIT_REPO:-${SLURM_SUBMIT_DIR:-.}}
if [ ! -f "$WESTKIT_REPO/slurm/common.sh" ] && [ -n "${SLURM_JOB_ID:-}" ]; then
  script=$(scontrol show job "$SLURM_JOB_ID" | sed -n 's/^ *Command=\([^ ]*\).*/\1/p')
  WESTKIT_REPO=$(cd "$(dirname "$script")/.." && pwd)
fi
# shellcheck source=slurm/common.sh
source "$WESTKIT_REPO/slurm/common.sh" || { echo "set WESTKIT_REPO to the westkit checkout" >&2; exit 2; }

westkit_run "$WESTKIT_REPO/recognize.py" "$@"
