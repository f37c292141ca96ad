"""LogMel against transformers' WhisperFeatureExtractor on real, variable-length speech."""
import numpy as np
import pytest
import torch
from transformers import WhisperFeatureExtractor

from westkit.data import corpora
from westkit.models.features import LogMel
from westkit.data.loader import LoaderConfig, build_loader


@pytest.fixture(scope="module")
def batch(data_home):
    """One batch of 5 real Asterisk prompts of different lengths, zero-padded."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WESTKIT_HOME", str(data_home))
        folder = corpora.make("asterisk-test", limit=5, progress=False)
    cfg = LoaderConfig(shards=[str(folder)], max_batch_size=5, max_batch_seconds=1000.0, buckets=[30.0],
                       num_workers=0, shuffle=False)
    b = next(iter(build_loader(cfg, train=False)))
    assert len(b["keys"]) == 5 and len(set(b["audio_lens"].tolist())) == 5
    return b


@pytest.mark.parametrize("n_mels", [80, 128])
def test_matches_whisper_feature_extractor(batch, n_mels):
    fe = WhisperFeatureExtractor(feature_size=n_mels)
    feats, feat_lens = LogMel(n_mels)(batch["audio"], batch["audio_lens"])
    assert feats.shape == (5, n_mels, int(batch["audio_lens"].max()) // 160)
    for i, n in enumerate(batch["audio_lens"].tolist()):
        audio = batch["audio"][i, :n].numpy()
        ref = fe(audio, sampling_rate=16000, padding="longest", return_tensors="np").input_features[0]
        assert feat_lens[i] == ref.shape[1] == n // 160
        assert np.abs(feats[i, :, :feat_lens[i]].numpy() - ref).max() < 1e-4
        # the extractor's numpy code path computes the same thing in float64
        ref_np = fe._np_extract_fbank_features(audio[None], "cpu")[0]
        assert np.abs(feats[i, :, :feat_lens[i]].numpy() - ref_np).max() < 2e-3
        assert torch.all(feats[i, :, feat_lens[i]:] == 0)
    # 30 s padding: the extractor's default call, batched
    feats30, lens30 = LogMel(n_mels)(batch["audio"], batch["audio_lens"], pad_to_30s=True)
    ref30 = fe([batch["audio"][i, :n].numpy() for i, n in enumerate(batch["audio_lens"].tolist())],
               sampling_rate=16000, return_tensors="np").input_features
    assert feats30.shape == ref30.shape == (5, n_mels, 3000)
    assert np.abs(feats30.numpy() - ref30).max() < 1e-4
    assert torch.equal(lens30, batch["audio_lens"] // 160)


def test_padding_does_not_change_an_utterance(batch):
    """Features of an utterance are the same alone and in a longer zero-padded batch."""
    mel = LogMel(80)
    full, _ = mel(batch["audio"], batch["audio_lens"])
    i = int(batch["audio_lens"].argmin())
    n = int(batch["audio_lens"][i])
    alone, lens = mel(batch["audio"][i:i + 1, :n], batch["audio_lens"][i:i + 1])
    assert torch.allclose(full[i, :, :lens[0]], alone[0], atol=1e-5)


def test_pad_to_30s_cuts_long_audio_like_the_extractor():
    rng = np.random.default_rng(0)
    long, short = rng.normal(0, 0.1, 31 * 16000).astype(np.float32), rng.normal(0, 0.1, 16000).astype(np.float32)
    audio = torch.zeros(2, len(long))
    audio[0], audio[1, :len(short)] = torch.from_numpy(long), torch.from_numpy(short)
    feats, lens = LogMel(80)(audio, torch.tensor([len(long), len(short)]), pad_to_30s=True)
    ref = WhisperFeatureExtractor()([long, short], sampling_rate=16000, return_tensors="np").input_features
    assert np.abs(feats.numpy() - ref).max() < 1e-4 and lens.tolist() == [3000, 100]


def test_runs_in_fp32_inside_a_bf16_model():
    """A model cast to bf16 casts LogMel's buffers too; the features must stay fp32 and equal."""
    audio = torch.randn(2, 8000)
    lens = torch.tensor([8000, 5000])
    ref, _ = LogMel(80)(audio, lens)
    feats, _ = LogMel(80).to(torch.bfloat16)(audio, lens)
    assert feats.dtype == torch.float32
    assert (feats - ref).abs().max() < 2e-2  # only the bf16-rounded filter bank differs
