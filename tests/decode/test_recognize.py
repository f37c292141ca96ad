"""recognize: a west run folder (tiny random weights saved as real checkpoints) decoded from a
jsonl, audio files and shards; batch-size independence end to end; plain Whisper decoding."""
import json
import subprocess

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml
from safetensors.torch import save_file

from westkit.decode import recognize
from westkit.decode.search import GenerateConfig, LLMStep, greedy, token_budget
from westkit.models.projector import ProjectorConfig
from westkit.models.west import WestConfig, tiny_random

MODEL = {"projector": {"kind": "stack", "rate": 2, "hidden": 64}, "system": None,
         "prompt": "hear <audio>"}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A west run folder: config.yaml naming saved tiny encoder/LLM folders + trainable weights."""
    from transformers import WhisperModel

    root = tmp_path_factory.mktemp("west_run")
    m = tiny_random(WestConfig(projector=ProjectorConfig(**MODEL["projector"]), system=None,
                               prompt=MODEL["prompt"]), seed=2, dim=48)
    whisper = WhisperModel(m.encoder.encoder.config)
    whisper.encoder.load_state_dict(m.encoder.encoder.state_dict())
    whisper.save_pretrained(root / "encoder")
    m.llm.save_pretrained(root / "llm")
    m.prompt.tokenizer.save_pretrained(root / "llm")
    cfg = {"model": dict(MODEL, encoder=str(root / "encoder"), llm=str(root / "llm"))}
    (root / "config.yaml").write_text(yaml.safe_dump(cfg))
    save_file({n: p.detach().contiguous() for n, p in m.named_parameters() if n.startswith("projector.")},
              root / "trainable.safetensors")
    return root, m.eval()


@pytest.fixture(scope="module")
def wavs(tmp_path_factory):
    """12 noise files of 0.3-2 s with made-up references, and a jsonl listing them."""
    root = tmp_path_factory.mktemp("wavs")
    g = np.random.default_rng(0)
    rows = []
    for i in range(12):
        n = int(g.integers(4800, 32000))
        sf.write(root / f"u{i}.wav", (0.1 * g.standard_normal(n)).astype(np.float32), 16000)
        rows.append({"key": f"u{i}", "audio": f"u{i}.wav", "text": "hello there"})
    (root / "list.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def _hyps(path):
    return {r["key"]: r for r in map(json.loads, open(path))}


def test_decodes_a_run_folder_identically_at_any_batch_size(run, wavs, tmp_path):
    root, model = run
    for bs in (1, 16):
        rc = recognize.main(["--west", str(root), "--jsonl", str(wavs / "list.jsonl"), "--out",
                             str(tmp_path / f"b{bs}"), "--batch-size", str(bs), "--max-new-tokens", "12"])
        assert rc == 0
    one, sixteen = _hyps(tmp_path / "b1" / "hyps.jsonl"), _hyps(tmp_path / "b16" / "hyps.jsonl")
    assert len(one) == len(sixteen) == 12
    assert {k: r["hyp"] for k, r in one.items()} == {k: r["hyp"] for k, r in sixteen.items()}
    # the weights were really loaded: the CLI agrees with the in-memory model decoding alone
    from westkit.data.audio import read_audio

    audio = torch.tensor(read_audio(str(wavs / "u3.wav")))[None]
    lens = torch.tensor([audio.shape[1]])
    gen = GenerateConfig(max_new_tokens=12)
    want = greedy(LLMStep(model.llm, model.prompt_inputs(audio, lens)), token_budget(lens, gen), model.prompt.stop_ids)[0]
    assert one["u3"]["hyp"] == model.prompt.decode(want.ids)
    rep = json.loads((tmp_path / "b16" / "wer.json").read_text())
    assert rep["utterances"] == 12 and rep["all"]["ref_words"] == 24
    assert rep["flagged_utterances"] == sum(bool(r["flags"]) for r in sixteen.values())


def test_shards_and_audio_files(run, wavs, tmp_path):
    from westkit.data.shards import Entry, write_shards

    root, _ = run
    write_shards([Entry(key=f"s{i}", text="hello there", audio=str(wavs / f"u{i}.wav")) for i in range(5)],
                 tmp_path / "shards", progress=False, workers=1)
    rc = recognize.main(["--west", str(root), "--shards", str(tmp_path / "shards"), "--audio",
                         str(wavs / "u0.wav"), "--out", str(tmp_path / "out"), "--max-new-tokens", "6",
                         "--num-workers", "0"])
    assert rc == 0
    # two sets: OUT/<model>/<set>/, the model named by its folder
    shards, files = (_hyps(tmp_path / "out" / root.name / s / "hyps.jsonl") for s in ("shards", "audio"))
    assert sorted(shards) == ["s0", "s1", "s2", "s3", "s4"] and sorted(files) == ["u0"]
    assert files["u0"]["ref"] == "" and shards["s0"]["ref"] == "hello there"
    assert files["u0"]["hyp"] == shards["s0"]["hyp"]  # same audio through both readers
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results[root.name]["shards"]["all"]["ref_words"] == 10 and "all" not in results[root.name]["audio"]


def test_user_errors_name_the_problem(run, tmp_path, capsys):
    root, _ = run
    assert recognize.main(["--west", str(tmp_path), "--audio", "x.wav", "--out", str(tmp_path)]) == 2
    assert "trainable.safetensors" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"key": "a", "text": "x"}\n')
    assert recognize.main(["--west", str(root), "--jsonl", str(bad), "--out", str(tmp_path)]) == 2
    assert "bad.jsonl:1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        recognize.parse_args(["--out", "x", "--audio", "a.wav"])  # no model


def test_plain_whisper_on_synthetic_speech(whisper_tiny_path, tmp_path):
    sentences = ["the quick brown fox jumps over the lazy dog", "please call me back tomorrow morning",
                 "seven green apples are on the table"]
    rows = []
    for i, s in enumerate(sentences):
        subprocess.run(["espeak-ng", "-w", str(tmp_path / f"{i}.wav"), s], check=True)
        rows.append(json.dumps({"key": str(i), "audio": f"{i}.wav", "text": s}))
    (tmp_path / "l.jsonl").write_text("\n".join(rows) + "\n")
    assert recognize.main(["--whisper", whisper_tiny_path, "--jsonl", str(tmp_path / "l.jsonl"),
                           "--out", str(tmp_path / "o")]) == 0
    rep = json.loads((tmp_path / "o" / "wer.json").read_text())
    assert rep["all"]["wer"] < 0.25, rep


def test_beam_search_and_silence_through_the_cli(run, wavs, tmp_path):
    root, _ = run
    sf.write(tmp_path / "silence.wav", np.zeros(16000, dtype=np.float32), 16000)
    rc = recognize.main(["--west", str(root), "--audio", str(wavs / "u1.wav"), str(wavs / "u2.wav"),
                         str(tmp_path / "silence.wav"), "--out", str(tmp_path / "o"), "--beam", "3",
                         "--max-new-tokens", "6"])
    assert rc == 0
    hyps = _hyps(tmp_path / "o" / "hyps.jsonl")
    assert sorted(hyps) == ["silence", "u1", "u2"]
    silent = hyps["silence"]
    assert ("speech_on_silence" in silent["flags"]) == any(c.isalnum() for c in silent["hyp"])
    rep = json.loads((tmp_path / "o" / "wer.json").read_text())
    assert rep["options"]["beam"] == 3 and "all" not in rep  # no references, no WER
