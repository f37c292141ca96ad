#!/usr/bin/env bash
# WhisTLE end to end at whisper-tiny.en scale on CPU: stage 1 (TLE), then for each target domain
# three decoder adaptations (TTS only, TLE only, TLE + TTS), then one scoring pass of every model
# on every test set. Reproduces the table in docs/whistle.md.
#
#   bash recipes/tle/run_table.sh                 # everything (about an hour on 2 busy CPU cores)
#   STAGE1_STEPS=100 STAGE2_STEPS=40 bash recipes/tle/run_table.sh   # a quicker, noisier table
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
eval "$(bash "$repo/launch/bootstrap.sh" --env)"
cd "$repo"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1

# ---- variables --------------------------------------------------------------------------------
EXP=${EXP:-exp/whistle}                 # everything goes here
STATES=${STATES:-$EXP/states/general-train}  # frozen-encoder states of the paired speech (westkit-encode)
STAGE1_STEPS=${STAGE1_STEPS:-150}       # TLE training steps (stage 1)
STAGE2_STEPS=${STAGE2_STEPS:-60}        # decoder fine-tuning steps per adaptation (stage 2)
STAGE2_LR=${STAGE2_LR:-3.0e-5}
ASTERISK_TEST=${ASTERISK_TEST:-0}       # Asterisk test prompts scored (0: all 280)
ADAPT_SENTENCES=${ADAPT_SENTENCES:-80}  # in-domain sentences adapted on, the same for text and TTS
# -----------------------------------------------------------------------------------------------

data=$(python -c "from westkit.paths import data_dir; print(data_dir())")
corpus() {  # corpus NAME [LIMIT] -> its shard folder (built once)
  python -c "import sys; from westkit.data.corpora import make; print(make(sys.argv[1], int(sys.argv[2]) or None, progress=False))" "$1" "${2:-0}"
}
asterisk_test=$(corpus asterisk-test "$ASTERISK_TEST")
# the first N sentences of each adaptation text; special-tts speaks special-text in the same order
asterisk_text=$(corpus asterisk-adapt "$ADAPT_SENTENCES")
special_text=$(corpus special-text "$ADAPT_SENTENCES")
special_tts=$(corpus special-tts "$ADAPT_SENTENCES")
for c in general-train general-test special-test; do corpus $c >/dev/null; done
python recipes/tle/make_tts.py --text "$asterisk_text" --out "$EXP/asterisk-tts"

# ---- the frozen encoder's states of the paired speech, computed once ---------------------------
[ -f "$STATES/index.json" ] || python -m westkit.data.states general-train --out "$STATES" --model whisper-tiny.en

# ---- stage 1: the TLE, trained on paired general-domain speech ---------------------------------
if [ ! -f "$EXP/tle/tle.safetensors" ]; then
  python recipes/tle/train.py --config recipes/tle/conf/tle_tiny.yaml --out "$EXP/tle" \
    data.states="$STATES" train.max_steps="$STAGE1_STEPS"
fi

# ---- stage 2: three adaptations per domain -----------------------------------------------------
adapt() {  # adapt OUT TEXT_SHARDS TTS_SHARDS TEXT_WEIGHT TTS_WEIGHT (a finished run is kept)
  [ -f "$1/hf/model.safetensors" ] && return 0
  python recipes/whisper/train.py --config recipes/whisper/conf/whistle_stage2.yaml --out "$1" \
    text.tle="$EXP/tle" data.states="$STATES" "text.data.shards=[$2]" "tts.shards=[$3]" \
    mix.text="$4" mix.tts="$5" train.max_steps="$STAGE2_STEPS" train.lr="$STAGE2_LR"
}
adapt "$EXP/audio-only" "$special_text" "$special_tts" 0 0   # control: general speech replay only
for domain in asterisk special; do
  if [ $domain = asterisk ]; then text=$asterisk_text; tts=$EXP/asterisk-tts; else text=$special_text; tts=$special_tts; fi
  adapt "$EXP/$domain-tts"     "$text" "$tts" 0 1
  adapt "$EXP/$domain-tle"     "$text" "$tts" 1 0
  adapt "$EXP/$domain-tle+tts" "$text" "$tts" 1 1
done

# ---- scoring: every model on every test set (one encoder pass per batch for all the models) ------
models=(base=whisper-tiny.en audio-only=$EXP/audio-only/hf)
for run in asterisk-tts asterisk-tle asterisk-tle+tts special-tts special-tle special-tle+tts; do
  models+=("$run=$EXP/$run/hf")
done
python -m westkit.decode.recognize --whisper "${models[@]}" --out "$EXP/table" \
  --tokens-per-second 0 --base-tokens 128 --max-new-tokens 128 --max-batch-seconds 1e9 \
  --shards "$asterisk_test" "$data/special-test" "$data/general-test"
echo "table: $EXP/table/table.md"
