"""`westkit train / transcribe / evaluate / compare`: user errors are one line before any model
loads; real whisper-tiny.en on real telephone speech (Asterisk prompts) for the decoding ones."""
import json
import shutil
from pathlib import Path

import pytest

from westkit import asr, cli

ASTERISK = Path("/usr/share/asterisk/sounds/en")
PROMPTS = {"agent-pass": "Please enter your password, followed by the pound key.",
           "auth-thankyou": "Thank you.", "conf-onlyperson": "You are currently the only person in this conference."}


@pytest.fixture()
def pairs(tmp_path, monkeypatch):
    """A folder of audio + .txt pairs (real speech); WESTKIT_HOME in tmp for the cached shards."""
    if not ASTERISK.is_dir():
        pytest.skip("asterisk-core-sounds-en-g722 not installed")
    monkeypatch.setenv("WESTKIT_HOME", str(tmp_path / "home"))
    folder = tmp_path / "pairs"
    folder.mkdir()
    for name, text in PROMPTS.items():
        shutil.copy(ASTERISK / f"{name}.g722", folder / f"{name}.g722")
        (folder / f"{name}.txt").write_text(text + "\n")
    return folder


@pytest.mark.parametrize("argv,needle", [
    (["transcribe", "/no/such.wav"], "/no/such.wav: no such file or folder"),
    (["compare", "x", "--models", "base"], "write LABEL=MODEL"),
    (["compare", "x", "--models", "a=whisper-tiny.en", "a=whisper-tiny.en"], "each LABEL must be different"),
    (["train", "/no/conf.yaml"], "no such config"),
    (["train", "recipes/whisper/conf/tiny.yaml", "train.max_steps"], "is not section.key=value"),
    (["evaluate", "x", "--model", "/tmp"], "a folder without config.json or hf/"),
])
def test_user_errors_are_one_line(argv, needle, capsys):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1, err


def test_empty_audio_folder_is_refused(tmp_path, capsys):
    assert cli.main(["transcribe", str(tmp_path)]) == 2
    assert "no audio files" in capsys.readouterr().err


def test_train_flags_become_overrides(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr("subprocess.call", lambda cmd, env=None: calls.append(cmd) or 0)
    assert cli.main(["train", "recipes/whisper/conf/tiny.yaml", "--strategy", "qlora", "--no-freeze-encoder",
                     "--grad-ckpt", "--out", str(tmp_path / "r"), "train.max_steps=5"]) == 0
    cmd = calls[0]
    assert cmd[1].endswith("recipes/whisper/train.py") and cmd[cmd.index("--out") + 1] == str(tmp_path / "r")
    assert cmd[-4:] == ["train.max_steps=5", "whisper.strategy=qlora", "whisper.freeze_encoder=false",
                        "train.gradient_checkpointing=true"]
    cli.main(["train", "recipes/whisper/conf/tiny.yaml", "--nproc", "2"])
    assert calls[1][1:5] == ["-m", "torch.distributed.run", "--nproc_per_node", "2"]


def test_differences_are_marked():
    assert asr.mark_differences("press the pound key", "press a pound key now") == "press [a] pound key [now]"
    assert asr.mark_differences("thank you", "thank") == "thank [-you]"


@pytest.mark.slow
def test_transcribe_evaluate_compare_on_real_speech(whisper_tiny_path, pairs, tmp_path, capsys):
    assert cli.main(["transcribe", str(pairs / "agent-pass.g722"), str(pairs), "--model", whisper_tiny_path,
                     "--json"]) == 0
    out, err = capsys.readouterr()
    rows = [json.loads(x) for x in out.splitlines()]
    assert len(rows) == 4 and "password" in rows[0]["text"].lower()
    assert "RTF" in err

    assert cli.main(["evaluate", str(pairs), "--model", whisper_tiny_path, "--worst", "2",
                     "--json", str(tmp_path / "hyps.jsonl")]) == 0
    out = capsys.readouterr().out
    header, row = out.splitlines()[:2]
    assert header.split()[:3] == ["model", "WER", "%"] and row.split()[-2] == "3"   # 3 utterances scored
    assert float(row.split()[1]) < 30 and "worst 2 utterances" in out
    assert len((tmp_path / "hyps.jsonl").read_text().splitlines()) == 3
    assert list((tmp_path / "home" / "cache" / "eval").glob("pairs-*/train/index.json"))

    plot = tmp_path / "wer.png"
    assert cli.main(["compare", str(pairs), "--models", f"base={whisper_tiny_path}", f"beam2={whisper_tiny_path}",
                     "--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    assert "base" in out and "beam2" in out and "utterances decoded differently" in out
    assert plot.stat().st_size > 1000
