"""Every input format through the `westkit-shards` CLI, with its format-specific bad inputs."""
import json
import tarfile

import pytest

from westkit.data.shards import REJECTS, read_index
from westkit.data.shards_cli import main
from westkit.data.sources import detect

from data_helpers import read_jsonl, write_wav


def _run(tmp_path, *args):
    out = tmp_path / "out"
    assert main([*map(str, args), "-o", str(out), "--workers", "1", "--no-progress"]) == 0
    index = read_index(out)
    rejects = read_jsonl(out / REJECTS)
    texts = {}
    for s in index["shards"]:
        with tarfile.open(out / s["name"]) as tar:
            for m in tar:
                if m.name.endswith(".json"):
                    texts[m.name[:-5]] = json.loads(tar.extractfile(m).read())
    return index, rejects, texts


def test_metadata_csv(tmp_path):
    d = tmp_path / "cli"
    write_wav(d / "audio" / "a.wav", 1.0)
    write_wav(d / "audio" / "b.wav", 1.2, sr=22050)
    (d / "metadata.csv").write_text('file_name,transcription\naudio/a.wav,"hello, world"\n'
                                    "audio/b.wav,second one\naudio/c.wav,missing file\nbroken line\n")
    assert detect(d) == "csv"
    index, rejects, texts = _run(tmp_path, d)
    assert texts["audio_a"]["text"] == "hello, world" and abs(texts["audio_b"]["duration"] - 1.2) < 1e-3
    assert [(r["line"], r["reason"]) for r in rejects] == [(4, "missing_file"), (5, "bad_line")]


def test_same_file_name_in_two_speaker_folders_stays_two_samples(tmp_path):
    """spk1/001.wav and spk2/001.wav: the key is the path relative to the manifest's folder,
    in every format, so a common layout is not half rejected as duplicate_key."""
    d = tmp_path / "corpus"
    for spk in ("spk1", "spk2"):
        write_wav(d / spk / "001.wav", 0.5)
        (d / spk / "001.txt").write_text(f"{spk} says one")
    (d / "metadata.csv").write_text("file_name,transcription\nspk1/001.wav,spk1 says one\n"
                                    "spk2/001.wav,spk2 says one\n")
    (d / "train.jsonl").write_text(json.dumps({"wav": "spk1/001.wav", "txt": "spk1 says one"}) + "\n"
                                   + json.dumps({"wav": str(d / "spk2/001.wav"), "txt": "spk2 says one"}) + "\n")
    for i, args in enumerate([(d / "metadata.csv",), (d / "train.jsonl",), (d, "--format", "dir")]):
        _, rejects, texts = _run(tmp_path / f"run{i}", *args)
        assert rejects == [], args
        assert {k: v["text"] for k, v in texts.items()} == {
            "spk1_001": "spk1 says one", "spk2_001": "spk2 says one"}, args


def test_a_folder_where_an_audio_file_is_expected_is_its_own_reason(tmp_path):
    d = tmp_path / "cli"
    write_wav(d / "a.wav", 0.5)
    (d / "b.wav").mkdir()
    (d / "metadata.csv").write_text("file_name,transcription\na.wav,one\nb.wav,two\nc.wav,three\n")
    _, rejects, texts = _run(tmp_path, d)
    assert list(texts) == ["a"]
    assert [(r["line"], r["reason"]) for r in rejects] == [(3, "not_a_file"), (4, "missing_file")]
    assert "is a folder" in rejects[0]["detail"]


def test_audio_folder_with_transcripts_beside(tmp_path):
    d = tmp_path / "folder"
    write_wav(d / "x" / "one.wav", 0.8)
    (d / "x" / "one.txt").write_text("first clip\n")
    write_wav(d / "two.flac", 0.9)
    (d / "two.txt").write_text("second clip")
    write_wav(d / "three.wav", 0.7)  # no transcript
    assert detect(d) == "dir"
    index, rejects, texts = _run(tmp_path, d)
    assert {k: v["text"] for k, v in texts.items()} == {"x_one": "first clip", "two": "second clip"}
    assert [r["reason"] for r in rejects] == ["missing_text"]


def test_librispeech_tree(tmp_path):
    d = tmp_path / "LibriSpeech" / "dev-clean"
    chapter = d / "84" / "121123"
    for i in range(3):
        write_wav(chapter / f"84-121123-{i:04d}.flac", 1.0 + i / 10)
    (chapter / "84-121123.trans.txt").write_text(
        "84-121123-0000 GO DO YOU HEAR\n84-121123-0001 BUT IN LESS THAN FIVE MINUTES\n"
        "84-121123-0002 AT THIS MOMENT\n84-121123-0003 NO AUDIO FOR THIS ONE\n")
    assert detect(d) == "librispeech"
    index, rejects, texts = _run(tmp_path, d, "--lang", "en")
    assert texts["84-121123-0001"]["text"] == "BUT IN LESS THAN FIVE MINUTES"
    assert texts["84-121123-0001"]["speaker"] == "84"
    assert [(r["key"], r["reason"]) for r in rejects] == [("84-121123-0003", "missing_file")]


def test_kaldi_folder_rejects_pipes(tmp_path):
    d = tmp_path / "kaldi"
    a = write_wav(tmp_path / "wavs" / "a.wav", 1.0)
    b = write_wav(tmp_path / "wavs" / "b.wav", 1.1)
    (d).mkdir()
    (d / "wav.scp").write_text(f"utt1 {a}\nutt2 sox {b} -t wav - |\nutt3 {b}\nutt4 feats.ark:1234\n"
                               f"utt5 {b}\n")
    (d / "text").write_text("utt1 first utterance\nutt2 piped\nutt3 third\nutt4 ark\n")
    (d / "utt2spk").write_text("utt1 spkA\nutt3 spkB\n")
    assert detect(d) == "kaldi"
    index, rejects, texts = _run(tmp_path, d)
    assert {k: (v["text"], v["speaker"]) for k, v in texts.items()} == {
        "utt1": ("first utterance", "spkA"), "utt3": ("third", "spkB")}
    assert [(r["line"], r["reason"]) for r in rejects] == [(2, "piped_entry"), (4, "bad_line"), (5, "missing_text")]
    assert "convert" in rejects[0]["detail"]


def test_text_only_input(tmp_path):
    p = tmp_path / "corpus.txt"
    p.write_bytes(b"Guten Morgen.\n\nWie geht es dir?\n\xff\xfe broken\n  \n")
    index, rejects, texts = _run(tmp_path, p, "--lang", "de", "--source", "news")
    assert sorted((v["text"], v["lang"], v["source"], v["duration"]) for v in texts.values()) == [
        ("Guten Morgen.", "de", "news", 0.0), ("Wie geht es dir?", "de", "news", 0.0)]
    assert index["totals"]["text_only"] == 2 and [r["line"] for r in rejects] == [4]
    assert all(s["samples"][0][5] == -1 for s in index["shards"])  # no audio member


def test_cli_errors(tmp_path, capsys):
    p = tmp_path / "in.jsonl"
    p.write_text(json.dumps({"wav": str(tmp_path / "nope.wav"), "txt": "x"}) + "\n")
    assert main([str(p), "-o", str(tmp_path / "o"), "--strict", "--no-progress", "--workers", "1"]) == 2
    assert f"{p}:1: missing_file" in capsys.readouterr().err
    assert main([str(tmp_path / "absent.jsonl"), "-o", str(tmp_path / "o2")]) == 2
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([str(p)])  # no -o
