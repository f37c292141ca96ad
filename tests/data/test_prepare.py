"""Shards written as N slices (what each task of a job array does) and merged: the merged set
equals one process's output sample for sample and reject for reject, a rerun redoes only the
slices that are not complete, and a merge with a slice missing refuses, naming it."""
import json
import os


from westkit.data.prepare import SLICES, slice_name, slice_status
from westkit.data.shards import INDEX, REJECTS, read_index
from westkit.data.shards_cli import main

from data_helpers import read_jsonl, write_wav


def inputs(tmp_path):
    lines = []
    for i in range(13):
        write_wav(tmp_path / "audio" / f"a{i}.wav", 0.3 + 0.05 * i)
        lines.append({"wav": f"audio/a{i}.wav", "txt": f"utterance {i}"})
    lines.insert(4, {"wav": "audio/missing.wav", "txt": "gone"})
    lines.append({"wav": "audio/a2.wav", "txt": "a duplicate in the last slice", "key": "audio/a2"})
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(l) + "\n" for l in lines))
    return path


def cli(*args):
    return main([*map(str, args), "--workers", "1", "--no-progress", "--shard-size", "60K"])


def rows(folder):
    return [r[:3] for s in read_index(folder)["shards"] for r in s["samples"]]


def test_slices_merge_into_what_one_process_writes_and_reruns_redo_only_missing(tmp_path, capsys):
    manifest = inputs(tmp_path)
    assert cli(manifest, "-o", tmp_path / "single") == 0
    out = tmp_path / "sliced"
    for i in (0, 1, 3):
        assert cli(manifest, "-o", out, "--slice", f"{i}/4") == 0
    # slice 2 was killed half-way: a folder without index.json
    (out / SLICES / slice_name(2, 4)).mkdir(parents=True)
    (out / SLICES / slice_name(2, 4) / "train-s00002-000000.tar").write_bytes(b"half")
    assert slice_status(out) == (4, [2])
    assert main(["--merge", str(out)]) == 2
    assert "slices 2 of 4 are not written" in capsys.readouterr().err
    done = {i: os.stat(out / SLICES / slice_name(i, 4) / INDEX).st_mtime_ns for i in (0, 1, 3)}
    for i in range(4):  # the whole array again: only slice 2 is written
        assert cli(manifest, "-o", out, "--slice", f"{i}/4") == 0
    assert capsys.readouterr().out.count("is written already; nothing to do") == 3
    assert all(os.stat(out / SLICES / slice_name(i, 4) / INDEX).st_mtime_ns == t for i, t in done.items())
    assert main(["--merge", str(out)]) == 0
    assert not (out / SLICES).exists()
    assert rows(out) == rows(tmp_path / "single") and len(rows(out)) == 13
    strip = lambda rs: [(r["key"], r["reason"], r["line"]) for r in rs]
    assert strip(read_jsonl(out / REJECTS)) == strip(read_jsonl(tmp_path / "single" / REJECTS)) == [
        ("audio_missing", "missing_file", 5), ("audio_a2", "duplicate_key", 15)]
    merged, single = read_index(out), read_index(tmp_path / "single")
    # the same totals, in more shards (each slice closes its last one)
    assert merged["totals"]["shards"] >= single["totals"]["shards"] and merged["rejected"] == single["rejected"]
    assert {**merged["totals"], "shards": 0} == {**single["totals"], "shards": 0}
    for s in merged["shards"]:  # every tar is where the index says, readable by offset
        assert (out / s["name"]).stat().st_size == s["bytes"]
    assert cli(manifest, "-o", out, "--slice", "1/4") == 0  # after the merge: nothing to do


def test_slice_argument_errors(tmp_path, capsys):
    manifest = inputs(tmp_path)
    assert cli(manifest, "-o", tmp_path / "x", "--slice", "4/4") == 2
    assert "expected I/N with 0 <= I < N" in capsys.readouterr().err
    assert main(["--merge", str(tmp_path / "nothing")]) == 2
    assert "no slices to merge" in capsys.readouterr().err
