"""The docs' examples run as written (issue 11, "A user's first hour").

Every shell command in README.md and docs/*.md (each line of a ```bash block, and the lines of
console / untagged blocks that start with ``$ `` or a command such as ``westkit-shards``) is
classified in `CASES` below:

* `Run()`: runs as written (small inputs that stand for the user's own files are made first);
* `Run(tiny=..., replace=...)`: runs with tiny-scale overrides appended (recipe training: one
  step, small batches) or its inputs restricted (a 4-utterance corpus instead of a whole one);
* `Skip(reason)`: cannot run on a CPU-only machine without network (SLURM, GPUs, hub models,
  the whole demo or test suite, placeholders that stand for a user's own paths).

A command that is in the docs but not in `CASES` (or the other way round) fails the quick test,
so every new example gets classified. The slow test runs each doc file's commands in order
(later ones use the outputs of earlier ones, e.g. ``exp/whistle/tle``) in a scratch folder with
the checkout's ``recipes/``, ``ds_configs/``, ``launch/``, ``tests/``, ``benchmarks/`` and
``slurm/`` linked in and an empty ``exp/``; ``~/.cache/westkit`` and ``$HOME/.cache/westkit``
mean ``$WESTKIT_HOME``, ``/tmp/`` means the scratch folder's ``tmp/``. The console scripts
(``westkit``, ``westkit-shards``, ...) and ``python`` are shims that run *this checkout's* code
with the test's interpreter, as CI runs a fresh clone. Doc files run concurrently (the commands
of one file in order).

Measured: 38 run (37 commands and one export), 41 skipped; 17.5 min wall (8.8 min CPU) on the shared 2-core machine
at load average 18-20 from other jobs. The critical path is west.md (three WeST trainings and
five decodes, each loading whisper-tiny.en + SmolLM2, one after the other).
"""
import json
import os
import re
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL_FENCES = {"bash", "sh", "shell", "console", ""}
COMMAND_WORDS = {"westkit", "westkit-shards", "westkit-recognize", "westkit-encode", "python",
                 "python3", "torchrun", "bash", "sbatch", "srun", "sudo", "source", "export", "cd"}
LINKED = ["recipes", "ds_configs", "launch", "tests", "benchmarks", "slurm"]
CONSOLE_SCRIPTS = {"westkit": "westkit.cli", "westkit-shards": "westkit.data.shards_cli",
                   "westkit-recognize": "westkit.decode.recognize", "westkit-encode": "westkit.data.states"}
TIMEOUT_S = 900          # one command


@dataclass(frozen=True)
class Run:
    tiny: str = ""                    # appended to the command
    replace: tuple = ()               # (old, new) text replacements in the command
    rc: int = 0                       # expected exit status
    creates: str = ""                 # a path (relative to the scratch folder) it must make
    fresh: bool = False               # starts a new sequence: a new scratch folder from here on
    prints: str = ""                  # text its output must contain


@dataclass(frozen=True)
class Skip:
    reason: str


# tiny scale for the recipes: one step, no saves or evaluations in between, small batches
TRAIN = "train.max_steps=1 train.warmup_steps=0 train.save_every=0 train.eval_every=0 train.log_every=1"
WEST_TINY = f"{TRAIN} data.max_batch_size=2 data.num_workers=0 eval.batches=1 eval.max_new_tokens=8 eval_data.max_batch_size=2"
TLE_TINY = f"{TRAIN} data.max_batch_size=2 data.num_workers=0 stage1.eval_batches=1 eval_data.max_batch_size=2"
FT_TINY = (f"{TRAIN} text.data.max_batch_size=2 data.max_batch_size=2 data.num_workers=0 "
           "tts.max_batch_size=2 tts.num_workers=0")
SMALL = "$WESTKIT_HOME/data/general-train-limit8"   # paired speech for the states example
DEC = "--max-new-tokens 8"           # decoding: a bounded number of tokens per utterance
TEST4 = (("general-test", "$WESTKIT_HOME/data/general-test-limit4"),)
TOY = "--steps 2"

SUITE = "the test suite itself (CI runs it; this test would run it twice)"
BOOTSTRAP = "sets up the machine (Debian packages, venv); this test runs in the venv it made"
SLURM = "needs a SLURM cluster (tests/slurm runs the scripts on the local test cluster)"
CLUSTER = "starts SLURM daemons as root (tests/slurm does, in a fixture)"
PLACEHOLDER = "a synopsis with placeholders (...), not a command"
BENCH = "a benchmark that measures for minutes; its figures are in the docs beside it"
INTEROP = "the user's own manifests; tests/data/test_interop.py runs this importer on data made there"
TASTE = "TASTE training (minutes); tests/recipes/test_taste_recipe.py runs the recipe at tiny scale on 2 processes"
WHISPER = "Whisper fine-tuning (minutes per step here); tests/recipes/test_whisper_recipe.py runs the recipe at tiny scale"
TALK = ("the user's recording; tests/test_cli_whisper.py runs transcribe --word-timestamps / --format / "
        "--out-dir / --backend ctranslate2 on a 3-minute recording of real speech")
ASR_CLI = "tests/test_cli_whisper.py runs train/transcribe/evaluate/compare on real speech at tiny scale"

CASES: dict[str, dict[str, Run | Skip]] = {
    "README.md": {
        "bash launch/demo.sh": Skip("the whole demo: 11-26 min (tests/recipes and tests/test_recipe.py run its parts at tiny scale)"),
        "bash launch/test.sh": Skip(SUITE),
    },
    "assets.md": {
        "westkit assets list": Run(prints="whisper-tiny.en"),
        "westkit assets fetch smollm2-135m-instruct": Run(prints="smollm2-135m-instruct\t"),
        "source <(bash launch/bootstrap.sh --env)": Skip(BOOTSTRAP),
        "OMP_NUM_THREADS=1 python -m pytest tests/assets -q": Skip(SUITE),
        'OMP_NUM_THREADS=1 python -m pytest tests/assets -q -m "not slow"': Skip(SUITE),
    },
    "data.md": {  # the user's own inputs are made by _inputs_data (two utterances each)
        "westkit-shards data/train.jsonl -o shards/train": Run(creates="shards/train/index.json"),
        "westkit-shards my_dataset/ -o shards/train": Run(replace=(("shards/train", "shards/csv_train"),),
                                                        creates="shards/csv_train/index.json"),
        "westkit-shards recordings/ -o shards/train --format dir": Run(
            replace=(("shards/train", "shards/dir_train"),), creates="shards/dir_train/index.json"),
        "westkit-shards LibriSpeech/train-clean-100 -o shards/ls100 --prefix ls100": Run(
            creates="shards/ls100/ls100-000000.tar"),
        "westkit-shards data/train -o shards/kaldi_train": Run(creates="shards/kaldi_train/index.json"),
        "westkit-shards domain_sentences.txt -o shards/domain_text --lang en": Run(creates="shards/domain_text/index.json"),
        "westkit-shards a.jsonl b.jsonl -o shards/all --shard-size 512M --workers 8 --strict": Run(
            creates="shards/all/index.json"),
        "westkit-shards train.jsonl -o out --workers 2": Run(
            creates="out/rejects.jsonl",
            prints="wrote 2 samples (3.0 s audio, 0 text-only) in 1 shards to out; rejected 5 (duplicate_key=1, "
                   "empty_text=1, missing_file=1, nonfinite_audio=1, truncated_audio=1; see out/rejects.jsonl)"),
        "cat out/rejects.jsonl": Run(prints='"reason": "duplicate_key", "detail": "key \'a\' seen before"'),
        "westkit-shards train.jsonl -o out2 --strict": Run(rc=2, prints="train.jsonl:3: missing_file: missing.wav"),
        'python -c "from westkit.data import corpora; [print(corpora.make(n)) for n in corpora.NAMES]"': Run(
            prints="general-train"),
        "OMP_NUM_THREADS=1 python benchmarks/data_loader.py --threads 1": Run(tiny="--shards $WESTKIT_HOME/data/general-test-limit4"),
        "OMP_NUM_THREADS=1 python -m pytest tests/data -q": Skip(SUITE),
        "westkit-shards data/cuts_train.jsonl.gz -o shards/train": Skip(INTEROP),
        "westkit-shards data/lhotse_manifests/ -o shards/train": Skip(INTEROP),
        "westkit-shards data/train_manifest.json -o shards/train": Skip(INTEROP),
        "westkit-shards data/hf_saved/train -o shards/train": Skip(INTEROP),
        "westkit-shards talks/ -o shards/talks": Skip(INTEROP),
        "westkit-shards data/meetings -o shards/meetings": Skip(INTEROP),
        'SLICES=16 CPUS_PER_TASK=8 SBATCH_OPTS="--partition=cpu --time=02:00:00" bash slurm/shards.sh '
        "data/train.jsonl -o /shared/shards/train --shard-size 512M": Skip(
            SLURM + " (tests/slurm/test_prepare_shards.py runs it on the local cluster)"),
        "OMP_NUM_THREADS=1 python benchmarks/streaming.py": Skip(BENCH),
    },
    "slurm.md": {
        "cd westkit": Skip("the quick start submits to SLURM; this test already runs from a checkout"),
        "source <(bash launch/bootstrap.sh --env)": Skip(BOOTSTRAP),
        "sbatch slurm/west.sh": Skip(SLURM + "; 2 nodes x 8 GPUs"),
        "sbatch slurm/tle.sh": Skip(SLURM + "; 8 GPUs"),
        "sbatch slurm/toy.sh": Skip(SLURM),
        "sbatch slurm/recognize.sh --west exp/west_large --shards /data/test --out exp/dec": Skip(
            SLURM + "; tests/slurm runs slurm/recognize.sh on 2 nodes against one process"),
        "python launch/submit.py --nodes 2 --gpus-per-node 8 --partition gpu --time 720 recipes/west/train.py "
        "--config recipes/west/conf/large.yaml --out /shared/exp/west1": Skip(SLURM + "; GPUs, large.yaml's hub models"),
        "CONFIG=recipes/west/conf/tiny.yaml OUT_DIR=/shared/exp/west_tiny sbatch --partition=gpu --account=speech "
        "--nodes=4 --time=48:00:00 slurm/west.sh train.lr=1e-4": Skip(SLURM + "; a site's partition and account"),
        "STAGES=2 OUT_DIR=/shared/exp/whistle sbatch slurm/tle.sh 'text.data.shards=[/shared/shards/my-text]'": Skip(
            SLURM + "; the user's own text shards"),
        "sbatch --gpus-per-node=0 --cpus-per-task=16 slurm/toy.sh": Skip(SLURM),
        "python launch/submit.py [resources] [job options] SCRIPT [SCRIPT ARGS...]": Skip(PLACEHOLDER),
        "python launch/submit.py --nodes 2 --gpus-per-node 8 --partition gpu --time 600 --sweep train.lr=1e-4,3e-4 "
        "--sweep train.warmup_steps=100,500 recipes/west/train.py --config recipes/west/conf/large.yaml "
        "--out '/shared/exp/west_{sweep}'": Skip(SLURM + "; GPUs, large.yaml's hub models"),
        "python launch/submit.py --sweep=--lr=0.01,0.03 tests/train/toy_recipe.py --out-dir 'exp/toy_{sweep}'": Skip(
            SLURM + " (a job array; without --local submit.py submits to SLURM)"),
        "python launch/submit.py --local tests/train/toy_recipe.py --out-dir /tmp/toy": Run(tiny=TOY, creates="tmp/toy"),
        "sudo slurm/local/cluster.sh start": Skip(CLUSTER),
        'eval "$(slurm/local/cluster.sh env)"': Skip(CLUSTER),
        "srun -N2 hostname; sinfo -N": Skip(SLURM),
        "sbatch --gpus-per-node=0 --cpus-per-task=1 --time=10 slurm/toy.sh": Skip(SLURM),
        "slurm/local/cluster.sh status": Skip(CLUSTER),
        "sudo slurm/local/cluster.sh stop": Skip(CLUSTER),
        "sudo slurm/local/cluster.sh reset": Skip(CLUSTER),
        "OMP_NUM_THREADS=1 python -m pytest tests/slurm -q": Skip(SUITE),
        'OMP_NUM_THREADS=1 python -m pytest tests/slurm -q -m "not slow"': Skip(SUITE),
    },
    "training.md": {
        "bash launch/torchrun.sh recipes/west/train.py --config recipes/west/conf/tiny.yaml --out exp/west_tiny": Run(
            tiny=WEST_TINY, creates="exp/west_tiny/trainable.safetensors"),
        "bash launch/torchrun.sh --nproc 2 tests/train/toy_recipe.py --out-dir /tmp/toy --steps 100": Run(tiny=TOY),
        "torchrun --nproc_per_node 2 tests/train/toy_recipe.py --out-dir /tmp/toy": Run(tiny=TOY),
        "python tests/train/toy_recipe.py --out-dir /tmp/toy1": Run(tiny=TOY, creates="tmp/toy1/checkpoints/step_00000002"),
        "srun --ntasks-per-node=1 bash launch/torchrun.sh recipes/west/train.py ...": Skip(SLURM),
        "srun --ntasks-per-node=1 bash launch/torchrun.sh recipes/west/train.py ... || {": Skip(SLURM + " (an sbatch script's body)"),
        '[ $? -eq 75 ] && scontrol requeue "$SLURM_JOB_ID"; }': Skip(SLURM + " (an sbatch script's body)"),
        # exp/run1 stands for any run: the toy run above (2 steps) instead of step 300
        "python -m westkit.train.export exp/run1/checkpoints exp/run1/step300.safetensors --tag step_00000300": Run(
            replace=(("exp/run1/checkpoints", "/tmp/toy/checkpoints"), ("step_00000300", "step_00000002")),
            creates="exp/run1/step300.safetensors"),
        "OMP_NUM_THREADS=1 python -m pytest tests/train/test_engine_units.py -q": Skip(SUITE),
        "OMP_NUM_THREADS=1 python -m pytest tests/train/test_engine_distributed.py -q": Skip(SUITE),
    },
    "west.md": {
        "source <(bash launch/bootstrap.sh --env)": Skip(BOOTSTRAP),
        "export HF_HUB_OFFLINE=1 OMP_NUM_THREADS=2": Run(),
        "python recipes/west/train.py --config recipes/west/conf/tiny.yaml --out exp/west_tiny": Run(
            tiny=WEST_TINY, creates="exp/west_tiny/trainable.safetensors"),
        "torchrun --nproc_per_node 2 recipes/west/train.py --config recipes/west/conf/tiny.yaml --out exp/west_tiny_2p": Run(
            tiny=WEST_TINY, creates="exp/west_tiny_2p/trainable.safetensors"),
        "python recipes/west/train.py --config recipes/west/conf/tiny.yaml --out exp/w train.max_steps=20 "
        "model.projector.kind=stack": Run(tiny=WEST_TINY, creates="exp/w/trainable.safetensors"),
        "westkit-recognize --west exp/west_tiny --shards general-test --out exp/west_tiny/dec": Run(
            tiny=DEC, replace=TEST4, creates="exp/west_tiny/dec/table.md"),
        "westkit-recognize --west exp/west_tiny --shards general-test --out exp/dec": Run(tiny=DEC, replace=TEST4),
        "westkit-recognize --west exp/west_tiny --jsonl test.jsonl --out exp/dec --beam 4": Run(tiny=DEC),
        "westkit-recognize --west exp/west_tiny --audio a.wav b.flac --out exp/dec": Run(tiny=DEC),
        "westkit-recognize --whisper whisper-tiny.en --shards general-test --out exp/dec_whisper": Run(
            tiny=DEC, replace=TEST4, creates="exp/dec_whisper/table.md"),
        "westkit-recognize --whisper base=whisper-tiny.en tle=exp/x/hf --shards special-test general-test --out exp/eval": Skip(
            "exp/x/hf stands for a stage-2 output (whistle.md makes and decodes one)"),
        "westkit-recognize --west run/ --set model.llm=/models/qwen2-1.5b-instruct --shards ... --out ...": Skip(
            PLACEHOLDER + "; a run and a model the user has elsewhere"),
        "python benchmarks/west_step_time.py --batches 2": Skip(
            "a benchmark against the v1 code: 1-1.5 min per batch on 2 cores"),
        "python benchmarks/recognize_batching.py": Skip("a benchmark: 16 utterances at batch 16 and 1, ~2.5 min"),
        "OMP_NUM_THREADS=1 python -m pytest tests/models/test_projector.py tests/models/test_west.py "
        "tests/models/test_west_whisper.py tests/models/test_encoders.py tests/models/test_west_prompts.py "
        "tests/decode/test_search.py tests/decode/test_guards.py tests/decode/test_recognize.py "
        "tests/decode/test_recognize_ranks.py tests/test_config_base.py tests/recipes/test_west_recipe.py "
        '-m "not slow" -q': Skip(SUITE),
        "OMP_NUM_THREADS=1 python -m pytest tests/models/test_west_lora_export.py -q": Skip(SUITE),
        "OMP_NUM_THREADS=1 python -m pytest tests/models/test_west_learns.py tests/decode/test_recognize_ranks.py "
        "tests/recipes/test_west_recipe.py -m slow -q": Skip(SUITE),
        "python benchmarks/west_packing.py --batches 4": Skip(BENCH),
        "python recipes/west/train.py --config recipes/west/conf/tiny_context_rare.yaml --out exp/west_rare": Skip(
            "1200 training steps, about 70 min on 2 cores; tests/recipes/test_west_recipe.py builds the config"),
        "python benchmarks/west_context.py --west exp/west_rare --out exp/west_rare/context": Skip(
            BENCH + "; it needs the trained run above"),
    },
    "taste.md": {
        "torchrun --nproc_per_node 2 recipes/taste/train.py --config recipes/taste/conf/tiny.yaml --out exp/taste_tiny": Skip(TASTE),
        "python -m westkit.data.states general-train --out exp/taste/states/general-train --model whisper-tiny.en "
        "--layer 2 --no-pad-to-30s": Skip("encodes all 436 utterances; tests/data/test_units.py runs --layer on small shards"),
        "python -m westkit.data.states general-test --out exp/taste/states/general-test --model whisper-tiny.en "
        "--layer 2 --no-pad-to-30s": Skip("as above, on the test set"),
        "torchrun --nproc_per_node 2 recipes/taste/train.py --config recipes/taste/conf/tiny.yaml --out exp/taste_tiny "
        "data.states=exp/taste/states/general-train eval_data.states=exp/taste/states/general-test": Skip(TASTE),
    },
    "timestamps.md": {
        "westkit transcribe talk.wav --word-timestamps --json": Skip(TALK),
        "westkit transcribe talk.wav --format srt > talk.srt": Skip(TALK),
        "westkit transcribe recordings/ --out-dir exp/subs": Skip(TALK),
        "westkit transcribe talk.wav --backend ctranslate2 --word-timestamps": Skip(TALK),
        "python benchmarks/backends.py --utterances 99 --json exp/backends.json": Skip(BENCH),
        "python benchmarks/backends.py --utterances 99 --word-timestamps": Skip(BENCH),
        "westkit-recognize --whisper whisper-tiny.en --audio talk.wav --out exp/talk --word-timestamps": Skip(
            "the user's recording; tests/decode/test_timestamps.py runs --word-timestamps on 55 s of real speech"),
        "westkit-recognize --whisper whisper-tiny.en --jsonl test.jsonl --out exp/dec --min-confidence 0.7": Skip(
            "the user's jsonl; tests/decode/test_guards.py and test_timestamps.py run the confidence guard"),
        "python -m westkit.decode.align_heads --west exp/west_ts": Skip(
            "needs the 28-minute WeST run below; tests/decode/test_west_timestamps.py runs the selection on planted attention"),
        "westkit-recognize --west exp/west_ts --audio talk.wav --out exp/talk_west --word-timestamps": Skip(
            "the user's recording and a trained WeST run; test_west_timestamps.py runs decode_words and the long-form path"),
        "python recipes/west/train.py --config recipes/west/conf/tiny.yaml --out exp/west_ts \"data.shards=[asterisk-train, "
        "general-train]\" data.max_batch_seconds=20 data.max_batch_size=8 train.max_steps=150 train.lr=2.0e-3 "
        "train.warmup_steps=10 train.log_every=5 train.eval_every=0 train.save_every=50 eval.batches=1": Skip(
            BENCH + " (the 28-minute training of the table's WeST run; west.md runs this recipe at tiny scale)"),
        "westkit-recognize --west west=exp/west_ts --shards general-test $WESTKIT_HOME/data/asterisk-test-limit60 "
        "--out exp/west_ts/dec": Skip(BENCH + " (scores the WeST run above)"),
        "python benchmarks/timestamps.py --out exp/ts_west --west exp/west_ts --sentences 6 --voices en-us en-gb "
        "en-gb-scotland en-us+f3 --methods westkit westkit-nosnap forced forced-nosnap forced-even forced-even-nosnap": Skip(BENCH),
        "python benchmarks/timestamps.py --out exp/ts_base --model whisper-base --language en --sentences 6 --voices "
        "en-us en-gb en-gb-scotland en-us+f3 --methods westkit westkit-nosnap transformers": Skip(BENCH),
    },
    "whisper.md": {
        "python recipes/whisper/train.py --config recipes/whisper/conf/tiny.yaml --out exp/whisper/tiny_lora "
        "whisper.strategy=lora": Skip(WHISPER),
        "westkit train recipes/whisper/conf/tiny.yaml --strategy qlora --no-freeze-encoder --grad-ckpt "
        "train.max_steps=50": Skip(ASR_CLI),
        "westkit train recipes/whisper/conf/large-v3.yaml --nproc 8 --out exp/whisper/large data.shards=[/data/train]": Skip(
            "8 GPUs, a hub model and the user's own shards"),
        "westkit transcribe call.wav recordings/ --model exp/whisper/tiny_lora --json": Skip(ASR_CLI),
        "westkit evaluate asterisk-test --model exp/whisper/tiny_lora": Skip(ASR_CLI),
        "westkit compare asterisk-test --models base=whisper-tiny.en ft=exp/whisper/tiny_lora --plot wer.png": Skip(ASR_CLI),
        'python benchmarks/whisper_results.py --out exp/whisper_results --steps 30 --seeds 1 2 --runs lora '
        '"full (encoder frozen)"': Skip(BENCH),
        'python benchmarks/whisper_results.py --out exp/whisper_results --steps 30 --seeds 0 --runs '
        '"full (encoder trained)"': Skip(BENCH),
        "python recipes/whisper/train.py --config recipes/whisper/conf/tiny.yaml --out exp/whisper_results/lora_seed_1 "
        "whisper.strategy=lora train.seed=1 data.seed=1 train.max_steps=30 train.eval_every=0 train.save_every=0 "
        "train.warmup_steps=3 data.max_batch_size=8 eval_data=null train.log_every=5": Skip(
            BENCH + " (one run of the results table)"),
        "westkit evaluate $WESTKIT_HOME/data/asterisk-test-limit60 --model exp/whisper_results/lora_seed_1 --worst 3": Skip(
            BENCH + " (scores the run above)"),
        "westkit evaluate $WESTKIT_HOME/data/general-test-limit60 --model exp/whisper_results/lora_seed_1 --worst 3": Skip(
            BENCH + " (scores the run above)"),
        "westkit compare $WESTKIT_HOME/data/asterisk-test-limit60 --models base=whisper-tiny.en "
        "full=exp/whisper_results/full_encoder_frozen_seed_1 lora=exp/whisper_results/lora_seed_1 --plot wer.png": Skip(
            BENCH + " (scores the runs above)"),
        "python benchmarks/whisper_strategies.py --steps 2 --out exp/whisper_strategies.json": Skip(BENCH),
        'python benchmarks/whisper_strategies.py --steps 2 --only "full, encoder frozen" --out '
        "exp/whisper_strategies_row1.json": Skip(BENCH + " (the first row again, alone)"),
    },
    "whistle.md": {
        "python recipes/tle/train.py --config recipes/tle/conf/tle_tiny.yaml --out exp/whistle/tle": Run(
            tiny=TLE_TINY, creates="exp/whistle/tle/tle.safetensors"),
        "bash launch/torchrun.sh --nproc 2 recipes/tle/train.py --config recipes/tle/conf/tle_tiny.yaml "
        "--out exp/whistle/tle_2p": Run(tiny=TLE_TINY, creates="exp/whistle/tle_2p/tle.safetensors"),
        "python recipes/whisper/train.py --config recipes/whisper/conf/whistle_stage2.yaml --out exp/whistle/special-tle "
        "text.tle=exp/whistle/tle text.data.shards=[special-text]": Run(
            tiny=FT_TINY, creates="exp/whistle/special-tle/hf/model.safetensors"),
        "westkit-recognize --whisper exp/whistle/special-tle/hf --shards special-test --out exp/dec/special-tle": Run(
            tiny=DEC, replace=(("special-test", "$WESTKIT_HOME/data/special-test-limit4"),)),
        "python recipes/tle/train.py --config recipes/tle/conf/tle_base_multilingual.yaml --out exp/whistle-ml/tle": Run(
            tiny=TLE_TINY, creates="exp/whistle-ml/tle/tle.safetensors"),
        "python recipes/whisper/train.py --config recipes/whisper/conf/whistle_stage2_multilingual.yaml "
        "--out exp/whistle-ml/special-tle text.tle=exp/whistle-ml/tle": Run(
            tiny=f"{FT_TINY} mix.tts=0", creates="exp/whistle-ml/special-tle/hf/model.safetensors"),
        "westkit-recognize --whisper base=whisper-base adapted=exp/whistle-ml/special-tle/hf --shards special-test-de "
        "special-test-es special-test --out exp/whistle-ml/table": Run(
            tiny=DEC, replace=((" special-test --out", " $WESTKIT_HOME/data/special-test-limit4 --out"),),
            creates="exp/whistle-ml/table/table.md"),
        "python benchmarks/whistle_results.py --out exp/w14 --domain special --tle exp/whistle/tle-ce1.0 --seeds 0 1 2": Skip(
            "the three-seed sweep: 18 stage-2 runs and 3 scorings, about 80 min on 2 cores"),
        "python benchmarks/whistle_results.py --out exp/w14 --domain asterisk --tle exp/whistle/tle-ce1.0 --seeds 0 1 2": Skip(
            "the three-seed sweep: 12 stage-2 runs and 3 scorings, about 50 min on 2 cores"),
        "bash recipes/tle/run_table.sh": Skip("the whole results table: about an hour (its steps run one by one below)"),
        # the table's steps, one by one (the corpora named by path are built first, by _inputs_whistle):
        # run_table.sh's own sequence, in a fresh folder (it reuses the names exp/whistle/tle and
        # exp/whistle/special-tle for runs of another config, which the recipes refuse to continue)
        "python recipes/tle/make_tts.py --text ~/.cache/westkit/data/asterisk-adapt-limit80 --out exp/whistle/asterisk-tts": Run(
            tiny="--limit 2", creates="exp/whistle/asterisk-tts/index.json", fresh=True),
        "python -m westkit.data.states general-train --out exp/whistle/states/general-train --model whisper-tiny.en": Run(
            replace=(("states general-train", f"states {SMALL}"),), creates="exp/whistle/states/general-train/index.json"),
        "python recipes/tle/train.py --config recipes/tle/conf/tle_tiny.yaml --out exp/whistle/tle "
        "data.states=exp/whistle/states/general-train train.max_steps=150": Run(
            tiny=f"{TLE_TINY} data.shards=[{SMALL}]"),
        "python recipes/whisper/train.py --config recipes/whisper/conf/whistle_stage2.yaml --out exp/whistle/special-tle "
        "text.tle=exp/whistle/tle data.states=exp/whistle/states/general-train "
        '"text.data.shards=[$HOME/.cache/westkit/data/special-text-limit80]" '
        '"tts.shards=[$HOME/.cache/westkit/data/special-tts-limit80]" mix.text=1 mix.tts=0 '
        "train.max_steps=60 train.lr=3.0e-5": Run(tiny=f"{FT_TINY} data.shards=[{SMALL}]"),
        "westkit-recognize --whisper base=whisper-tiny.en special-tle=exp/whistle/special-tle/hf ... --shards "
        "~/.cache/westkit/data/asterisk-test ~/.cache/westkit/data/special-test ~/.cache/westkit/data/general-test "
        "--tokens-per-second 0 --base-tokens 128 --max-new-tokens 128 --max-batch-seconds 1e9 --out exp/whistle/table": Run(
            tiny=DEC, creates="exp/whistle/table/table.md",
            # "..." stands for the other adapted models; 4 utterances of each test set
            replace=((" ... ", " "), *((f"data/{s}", f"data/{s}-limit4") for s in ("asterisk-test", "special-test", "general-test")))),
    },
}


# ---- extraction -------------------------------------------------------------------------------
def extract(doc: Path) -> list[tuple[int, str]]:
    """(line number, command) for every shell command in the doc's fenced blocks."""
    out, fence, pending = [], None, None
    for number, line in enumerate(doc.read_text().splitlines(), 1):
        stripped = line.strip()
        if stripped.startswith("```"):
            fence = stripped[3:].strip() if fence is None else None
            continue
        if fence is None or fence not in SHELL_FENCES:
            continue
        if pending is not None:
            start, text = pending
            line = text + " " + stripped
        else:
            start = number
            if fence != "bash":  # console / untagged: only lines that are commands
                if stripped.startswith("$ "):
                    stripped = stripped[2:]
                elif not _starts_with_command(stripped):
                    continue
            line = stripped
            if not line or line.startswith("#"):
                continue
        if line.endswith("\\"):
            pending = (start, line[:-1].rstrip())
            continue
        pending = None
        line = re.sub(r"\s+#(\s.*)?$", "", line)             # a trailing comment
        out.append((start, " ".join(line.split())))
    return out


def _starts_with_command(line: str) -> bool:
    words = line.split()
    while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):  # VAR=value prefixes
        words = words[1:]
    return bool(words) and words[0] in COMMAND_WORDS


def test_every_docs_command_is_classified():
    """Each command in the docs is run or skipped with a reason, and the table names no
    command the docs no longer have (quick: no command runs)."""
    found = {doc.name: {cmd for _, cmd in extract(doc)} for doc in DOCS}
    unclassified = [f"{doc}:{line}: {cmd}" for doc_path in DOCS for line, cmd in extract(doc_path)
                    for doc in [doc_path.name] if cmd not in CASES.get(doc, {})]
    stale = [f"{doc}: {cmd}" for doc, cases in CASES.items() for cmd in cases if cmd not in found.get(doc, ())]
    assert not unclassified, ("docs commands neither run nor skipped (add each to CASES in "
                              "tests/test_docs_examples.py):\n" + "\n".join(unclassified))
    assert not stale, "CASES names commands that are not in the docs any more:\n" + "\n".join(stale)
    runs = sum(isinstance(c, Run) for cases in CASES.values() for c in cases.values())
    assert runs >= 30


# ---- the inputs that stand for a user's own files ------------------------------------------------
def _wav(path: Path, seconds: float, value=None, subtype="PCM_16") -> Path:
    import soundfile as sf
    t = np.arange(int(16000 * seconds)) / 16000
    audio = (0.1 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    if value is not None:
        audio[len(audio) // 2] = value
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, audio, 16000, subtype=subtype, format=path.suffix[1:].upper())
    return path


def _inputs_data(d: Path) -> None:
    from westkit.data import corpora
    corpora.make("general-test", 4)                   # the benchmark's input
    # data/train.jsonl, my_dataset/metadata.csv, recordings/, LibriSpeech, Kaldi, text, a/b.jsonl
    _wav(d / "data/wavs/u1.wav", 1.0), _wav(d / "data/wavs/u2.wav", 1.5)
    (d / "data/train.jsonl").write_text('{"wav": "wavs/u1.wav", "txt": "hello there"}\n'
                                        '{"wav": "wavs/u2.wav", "txt": "good morning", "speaker": "s1"}\n')
    _wav(d / "my_dataset/one.wav", 1.0), _wav(d / "my_dataset/two.wav", 1.2)
    (d / "my_dataset/metadata.csv").write_text("file_name,transcription\none.wav,hello there\ntwo.wav,good morning\n")
    for i, text in enumerate(["hello there", "good morning"]):
        _wav(d / f"recordings/day{i}/clip{i}.wav", 1.0)
        (d / f"recordings/day{i}/clip{i}.txt").write_text(text + "\n")
    chapter = d / "LibriSpeech/train-clean-100/19/198"
    _wav(chapter / "19-198-0000.flac", 1.0), _wav(chapter / "19-198-0001.flac", 1.3)
    (chapter / "19-198.trans.txt").write_text("19-198-0000 HELLO THERE\n19-198-0001 GOOD MORNING\n")
    kaldi = d / "data/train"
    kaldi.mkdir(parents=True)
    (kaldi / "wav.scp").write_text(f"k1 {d}/data/wavs/u1.wav\nk2 {d}/data/wavs/u2.wav\n")
    (kaldi / "text").write_text("k1 hello there\nk2 good morning\n")
    (kaldi / "utt2spk").write_text("k1 s1\nk2 s2\n")
    (d / "domain_sentences.txt").write_text("Apixaban is an anticoagulant.\nBetelgeuse is a red supergiant.\n")
    (d / "a.jsonl").write_text('{"key": "a1", "wav": "data/wavs/u1.wav", "txt": "hello there"}\n')
    (d / "b.jsonl").write_text('{"key": "b1", "wav": "data/wavs/u2.wav", "txt": "good morning"}\n')
    # the bad-input example: two good lines, then one of each problem its output lists
    _wav(d / "a.wav", 1.0), _wav(d / "b.wav", 2.0), _wav(d / "nan.wav", 0.5, value=np.nan, subtype="FLOAT")
    full = _wav(d / "full.wav", 2.0).read_bytes()
    (d / "cut.wav").write_bytes(full[:len(full) // 2])
    rows = [("a", "a.wav", "first"), ("b", "b.wav", "second"), ("missing", "missing.wav", "gone"),
            ("nan", "nan.wav", "not a number"), ("cut", "cut.wav", "cut short"), ("a", "a.wav", "again"),
            ("b2", "b.wav", " ")]
    (d / "train.jsonl").write_text("".join(json.dumps({"key": k, "wav": w, "txt": t}) + "\n" for k, w, t in rows))


def _inputs_west(d: Path) -> None:
    from westkit.data import corpora
    corpora.make("general-test", 4)
    _wav(d / "a.wav", 1.0), _wav(d / "b.flac", 1.5)
    (d / "test.jsonl").write_text('{"key": "t1", "wav": "a.wav", "txt": "hello there"}\n'
                                  '{"key": "t2", "wav": "b.flac", "txt": "good morning"}\n')


def _inputs_whistle(d: Path) -> None:
    from westkit.data import corpora
    for name, limit in [("asterisk-adapt", 80), ("special-text", 80), ("special-tts", 80), ("general-train", 8),
                        ("asterisk-test", 4), ("special-test", 4), ("general-test", 4)]:
        corpora.make(name, limit)


INPUTS = {"data.md": _inputs_data, "west.md": _inputs_west, "whistle.md": _inputs_whistle}


# ---- running -----------------------------------------------------------------------------------
def _scratch(root: Path, name: str) -> tuple[Path, dict]:
    d = root / name
    (d / "exp").mkdir(parents=True)
    (d / "tmp").mkdir()
    for name in LINKED:
        (d / name).symlink_to(ROOT / name)
    shims = root / "bin"
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               OMP_NUM_THREADS="1", WESTKIT_REPO=str(ROOT),
               PATH=f"{shims}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    env.setdefault("WESTKIT_HOME", str(Path.home() / ".cache" / "westkit"))
    return d, env


def _prepare(cmd: str, case: Run, d: Path, env: dict) -> str:
    for old, new in case.replace:
        assert old in cmd, f"replacement {old!r} not in {cmd!r}"
        cmd = cmd.replace(old, new)
    home = env["WESTKIT_HOME"]
    cmd = cmd.replace("~/.cache/westkit", home).replace("$HOME/.cache/westkit", home)
    cmd = re.sub(r"(?<![\w/.])/tmp/", f"{d}/tmp/", cmd)
    return f"{cmd} {case.tiny}".strip()


def _run_doc(doc: Path, root: Path) -> tuple[list[str], list[str]]:
    """Runs the doc's Run commands in order; returns (failures, timing lines)."""
    d, env = _scratch(root, doc.stem)
    if doc.name in INPUTS:
        INPUTS[doc.name](d)
    sequence = 0
    failures, times = [], []
    for line, cmd in extract(doc):
        case = CASES[doc.name][cmd]
        if isinstance(case, Skip):
            continue
        where = f"{doc.relative_to(ROOT)}:{line}: {cmd}"
        if case.fresh:
            sequence += 1
            d, _ = _scratch(root, f"{doc.stem}{sequence}")
        full = _prepare(cmd, case, d, env)
        t0 = time.monotonic()
        if full.startswith("export "):  # applies to the commands after it, as in a shell
            env.update(a.split("=", 1) for a in shlex.split(full)[1:])
            continue
        try:
            p = subprocess.run(["bash", "-c", full], cwd=d, env=env, capture_output=True, text=True,
                               timeout=TIMEOUT_S)
            output, rc = p.stdout + p.stderr, p.returncode
        except subprocess.TimeoutExpired as e:
            output, rc = f"timed out after {TIMEOUT_S} s: {e.stdout or ''}{e.stderr or ''}", None
        times.append(f"{time.monotonic() - t0:6.1f} s  {where}")
        problems = []
        if rc != case.rc:
            problems.append(f"exit status {rc}, expected {case.rc}")
        if case.creates and not (d / case.creates).exists():
            problems.append(f"did not make {case.creates}")
        if case.prints and case.prints not in output:
            problems.append(f"did not print {case.prints!r}")
        if problems:
            lines = output.replace("\r", "\n").splitlines()
            errors = [x for x in lines[:-25] if "error" in x.lower() and "Traceback" not in x][-5:]
            tail = "\n".join(errors + lines[-25:])
            failures.append(f"{where}\n  ran: {full}\n  in: {d}\n  " + "; ".join(problems) + f"\n{tail}\n")
    return failures, times


@pytest.mark.slow
def test_docs_examples_run(tmp_path):
    """Every Run command of every doc file exits as expected (doc files concurrently, the
    commands of one file in order); a failure names the doc file, line and command."""
    t0 = time.monotonic()
    shims = tmp_path / "bin"
    shims.mkdir()
    scripts = {name: f"-m {module}" for name, module in CONSOLE_SCRIPTS.items()} | {"python": "", "python3": ""}
    for name, args in scripts.items():
        (shims / name).write_text(f'#!/bin/sh\nexec {sys.executable} {args} "$@"\n')
        (shims / name).chmod(0o755)
    with ThreadPoolExecutor(max_workers=len(DOCS)) as pool:
        results = list(pool.map(lambda doc: _run_doc(doc, tmp_path), DOCS))
    failures = [f for fails, _ in results for f in fails]
    print("\n".join(t for _, times in results for t in times) + f"\n{time.monotonic() - t0:6.1f} s  in all")
    assert not failures, f"{len(failures)} docs examples failed:\n\n" + "\n".join(failures)
