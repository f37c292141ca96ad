#!/usr/bin/env bash
# WhisTLE text-only domain adaptation of Whisper, both stages in one job:
#   stage 1 (recipes/tle/train.py): train the text-to-latent encoder on paired speech -> OUT_DIR/tle
#   stage 2 (recipes/whisper/train.py with conf/whistle_stage2.yaml): fine-tune the decoder on
#           in-domain text through the TLE -> OUT_DIR/adapt/hf, an ordinary Whisper checkpoint
#
#   sbatch slurm/tle.sh                                     # defaults below, both stages
#   STAGES=2 sbatch slurm/tle.sh 'text.data.shards=[/data/my-domain-text]'   # extra args: overrides of both stages
#   STAGE1_ARGS="tle.d_latent=128" STAGE2_ARGS="mix.tts=1" sbatch slurm/tle.sh  # per-stage overrides
#   TLE_CONFIG=recipes/tle/conf/tle_large-v3.yaml FINETUNE_CONFIG=recipes/whisper/conf/whistle_stage2_large-v3.yaml \
#     OUT_DIR=exp/whistle-large sbatch --nodes 2 slurm/tle.sh   # large-v3 by hub id, ZeRO-3, precomputed states
# A finished stage (its output exists) is skipped, so a requeued or resubmitted job goes on
# where it stopped; an unfinished one resumes from its checkpoints. Log: slurm-<job name>-<job id>.out
#SBATCH --job-name=westkit-tle
#SBATCH --nodes=1                 # machines
#SBATCH --ntasks-per-node=1       # one launch/torchrun.sh per node; it starts one rank per GPU
#SBATCH --gpus-per-node=8         # 0 on CPU-only nodes (gloo)
#SBATCH --cpus-per-task=32        # CPUs per node, shared by its ranks and their data workers
#SBATCH --time=12:00:00
#SBATCH --signal=B:USR1@120       # warn the batch shell 120 s before the time limit -> checkpoint
#SBATCH --requeue                 # allow `scontrol requeue` after a preemption checkpoint
#SBATCH --open-mode=append        # keep the log of earlier starts of a requeued job
#SBATCH --output=slurm-%x-%j.out

# ---- variables (environment overrides: OUT_DIR=... sbatch slurm/tle.sh) ----
TLE_CONFIG=${TLE_CONFIG:-recipes/tle/conf/tle_tiny.yaml}             # stage 1
FINETUNE_CONFIG=${FINETUNE_CONFIG:-recipes/whisper/conf/whistle_stage2.yaml}   # stage 2
OUT_DIR=${OUT_DIR:-exp/whistle}   # shared filesystem: OUT_DIR/tle, OUT_DIR/adapt, OUT_DIR/state_cache
STAGES=${STAGES:-1 2}
STAGE1_ARGS=${STAGE1_ARGS:-}      # space-separated overrides for stage 1 only
STAGE2_ARGS=${STAGE2_ARGS:-}      # ... and for stage 2 only
export NPROC_PER_NODE=${NPROC_PER_NODE:-}   # ranks per node; empty: one per GPU, 1 on CPU
# NCCL on Ethernet-only nodes: export NCCL_SOCKET_IFNAME=eth0 NCCL_IB_DISABLE=1

# ---- where westkit lives (sbatch runs a copy of this file from SLURM's spool folder) ----
WESTKIT_REPO=${WESTKIT_REPO:-${SLURM_SUBMIT_DIR:-.}}
if [ ! -f "$WESTKIT_REPO/slurm/common.sh" ] && [ -n "${SLURM_JOB_ID:-}" ]; then
  script=$(scontrol show job "$SLURM_JOB_ID" | sed -n 's/^ *Command=\([^ ]*\).*/\1/p')
  WESTKIT_REPO=$(cd "$(dirname "$script")/.." && pwd)
fi
# shellcheck source=slurm/common.sh
source "$WESTKIT_REPO/slurm/common.sh" || { echo "set WESTKIT_REPO to the westkit checkout" >&2; exit 2; }

# the frozen encoder runs in every step; to compute its states once, run
#   westkit-encode SHARDS --out STATES --model NAME   and add data.states=STATES to STAGE1_ARGS
#   (data.states=... / tts.states=... to STAGE2_ARGS)
read -r -a stage1_args <<< "$STAGE1_ARGS"
read -r -a stage2_args <<< "$STAGE2_ARGS"
for stage in $STAGES; do
  case $stage in
    1) if [ -f "$OUT_DIR/tle/tle.safetensors" ]; then westkit_log "stage 1 done already ($OUT_DIR/tle)"; continue; fi
       westkit_log "stage 1: text-to-latent encoder -> $OUT_DIR/tle"
       westkit_run "$WESTKIT_REPO/recipes/tle/train.py" --config "$(westkit_path "$TLE_CONFIG")" \
         --out "$OUT_DIR/tle" "$@" "${stage1_args[@]}" || exit $? ;;
    2) if [ -d "$OUT_DIR/adapt/hf" ]; then westkit_log "stage 2 done already ($OUT_DIR/adapt/hf)"; continue; fi
       westkit_log "stage 2: decoder fine-tuning from text through the TLE -> $OUT_DIR/adapt"
       westkit_run "$WESTKIT_REPO/recipes/whisper/train.py" --config "$(westkit_path "$FINETUNE_CONFIG")" \
         --out "$OUT_DIR/adapt" "text.tle=$OUT_DIR/tle" \
         "$@" "${stage2_args[@]}" || exit $? ;;
    *) westkit_log "ERROR: STAGES='$STAGES': stages are 1 and 2"; exit 2 ;;
  esac
done
