#!/usr/bin/env bash
# The docs/taste.md table on CPU: tiny TASTE with continuous (rvq_depth=0) and quantised
# (4 x 128 codes) aggregated tokens, each beside its text-only baseline, for SEEDS seeds.
#   bash recipes/taste/run_table.sh            # EXP=exp/taste SEEDS="0 1" STEPS=400
set -eu
EXP=${EXP:-exp/taste}
SEEDS=${SEEDS:-0 1}
STEPS=${STEPS:-400}
NPROC=${NPROC:-2}
cd "$(dirname "$0")/../.."
BOOK=$EXP/units/whisper-tiny.en-l4-k128.safetensors
[ -f "$BOOK" ] || python -m westkit.cli units fit general-train --layer 4 --k 128 --out "$BOOK"
for split in general-train general-test; do
  [ -f "$EXP/states/$split/index.json" ] || python -m westkit.data.states "$split" --out "$EXP/states/$split" \
      --model whisper-tiny.en --layer 2 --no-pad-to-30s
done
runs=()
for seed in $SEEDS; do
  for depth in 0 4; do
    out=$EXP/d${depth}_s${seed}
    runs+=("$out")
    [ -f "$out/final_accuracy.txt" ] && continue
    torchrun --nproc_per_node "$NPROC" recipes/taste/train.py --config recipes/taste/conf/tiny.yaml --out "$out" \
      units.codebook="$BOOK" data.states="$EXP/states/general-train" eval_data.states="$EXP/states/general-test" \
      model.rvq_depth=$depth train.seed=$seed train.max_steps=$STEPS train.eval_every=0 train.save_every=$STEPS
  done
done
python recipes/taste/table.py "${runs[@]}"
