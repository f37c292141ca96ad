"""westkit-encode -> states folder -> the loader carries each sample's states in the batch."""
import numpy as np
import pytest
import torch

from westkit.data.loader import LoaderConfig, build_loader
from westkit.data.shards import Entry, write_shards
from westkit.data.states import check_states, encode_states, main, read_states_index


class Tone:
    def __init__(self, seconds, freq):
        self.seconds, self.freq = seconds, freq

    def load(self):
        t = np.arange(int(self.seconds * 16000)) / 16000
        return (0.2 * np.sin(2 * np.pi * self.freq * t)).astype(np.float32)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny random Whisper folder and a shard folder of 5 tones and one text-only sample."""
    from transformers import WhisperConfig, WhisperModel
    root = tmp_path_factory.mktemp("states")
    torch.manual_seed(0)
    WhisperModel(WhisperConfig(d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                               decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32,
                               max_source_positions=1500)).save_pretrained(root / "whisper")
    entries = [Entry(key=f"u{i}", text=f"tone {i}", audio=Tone(0.5 + 0.2 * i, 300 + 40 * i)) for i in range(5)]
    write_shards(entries + [Entry(key="t0", text="only text")], root / "shards", workers=1, progress=False)
    return root


def test_loader_batches_carry_the_encoders_states(tiny, tmp_path):
    from westkit.models.whisper import WhisperAudioEncoder, encoder_fingerprint, load_whisper_encoder

    out = tmp_path / "states"
    assert main([str(tiny / "shards"), "--out", str(out), "--model", str(tiny / "whisper"),
                 "--batch-size", "2"]) == 0
    index = read_states_index(out)
    assert index["count"] == 5 and index["dim"] == 16 and index["pad_to_30s"] is True
    encoder = WhisperAudioEncoder(load_whisper_encoder(str(tiny / "whisper")), pad_to_30s=True).eval()
    check_states(out, encoder_fingerprint(encoder.encoder))
    cfg = LoaderConfig(shards=[str(tiny / "shards")], states=str(out), max_batch_size=3, shuffle=False,
                       num_workers=0)
    seen = 0
    for batch in build_loader(cfg, train=False):
        if "audio" not in batch:
            assert "states" not in batch          # text-only samples have no states
            continue
        assert batch["states"].dtype == torch.float16 and batch["states"].shape[1:] == (1500, 16)
        with torch.no_grad():
            want = encoder(batch["audio"], batch["audio_lens"])[0].half()
        torch.testing.assert_close(batch["states"], want)   # the same as encoding on the fly
        seen += len(batch["keys"])
    assert seen == 5


def test_states_of_another_encoder_or_other_shards_are_refused(tiny, tmp_path):
    from transformers import WhisperConfig, WhisperModel

    from westkit.models.whisper import encoder_fingerprint, load_whisper_encoder

    out = tmp_path / "states"
    encode_states([str(tiny / "shards")], out, str(tiny / "whisper"), progress=False)
    torch.manual_seed(1)
    other = WhisperModel(WhisperConfig(d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                                       decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32))
    with pytest.raises(ValueError, match="another encoder"):
        check_states(out, encoder_fingerprint(other.encoder))
    with pytest.raises(ValueError, match="pad_to_30s"):
        check_states(out, encoder_fingerprint(load_whisper_encoder(str(tiny / "whisper"))), pad_to_30s=False)
    more = tmp_path / "more"
    write_shards([Entry(key="new", text="new one", audio=Tone(0.6, 500))], more, workers=1, progress=False)
    with pytest.raises(ValueError, match="no states for 1 of these samples"):
        build_loader(LoaderConfig(shards=[str(tiny / "shards"), str(more)], states=str(out)))
    with pytest.raises(ValueError, match="not a states folder"):
        build_loader(LoaderConfig(shards=[str(tiny / "shards")], states=str(tiny / "shards")))


def test_states_written_as_slices_and_merged_equal_one_encoding(tiny, tmp_path, capsys):
    """westkit-encode --slice I/N over 3 shard files (what a job array runs), then --merge: the
    loader gets the same states as from one westkit-encode run."""
    entries = [Entry(key=f"v{i}", text=f"tone {i}", audio=Tone(0.4 + 0.1 * i, 200 + 30 * i)) for i in range(6)]
    shards = tmp_path / "shards"
    write_shards(entries, shards, shard_bytes=12_000, workers=1, progress=False)
    assert len(list(shards.glob("*.tar"))) >= 3
    common = ["--model", str(tiny / "whisper"), "--batch-size", "2", "--no-progress"]
    assert main([str(shards), "--out", str(tmp_path / "one"), *common]) == 0
    sliced = tmp_path / "sliced"
    assert main([str(shards), "--out", str(sliced), "--slice", "0/2", *common]) == 0
    assert main(["--merge", str(sliced)]) == 2
    assert "slices 1 of 2 are not written" in capsys.readouterr().err
    for i in (0, 1):  # slice 0 again is skipped
        assert main([str(shards), "--out", str(sliced), "--slice", f"{i}/2", *common]) == 0
    assert "slice 0/2 of" in capsys.readouterr().err
    assert main(["--merge", str(sliced)]) == 0
    index = read_states_index(sliced)
    assert index["count"] == 6 and len(index["shards"]) == 2 and not (sliced / "slices").exists()
    got = {}
    for states in (tmp_path / "one", sliced):
        cfg = LoaderConfig(shards=[str(shards)], states=str(states), shuffle=False, num_workers=0)
        got[states.name] = {k: s for b in build_loader(cfg, train=False) for k, s in zip(b["keys"], b["states"])}
    assert sorted(got["one"]) == sorted(got["sliced"]) == [f"v{i}" for i in range(6)]
    assert all(torch.equal(got["one"][k], got["sliced"][k]) for k in got["one"])
