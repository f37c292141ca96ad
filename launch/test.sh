#!/usr/bin/env bash
# The README's test command: set up (launch/bootstrap.sh), then run the whole test suite.
# Extra arguments go to pytest, e.g. `bash launch/test.sh tests/data -x`.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
eval "$(bash "$repo/launch/bootstrap.sh" --env)"
cd "$repo"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
python -m westkit.cli assets fetch --all
exec python -m pytest "$@"
