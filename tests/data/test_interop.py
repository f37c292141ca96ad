"""Other toolkits' datasets into shards (Lhotse, NeMo, Hugging Face `datasets`) and long
recordings cut into utterances by segment times (SRT/WebVTT cues, Kaldi ``segments``), each
through the `westkit-shards` CLI on small data made here; the cut audio is checked sample by
sample against the source file."""
import json

import numpy as np
import soundfile as sf

from westkit.data.loader import LoaderConfig, build_loader
from westkit.data.shards import REJECTS
from westkit.data.shards_cli import main
from westkit.data.sources import detect

from data_helpers import read_jsonl, write_wav

Q = 1.5 / 32768  # 16-bit quantisation of source and shard


def _shards(tmp_path, *args):
    """Run the CLI; returns ({key: (text, audio)}, rejects)."""
    out = tmp_path / "out"
    assert main([*map(str, args), "-o", str(out), "--workers", "1", "--no-progress"]) == 0
    cfg = LoaderConfig(shards=[str(out)], shuffle=False, num_workers=0, min_duration=0.0)
    got = {}
    for b in build_loader(cfg, train=False):
        for k, t, a, n in zip(b["keys"], b["texts"], b["audio"], b["audio_lens"]):
            got[k] = (t, a[:n].numpy())
    return got, read_jsonl(out / REJECTS)


def _slice(path, start, end):
    audio, sr = sf.read(path, dtype="float32")
    assert sr == 16000
    return audio[int(round(start * sr)):int(round(end * sr))]


def _long(path, seconds=4.0):
    return write_wav(path, seconds)  # noise at 16 kHz, PCM_16


def test_lhotse_cutset_and_manifest_folder(tmp_path):
    from lhotse import CutSet, Recording, RecordingSet, SupervisionSegment, SupervisionSet

    wav = _long(tmp_path / "audio" / "rec1.wav")
    recs = RecordingSet.from_recordings([Recording.from_file(wav, recording_id="rec1")])
    sups = SupervisionSet.from_segments([
        SupervisionSegment("rec1-a", "rec1", start=0.25, duration=1.0, text="hello there", speaker="s1"),
        SupervisionSegment("rec1-b", "rec1", start=1.5, duration=1.25, text="general kenobi", language="de"),
        SupervisionSegment("rec1-c", "rec1", start=3.0, duration=0.5, text="")])
    CutSet.from_manifests(recordings=recs, supervisions=sups).to_file(tmp_path / "cuts.jsonl.gz")
    assert detect(tmp_path / "cuts.jsonl.gz") == "lhotse"
    got, rejects = _shards(tmp_path / "a", tmp_path / "cuts.jsonl.gz")
    assert sorted(got) == ["rec1-a", "rec1-b"] and got["rec1-b"][0] == "general kenobi"
    assert np.abs(got["rec1-a"][1] - _slice(wav, 0.25, 1.25)).max() <= Q
    assert np.abs(got["rec1-b"][1] - _slice(wav, 1.5, 2.75)).max() <= Q
    assert [(r["key"], r["reason"]) for r in rejects] == [("rec1-c", "missing_text")]
    # the same as a recordings + supervisions folder
    folder = tmp_path / "manifests"
    folder.mkdir()
    recs.to_file(folder / "x_recordings.jsonl.gz")
    sups.to_file(folder / "x_supervisions.jsonl.gz")
    assert detect(folder) == "lhotse"
    again, _ = _shards(tmp_path / "b", folder)
    assert sorted(again) == sorted(got) and all(np.array_equal(again[k][1], got[k][1]) for k in got)


def test_nemo_manifest_with_whole_files_and_offsets(tmp_path):
    wav = _long(tmp_path / "audio" / "long.wav")
    write_wav(tmp_path / "audio" / "short.wav", 1.2, sr=8000)
    lines = [{"audio_filepath": "audio/short.wav", "text": "a whole file", "duration": 1.2},
             {"audio_filepath": "audio/long.wav", "text": "from one to two", "duration": 1.0, "offset": 1.0},
             {"audio_filepath": "audio/long.wav", "text": "past the end", "duration": 2.0, "offset": 3.5},
             {"audio_filepath": "audio/long.wav", "offset": 1.0},
             {"audio_filepath": str(wav), "text": "bad offset", "offset": "x", "duration": 1}]
    manifest = tmp_path / "train_manifest.json"
    manifest.write_text("\n".join(json.dumps(l) for l in lines) + "\n")
    assert detect(manifest) == "nemo"
    got, rejects = _shards(tmp_path, manifest)
    assert sorted(got) == ["audio_long-00001000", "audio_short"]
    assert abs(len(got["audio_short"][1]) - 1.2 * 16000) <= 1  # resampled from 8 kHz
    assert np.abs(got["audio_long-00001000"][1] - _slice(wav, 1.0, 2.0)).max() <= Q
    assert [(r["line"], r["reason"]) for r in rejects] == [(3, "bad_segment"), (4, "bad_line"), (5, "bad_line")]


def test_hugging_face_dataset_saved_to_disk(tmp_path):
    import datasets

    a = write_wav(tmp_path / "a.wav", 1.0)
    b = write_wav(tmp_path / "b.wav", 0.7, sr=22050, channels=2)
    ds = datasets.Dataset.from_dict({"audio": [str(a), str(b)], "sentence": ["first one", "second one"],
                                     "id": ["x-1", "x-2"]}).cast_column("audio", datasets.Audio())
    ds.save_to_disk(str(tmp_path / "hf"))
    datasets.DatasetDict({"train": ds}).save_to_disk(str(tmp_path / "hfdict"))
    for p in (a, b):
        p.unlink()  # the saved dataset holds the audio bytes itself
    assert detect(tmp_path / "hf") == "hf"
    got, rejects = _shards(tmp_path, tmp_path / "hf")
    assert {k: t for k, (t, _) in got.items()} == {"x-1": "first one", "x-2": "second one"} and not rejects
    assert abs(len(got["x-2"][1]) - 0.7 * 16000) <= 1  # stereo 22.05 kHz -> mono 16 kHz
    _fails(tmp_path / "e", tmp_path / "hfdict", "is a DatasetDict with splits train; give one split's folder")
    again, _ = _shards(tmp_path / "d", tmp_path / "hfdict" / "train")
    assert sorted(again) == ["x-1", "x-2"]


def _fails(tmp, input, text):
    """The CLI fails with status 2 and a message containing ``text``."""
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = main([str(input), "-o", str(tmp / "out"), "--workers", "1", "--no-progress"])
    assert rc == 2 and text in err.getvalue(), err.getvalue()


def test_long_recordings_cut_by_srt_and_vtt_cues(tmp_path):
    d = tmp_path / "talks"
    one = _long(d / "talk1.wav", 5.0)
    two = _long(d / "day2" / "talk2.wav", 3.0)
    (d / "talk1.srt").write_text("1\n00:00:00,500 --> 00:00:01,750\nGood <i>morning</i>\neveryone\n\n"
                                 "2\n00:00:02,000 --> 00:00:02,000\n \n\n"
                                 "3\n00:00:03,000 --> 00:00:04,250\nsecond cue\n\n"
                                 "4\n00:00:06,000 --> 00:00:07,000\nafter the end\n")
    (d / "day2" / "talk2.vtt").write_text("WEBVTT\n\n00:00.250 --> 00:01.500\nweb cue one\n\n"
                                          "00:01.600 --> 00:02.900\nweb cue two\n")
    (d / "orphan.srt").write_text("1\n00:00:00,000 --> 00:00:01,000\nno audio\n")
    assert detect(d) == "subtitles"
    got, rejects = _shards(tmp_path, d)
    assert {k: t for k, (t, _) in got.items()} == {
        "talk1-0001": "Good morning everyone", "talk1-0003": "second cue",
        "day2_talk2-0001": "web cue one", "day2_talk2-0002": "web cue two"}
    assert np.abs(got["talk1-0003"][1] - _slice(one, 3.0, 4.25)).max() <= Q
    assert np.abs(got["day2_talk2-0002"][1] - _slice(two, 1.6, 2.9)).max() <= Q
    assert sorted((r["key"], r["reason"]) for r in rejects) == [("orphan", "missing_file"),
                                                                ("talk1-0004", "bad_segment")]


def test_kaldi_folder_with_segments(tmp_path):
    d = tmp_path / "kaldi"
    rec = _long(d / "wav" / "meeting.wav", 4.0)
    (d / "wav.scp").write_text(f"meeting {rec}\npiped sox x.wav -t wav - |\n")
    (d / "segments").write_text("utt1 meeting 0.00 1.20\nutt2 meeting 2.10 3.95\nutt3 nowhere 0 1\n"
                                "utt4 piped 0 1\nutt5 meeting 1.5\n")
    (d / "text").write_text("utt1 first words\nutt2 more words\nutt3 x\nutt4 y\n")
    assert detect(d) == "kaldi"
    got, rejects = _shards(tmp_path, d)
    assert {k: t for k, (t, _) in got.items()} == {"utt1": "first words", "utt2": "more words"}
    assert np.abs(got["utt2"][1] - _slice(rec, 2.10, 3.95)).max() <= Q
    assert [(r["key"], r["reason"]) for r in rejects] == [("utt3", "bad_line"), ("utt4", "piped_entry"),
                                                          ("segments-line5", "bad_line")]
