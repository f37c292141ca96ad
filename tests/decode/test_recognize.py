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
from westkit.decode.scoring import score
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


# -- several models on several sets -----------------------------------------------------------

def test_models_sharing_an_encoder_decode_as_they_would_alone(tiny_whisper_dir, wavs, tmp_path):
    """An adapted model (same encoder, other decoder) shares the base's encoder pass, a model
    with another encoder gets its own; each model's hypotheses equal those of a run on its own."""
    from transformers import WhisperForConditionalGeneration

    from decode_helpers import make_tiny_whisper
    from westkit.decode.recognize import encoder_groups
    from westkit.decode.recognizers import WhisperRecognizer

    adapted = WhisperForConditionalGeneration.from_pretrained(tiny_whisper_dir)
    with torch.no_grad():
        for p in adapted.model.decoder.parameters():
            p.add_(0.05 * torch.randn_like(p))
    adapted.save_pretrained(tmp_path / "adapted")
    other, tok = make_tiny_whisper(tmp_path / "other", seed=1)
    tok.save_pretrained(tmp_path / "adapted")
    specs = [f"base={tiny_whisper_dir}", f"adapted={tmp_path / 'adapted'}", f"other={tmp_path / 'other'}"]
    sets = ["--jsonl", str(wavs / "list.jsonl"), "--audio", str(wavs / "u0.wav"), str(wavs / "u5.wav")]
    assert recognize.main(["--whisper", *specs, *sets, "--out", str(tmp_path / "all"), "--max-new-tokens", "5"]) == 0
    results = json.loads((tmp_path / "all" / "results.json").read_text())
    assert set(results) == {"base", "adapted", "other"} and set(results["base"]) == {"list", "audio"}
    assert "| base |" in (tmp_path / "all" / "table.md").read_text()
    for spec in specs:
        name = spec.split("=")[0]
        assert recognize.main(["--whisper", spec, *sets, "--out", str(tmp_path / name), "--max-new-tokens", "5"]) == 0
        for s in ("list", "audio"):
            together = _hyps(tmp_path / "all" / name / s / "hyps.jsonl")
            alone = _hyps(tmp_path / name / name / s / "hyps.jsonl")
            assert {k: r["hyp"] for k, r in together.items()} == {k: r["hyp"] for k, r in alone.items()}
    gen = GenerateConfig()
    models = {n: WhisperRecognizer.load(p, gen, "cpu", torch.float32) for n, p in
              (s.split("=") for s in specs)}
    assert encoder_groups(models) == [["base", "adapted"], ["other"]]


# -- issue 11: nothing is dropped or cut silently; errors are one line before heavy work ------------

def _concat_wav(tmp_path, long_wav, seconds_of_short=1.0):
    """A short real file beside the long one."""
    audio, rate = sf.read(long_wav)
    short = tmp_path / "short.wav"
    sf.write(short, audio[:int(seconds_of_short * rate)], rate)
    return short


def test_whisper_on_long_audio_decodes_30s_and_flags_it(whisper_tiny_path, long_wav, tmp_path):
    """Real whisper-tiny.en on 35 s of real speech: the first 30 s are transcribed (not one
    word), the row is flagged truncated_30s and wer.json says what was not heard."""
    from decode_helpers import LONG_TEXT

    out = tmp_path / "o"
    assert recognize.main(["--whisper", whisper_tiny_path, "--audio", str(long_wav), "--out", str(out)]) == 0
    row = _hyps(out / "hyps.jsonl")["long"]
    assert "truncated_30s" in row["flags"] and row["duration"] > 34
    words = row["hyp"].split()
    # greedy without timestamps, tiny.en ends early on a full window (28 of ~75 words here):
    # the start is right, but it is no long-form transcript yet
    assert len(words) >= 20, row["hyp"]
    assert score([" ".join(LONG_TEXT.split()[:len(words)])], [row["hyp"]]).wer < 0.3
    rep = json.loads((out / "wer.json").read_text())
    assert rep["truncated_30s"]["utterances"] == 1 and rep["truncated_30s"]["seconds_not_decoded"] > 4
    assert rep["audio_seconds"] == 30.0  # the RTF counts what was decoded


def test_long_utterances_in_shards_and_west_are_kept_and_flagged(run, tiny_whisper_dir, long_wav, tmp_path):
    from westkit.data.shards import Entry, write_shards

    root, _ = run
    short = _concat_wav(tmp_path, long_wav)
    write_shards([Entry(key="long", text="a long one", audio=str(long_wav)),
                  Entry(key="short", text="a short one", audio=str(short))],
                 tmp_path / "shards", progress=False, workers=1)
    for model in (["--whisper", str(tiny_whisper_dir)], ["--west", str(root)]):
        out = tmp_path / model[0].strip("-")
        assert recognize.main([*model, "--shards", str(tmp_path / "shards"), "--out", str(out),
                               "--max-new-tokens", "4", "--num-workers", "0"]) == 0
        hyps = _hyps(out / "hyps.jsonl")
        assert sorted(hyps) == ["long", "short"]
        assert "truncated_30s" in hyps["long"]["flags"] and "truncated_30s" not in hyps["short"]["flags"]
        rep = json.loads((out / "wer.json").read_text())
        assert rep["truncated_30s"]["utterances"] == 1 and rep["all"]["utterances"] == 2


def test_audio_rows_keep_input_order_and_an_unreadable_file_is_a_row(run, wavs, tmp_path):
    root, _ = run
    (tmp_path / "broken.wav").write_bytes(b"RIFF....WAVEfmt not really a wav file")
    files = [wavs / "u3.wav", tmp_path / "broken.wav", wavs / "u0.wav", tmp_path / "missing.wav", wavs / "u7.wav"]
    assert recognize.main(["--west", str(root), "--audio", *map(str, files), "--out", str(tmp_path / "o"),
                           "--max-new-tokens", "4"]) == 0
    rows = [json.loads(x) for x in open(tmp_path / "o" / "hyps.jsonl")]
    assert [r["key"] for r in rows] == ["u3", "broken", "u0", "missing", "u7"]
    bad = {r["key"]: r for r in rows if "unreadable" in r["flags"]}
    assert sorted(bad) == ["broken", "missing"] and all(r["error"] for r in bad.values())
    rep = json.loads((tmp_path / "o" / "wer.json").read_text())
    assert rep["left_out"]["utterances"] == 2


def test_empty_hypotheses_are_flagged(tiny_whisper_dir, wavs, tmp_path):
    """A Whisper whose decoder always says <|endoftext|> first: every hypothesis is empty."""
    from transformers import WhisperForConditionalGeneration

    mute = WhisperForConditionalGeneration.from_pretrained(tiny_whisper_dir)
    with torch.no_grad():
        mute.model.decoder.layer_norm.weight.zero_()
        mute.model.decoder.layer_norm.bias.fill_(1.0)
        mute.proj_out.weight[50256] = 1.0  # tied to the input embedding: fine, it is only an end
    mute.save_pretrained(tmp_path / "mute")
    for f in ("tokenizer.json", "tokenizer_config.json"):
        (tmp_path / "mute" / f).write_bytes((tiny_whisper_dir / f).read_bytes())
    assert recognize.main(["--whisper", str(tmp_path / "mute"), "--jsonl", str(wavs / "list.jsonl"),
                           "--out", str(tmp_path / "o")]) == 0
    rows = _hyps(tmp_path / "o" / "hyps.jsonl")
    assert all(r["hyp"] == "" and r["flags"] == ["empty"] for r in rows.values())
    assert json.loads((tmp_path / "o" / "wer.json").read_text())["flag_counts"] == {"empty": 12}


def test_bad_out_fails_in_one_line_before_models_load(tmp_path, wavs, capsys, caplog):
    (tmp_path / "file.txt").write_text("x")
    # the model does not exist: had it been loaded first, its error would come instead
    for out in (tmp_path / "file.txt", tmp_path / "file.txt" / "sub", "/proc/westkit-no-such-dir"):
        caplog.clear()
        rc = recognize.main(["--whisper", str(tmp_path / "no-model"), "--audio", str(wavs / "u0.wav"),
                             "--out", str(out)])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1 and "--out" in err[0], err
        assert "loading" not in caplog.text


def test_cli_errors_are_one_line_without_traceback_unless_debugging(tmp_path, wavs, capsys, monkeypatch):
    args = ["--whisper", str(tmp_path / "no-model"), "--audio", str(wavs / "u0.wav"), "--out", str(tmp_path / "o")]
    assert recognize.main(args) == 2  # returned, not raised: no traceback
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no-model" in err[0] and "--debug" in err[0], err
    # with --debug the error propagates (resolve() says a missing model is a user's ValueError)
    with pytest.raises(ValueError, match="not a built-in name"):
        recognize.main(args + ["--debug"])
    monkeypatch.setenv("WESTKIT_DEBUG", "1")
    with pytest.raises(ValueError, match="not a built-in name"):
        recognize.main(args)
