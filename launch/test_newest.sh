#!/usr/bin/env bash
# The fast tests against the newest releases that setup.cfg allows (transformers, peft,
# deepspeed, accelerate, ...), instead of the versions pinned in launch/constraints.txt: shows
# whether the pins can be moved forward, and what breaks when a user upgrades by hand.
#   bash launch/test_newest.sh                 fresh venv, then pytest -m "not slow"
#   bash launch/test_newest.sh tests/data -x   other pytest arguments instead
# The venv is $WESTKIT_VENV (default ${TMPDIR:-/tmp}/westkit-newest-venv), made afresh on every
# run so "newest" means newest today; the shared venv is not touched. Models and corpora come
# from $WESTKIT_HOME as usual (set it to an empty folder to rebuild them with the new versions
# too). torch stays at launch/bootstrap.sh's version ($WESTKIT_TORCH, default 2.13.0).
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export WESTKIT_VENV=${WESTKIT_VENV:-${TMPDIR:-/tmp}/westkit-newest-venv}
case "$WESTKIT_VENV" in
  "${WESTKIT_HOME:-$HOME/.cache/westkit}/venv") echo "test_newest.sh: WESTKIT_VENV is the shared venv; point it elsewhere" >&2; exit 2 ;;
esac
if [ -e "$WESTKIT_VENV" ] && [ ! -f "$WESTKIT_VENV/pyvenv.cfg" ]; then
  echo "test_newest.sh: $WESTKIT_VENV exists and is not a venv; not deleting it" >&2; exit 2
fi
rm -rf "$WESTKIT_VENV"
eval "$(WESTKIT_CONSTRAINTS= bash "$repo/launch/bootstrap.sh" --env)"
echo "[test_newest] $(python -c 'import importlib.metadata as m; print(", ".join(f"{d} {m.version(d)}" for d in ("transformers", "peft", "deepspeed", "accelerate", "tokenizers", "huggingface_hub", "safetensors", "webdataset", "numpy")))')" >&2
cd "$repo"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
python -m westkit.cli assets fetch --all
if [ $# -eq 0 ]; then set -- -m "not slow"; fi
exec python -m pytest "$@"
