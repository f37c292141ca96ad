"""Shard writer: formats on disk, bad-input policy, determinism, WebDataset compatibility."""
import hashlib
import io
import json
import tarfile

import numpy as np
import pytest
import soundfile as sf

from westkit.data.audio import SAMPLE_RATE, BadInput, conform, read_audio
from westkit.data.shards import INDEX, REJECTS, index_tars, read_index, write_shards
from westkit.data.sources import read

from data_helpers import Tone, read_jsonl, tone_shards, write_wav


def _bad_inputs(tmp_path):
    """A jsonl with one good line and one of each kind of bad input; returns (path, expected reasons)."""
    good = write_wav(tmp_path / "a" / "good.wav", 1.0)
    stereo44 = write_wav(tmp_path / "b" / "stereo44.wav", 1.5, sr=44100, channels=2)
    nan = write_wav(tmp_path / "nan.wav", 0.5, value=np.nan)
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros((0,), np.float32), 16000)
    full = write_wav(tmp_path / "trunc_src.wav", 2.0).read_bytes()
    trunc = tmp_path / "trunc.wav"
    trunc.write_bytes(full[:len(full) // 2])
    garbage = tmp_path / "garbage.wav"
    garbage.write_bytes(b"this is not audio at all" * 20)
    long = write_wav(tmp_path / "long.wav", 3.0)
    lines = [json.dumps({"wav": str(good), "txt": "good one"}),
             json.dumps({"wav": "b/stereo44.wav", "txt": "stereo, relative path", "speaker": "s1", "lang": "de"}),
             json.dumps({"wav": str(tmp_path / "missing.wav"), "txt": "missing"}),
             json.dumps({"wav": str(nan), "txt": "nan"}),
             json.dumps({"wav": str(empty), "txt": "empty"}),
             json.dumps({"wav": str(trunc), "txt": "truncated"}),
             json.dumps({"wav": str(garbage), "txt": "garbage"}),
             json.dumps({"wav": str(long), "txt": "too long for max_duration 2.5"}),
             json.dumps({"key": "x", "wav": str(good), "txt": "   "}),
             json.dumps({"wav": str(good), "txt": "duplicate key good"}),
             "{not json",
             ]
    path = tmp_path / "in.jsonl"
    path.write_bytes(("\n".join(lines) + "\n").encode() + b'{"txt": "caf\xe9 latin-1"}\n')
    expected = {"missing_file": 1, "nonfinite_audio": 1, "empty_audio": 1, "truncated_audio": 1,
                "unreadable_audio": 1, "absurd_duration": 1, "empty_text": 1, "duplicate_key": 1,
                "bad_line": 1, "bad_encoding": 1}
    return path, expected


def test_bad_inputs_are_skipped_counted_and_reported(tmp_path):
    path, expected = _bad_inputs(tmp_path)
    from westkit.data.shards import WriteLimits
    summary = write_shards(read(path), tmp_path / "out", workers=2, progress=False,
                           limits=WriteLimits(max_duration=2.5))
    assert dict(summary.rejected) == expected
    assert summary.written == 2
    rejects = read_jsonl(tmp_path / "out" / REJECTS)
    assert [r["line"] for r in rejects] == list(range(3, 13))
    assert all(r["input"] == str(path) for r in rejects)
    assert {r["reason"] for r in rejects} == set(expected)
    index = read_index(tmp_path / "out")
    assert index["rejected"] == expected and index["totals"]["samples"] == 2
    # the stereo 44.1 kHz file was converted, not rejected; keys are paths below the jsonl's folder
    with tarfile.open(tmp_path / "out" / "train-000000.tar") as tar:
        names = tar.getnames()
        meta = json.loads(tar.extractfile("b_stereo44.json").read())
        audio, sr = sf.read(io.BytesIO(tar.extractfile("b_stereo44.flac").read()))
    assert names == ["a_good.flac", "a_good.json", "b_stereo44.flac", "b_stereo44.json"]
    assert sr == SAMPLE_RATE and audio.ndim == 1 and abs(len(audio) - 1.5 * SAMPLE_RATE) <= 1
    assert meta == {"text": "stereo, relative path", "duration": 1.5, "sample_rate": 16000, "lang": "de",
                    "speaker": "s1", "source": "in"}
    assert "rejected 10" in summary.line()


def test_strict_names_file_and_line(tmp_path):
    path, _ = _bad_inputs(tmp_path)
    with pytest.raises(ValueError, match=rf"{path}:3: missing_file"):
        write_shards(read(path), tmp_path / "out", workers=1, progress=False, strict=True)


def test_same_input_gives_byte_identical_shards(tmp_path):
    durs = [0.5 + 0.1 * (i % 7) for i in range(30)]
    digests = []
    for run in ("a", "b"):
        folder = tone_shards(tmp_path / run, durs, shard_bytes=60_000, text_only=3)
        files = sorted(p.name for p in folder.iterdir())
        digests.append({f: hashlib.sha256((folder / f).read_bytes()).hexdigest() for f in files})
    assert digests[0] == digests[1]
    assert len([f for f in digests[0] if f.endswith(".tar")]) >= 3


def test_shard_size_and_index_offsets(tmp_path):
    durs = [1.0 + 0.05 * i for i in range(20)]
    folder = tone_shards(tmp_path / "s", durs, shard_bytes=150_000, text_only=2)
    index = read_index(folder)
    assert index["totals"]["samples"] == 22 and index["totals"]["text_only"] == 2
    assert abs(index["totals"]["duration"] - sum(durs)) < 0.01
    assert sum(s["count"] for s in index["shards"]) == 22
    for s in index["shards"]:
        raw = (folder / s["name"]).read_bytes()
        # a shard may pass the target only when it holds a single sample
        assert s["bytes"] <= 150_000 or s["count"] == 1
        for key, dur, nchars, j_off, j_size, f_off, f_size in s["samples"]:
            meta = json.loads(raw[j_off:j_off + j_size])
            assert meta["duration"] == dur and len(meta["text"]) == nchars
            if f_off >= 0:
                audio, _ = sf.read(io.BytesIO(raw[f_off:f_off + f_size]))
                assert abs(len(audio) / SAMPLE_RATE - dur) < 1e-3
            else:
                assert key.startswith("t")


def test_shards_read_by_webdataset_and_reindexed(tmp_path):
    import webdataset as wds

    folder = tone_shards(tmp_path / "s", [0.5, 0.7, 0.9], text_only=1)
    got = {s["__key__"]: sorted(k for k in s if not k.startswith("__"))
           for s in wds.WebDataset(str(folder / "train-000000.tar"), shardshuffle=False)}
    assert got == {"u0000": ["flac", "json"], "u0001": ["flac", "json"], "u0002": ["flac", "json"], "t0000": ["json"]}
    original = json.loads((folder / INDEX).read_text())["shards"]
    (folder / INDEX).unlink()
    rebuilt = index_tars(folder, progress=False)["shards"]
    assert [s["samples"] for s in rebuilt] == [s["samples"] for s in original]


def test_conform_and_read_audio(tmp_path):
    stereo = np.stack([np.ones(8000, np.float32) * 0.5, np.zeros(8000, np.float32)], axis=1)
    out = conform(stereo, 8000)
    assert out.dtype == np.float32 and out.shape == (16000,)
    assert abs(float(out[4000:12000].mean()) - 0.25) < 1e-3
    with pytest.raises(BadInput) as e:
        conform(np.array([0.1, np.inf], np.float32), 16000)
    assert e.value.reason == "nonfinite_audio"
    flac = tmp_path / "x.flac"
    sf.write(flac, Tone(1.0).load(), 16000, subtype="PCM_16")
    cut = tmp_path / "cut.flac"
    cut.write_bytes(flac.read_bytes()[:len(flac.read_bytes()) // 2])
    with pytest.raises(BadInput) as e:
        read_audio(str(cut))
    assert e.value.reason == "truncated_audio"
    assert read_audio(str(flac)).shape == (16000,)


def test_reindexing_a_truncated_tar_keeps_the_readable_prefix(tmp_path):
    folder = tone_shards(tmp_path / "s", [0.5] * 6)
    original = read_index(folder)["shards"][0]["samples"]
    tar = folder / "train-000000.tar"
    cut = original[3][5] + 100  # inside the 4th sample's audio
    tar.write_bytes(tar.read_bytes()[:cut])
    index = index_tars(folder, progress=False)
    rows = index["shards"][0]["samples"]
    assert rows == original[:3] and index["rejected"]["unreadable_member"] >= 1
