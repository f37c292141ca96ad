#!/usr/bin/env bash
# Write shards on the cluster: a job array of SLICES tasks, each writing one deterministic slice
# of the inputs (`westkit-shards ... --slice I/N`), then one job, after all of them succeeded,
# that merges them into one index.json and one rejects.jsonl (`westkit-shards --merge OUT`).
# Run it on the login node (it calls sbatch itself), from the westkit venv:
#
#   SLICES=16 bash slurm/shards.sh data/train.jsonl -o /shared/shards/train --shard-size 512M
#   TOOL=westkit-encode SLICES=8 SBATCH_OPTS="--gpus-per-task=1" bash slurm/shards.sh \
#     /shared/shards/train --out /shared/states/train --model whisper-large-v3 --device cuda
#
# Arguments are those of westkit-shards (-o OUT is required; OUT must be on a filesystem every
# node sees). Running the same command again submits only the slices that are not complete
# (failed, killed, cancelled): finished ones are kept. It prints the job ids; logs are
# slurm-westkit-shards-<array job>_<task>.out in the current folder.
set -euo pipefail

# ---- variables (environment overrides) ----
TOOL=${TOOL:-westkit-shards}         # or westkit-encode (precomputed encoder states per slice)
SLICES=${SLICES:-8}                  # array tasks; the same number on every rerun
CPUS_PER_TASK=${CPUS_PER_TASK:-4}    # decoding processes per task (westkit-shards --workers)
SBATCH_OPTS=${SBATCH_OPTS:-}         # e.g. "--partition=cpu --time=02:00:00"

out=""
args=("$@")
for ((k = 0; k < ${#args[@]}; k++)); do
  case "${args[k]}" in
    -o|--out) out=${args[k + 1]:-} ;;
    --out=*) out=${args[k]#--out=} ;;
  esac
done
[ -n "$out" ] || { echo "slurm/shards.sh: give -o OUT (see the header of $0)" >&2; exit 2; }
case "$TOOL" in westkit-shards|westkit-encode) ;; *) echo "slurm/shards.sh: TOOL must be westkit-shards or westkit-encode" >&2; exit 2 ;; esac
command -v "$TOOL" >/dev/null || { echo "slurm/shards.sh: $TOOL not on PATH; activate the westkit venv" >&2; exit 2; }
workers=""
[ "$TOOL" = westkit-shards ] && workers="--workers $CPUS_PER_TASK"
if [ -f "$out/index.json" ]; then
  echo "$out/index.json exists: the shards are written and merged; nothing to do"
  exit 0
fi

missing=()
for ((i = 0; i < SLICES; i++)); do
  [ -f "$(printf '%s/slices/slice-%05d-of-%05d/index.json' "$out" "$i" "$SLICES")" ] || missing+=("$i")
done
quoted=$(printf '%q ' "${args[@]}")
dependency=()
if [ ${#missing[@]} -gt 0 ]; then
  list=$(IFS=,; echo "${missing[*]}")
  # shellcheck disable=SC2086
  array=$(sbatch --parsable --job-name="$TOOL" --array="$list" --ntasks=1 \
    --cpus-per-task="$CPUS_PER_TASK" --output='slurm-%x-%A_%a.out' $SBATCH_OPTS \
    --wrap "$TOOL $quoted --slice \${SLURM_ARRAY_TASK_ID}/$SLICES $workers --no-progress")
  array=${array%%;*}
  dependency=(--dependency="afterok:$array" --kill-on-invalid-dep=yes)
  echo "array job $array: slices $list of $SLICES"
else
  echo "all $SLICES slices are written"
fi
# shellcheck disable=SC2086
merge=$(sbatch --parsable --job-name="$TOOL-merge" --ntasks=1 --cpus-per-task=1 \
  --output='slurm-%x-%j.out' "${dependency[@]}" $SBATCH_OPTS --wrap "$TOOL --merge $(printf '%q' "$out")")
echo "merge job ${merge%%;*}"
