"""Speech units: k-means, `westkit units fit`, the pipeline steps, precomputed [last | middle] states."""
import json

import numpy as np
import pytest
import torch

from westkit.data.units import Codebook, KMeansUnits, S3Units, kmeans, pooled_frames


class Tone:
    def __init__(self, seconds, freq):
        self.seconds, self.freq = seconds, freq

    def load(self):
        t = np.arange(int(self.seconds * 16000)) / 16000
        return (0.2 * np.sin(2 * np.pi * self.freq * t)).astype(np.float32)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny random Whisper (3 encoder layers) and a shard folder of 6 tones + one text-only sample."""
    from transformers import WhisperConfig, WhisperModel

    from westkit.data.shards import Entry, write_shards
    root = tmp_path_factory.mktemp("units")
    torch.manual_seed(0)
    WhisperModel(WhisperConfig(d_model=16, encoder_layers=3, decoder_layers=1, encoder_attention_heads=2,
                               decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32,
                               max_source_positions=1500)).save_pretrained(root / "whisper")
    entries = [Entry(key=f"u{i}", text=f"tone {i}", audio=Tone(0.4 + 0.15 * i, 200 + 90 * i)) for i in range(6)]
    write_shards(entries + [Entry(key="t0", text="only text")], root / "shards", workers=1, progress=False)
    return root


def test_kmeans_finds_separated_clusters():
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    x = torch.cat([c + 0.1 * torch.randn(50, 2, generator=g) for c in centres])
    found, inertia = kmeans(x, 3, iters=10, seed=1)
    dist = torch.cdist(centres, found)
    assert dist.min(1).values.max() < 0.2 and inertia < 0.05
    with pytest.raises(ValueError, match="lower --k"):
        kmeans(x[:2], 3)


def test_pooled_frames_average_groups_and_the_short_tail():
    states = torch.arange(10.0).reshape(1, 5, 2).repeat(2, 1, 1)
    out = pooled_frames(states, torch.tensor([5, 2]), 2)
    assert out[0].tolist() == [[1.0, 2.0], [5.0, 6.0], [8.0, 9.0]] and out[1].tolist() == [[1.0, 2.0]]


def test_units_fit_cli_then_the_pipeline_step(tiny, tmp_path, capsys):
    from westkit.cli import main
    out = tmp_path / "book.safetensors"
    assert main(["units", "fit", str(tiny / "shards"), "--layer", "2", "--k", "8", "--out", str(out),
                 "--model", str(tiny / "whisper"), "--iters", "5"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["k"] == 8 and report["layer"] == 2 and report["frames"] > 8
    book = Codebook.load(out)
    assert book.centroids.shape == (8, 16) and book.pool == 2 and book.model == str(tiny / "whisper")

    step = KMeansUnits(out)
    audio = Tone(0.7, 380).load()
    sample = step({"key": "x", "text": "t", "audio": audio})
    states = len(audio) // 160 // 2 + (len(audio) // 160) % 2      # 50 Hz encoder states
    assert sample["targets"][-1] == 8 and len(sample["targets"]) == -(-states // 2) + 1
    assert all(0 <= u < 8 for u in sample["targets"][:-1])
    assert step({"key": "t", "text": "only"}) == {"key": "t", "text": "only"}
    # the same units from precomputed [last | middle] states of that layer (float16: almost all)
    from westkit.models.whisper import WhisperAudioEncoder, load_whisper_encoder
    enc = WhisperAudioEncoder(load_whisper_encoder(str(tiny / "whisper"))).eval()
    last, middle, _ = enc.forward_layers(torch.from_numpy(audio)[None], torch.tensor([len(audio)]), 2)
    pre = {"key": "x", "text": "t", "audio": audio,
           "states": torch.cat([last, middle], -1)[0].half().numpy()}
    again = KMeansUnits(out, from_states="middle")(pre)["targets"]
    same = np.mean(np.asarray(again) == np.asarray(sample["targets"]))
    assert len(again) == len(sample["targets"]) and same >= 0.9


def test_units_cli_errors_are_one_line(tiny, tmp_path, capsys):
    from westkit.cli import main
    assert main(["units", "fit", str(tiny / "shards"), "--layer", "7", "--k", "8", "--out",
                 str(tmp_path / "b.safetensors"), "--model", str(tiny / "whisper")]) == 2
    err = capsys.readouterr().err
    assert "--layer 7" in err and "choose 0..3" in err and "Traceback" not in err
    with pytest.raises(SystemExit):
        main(["units", "fit", str(tiny / "shards"), "--k", "8", "--out", "x"])   # --layer is required
    with pytest.raises(ValueError, match="westkit units fit"):
        Codebook.load(tmp_path / "missing.safetensors")


def test_s3_units_without_the_package_say_what_to_do():
    try:
        import s3tokenizer  # noqa: F401
        pytest.skip("s3tokenizer is installed here")
    except ImportError:
        pass
    with pytest.raises(ValueError, match="pip install s3tokenizer.*westkit units fit"):
        S3Units("speech_tokenizer_v1")


def test_encode_keeps_a_middle_layer(tiny, tmp_path):
    from westkit.data.loader import LoaderConfig, build_loader
    from westkit.data.states import check_states, main, read_states_index
    from westkit.models.whisper import WhisperAudioEncoder, encoder_fingerprint, load_whisper_encoder

    out = tmp_path / "states"
    assert main([str(tiny / "shards"), "--out", str(out), "--model", str(tiny / "whisper"), "--layer", "1",
                 "--no-pad-to-30s", "--batch-size", "2"]) == 0
    index = read_states_index(out)
    assert index["layer"] == 1 and index["n_layers"] == 3 and index["dim"] == 16
    enc = WhisperAudioEncoder(load_whisper_encoder(str(tiny / "whisper"))).eval()
    check_states(out, encoder_fingerprint(enc.encoder), pad_to_30s=False, layer=1)
    with pytest.raises(ValueError, match="--layer 2"):
        check_states(out, encoder_fingerprint(enc.encoder), pad_to_30s=False, layer=2)
    cfg = LoaderConfig(shards=[str(tiny / "shards")], states=str(out), max_batch_size=6, shuffle=False,
                       num_workers=0, min_text_chars=0)
    batch = next(b for b in build_loader(cfg, train=False) if "audio" in b)
    last, middle, lens = enc.forward_layers(batch["audio"], batch["audio_lens"], 1)
    assert batch["states"].shape == (len(lens), last.shape[1], 32)
    torch.testing.assert_close(batch["states"][..., 16:].float(), middle, atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(batch["states"][..., :16].float(), last, atol=2e-2, rtol=2e-2)
