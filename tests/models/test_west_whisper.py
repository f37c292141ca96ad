"""The variable-length Whisper encoder against transformers' own (real whisper-tiny.en weights)."""
import numpy as np
import torch

from westkit.models.whisper import WhisperAudioEncoder, load_whisper_encoder


def _speechlike(n, seed):
    g = np.random.default_rng(seed)
    t = np.arange(n) / 16000
    sig = np.sin(2 * np.pi * (150 + 50 * np.sin(3 * t)) * t) * (0.3 + 0.2 * np.sin(5 * t))
    return torch.tensor(sig + 0.01 * g.standard_normal(n), dtype=torch.float32)


def test_pad_to_30s_matches_transformers(whisper_tiny_path):
    """With 30 s padding our encoder is Whisper's encoder, number for number."""
    from transformers import WhisperFeatureExtractor

    encoder = load_whisper_encoder(whisper_tiny_path).eval()
    audio = _speechlike(20000, 0)
    fe = WhisperFeatureExtractor.from_pretrained(whisper_tiny_path)
    feats = torch.tensor(fe(audio.numpy(), sampling_rate=16000, return_tensors="np").input_features)
    with torch.no_grad():
        want = encoder(feats).last_hidden_state
    ours, lens = WhisperAudioEncoder(encoder, pad_to_30s=True)(audio[None], torch.tensor([20000]))
    assert ours.shape == want.shape == (1, 1500, 384) and lens.tolist() == [1500]
    torch.testing.assert_close(ours, want, rtol=1e-4, atol=1e-3)


def test_variable_length_is_independent_of_batch_and_has_no_grad(whisper_tiny_path):
    enc = WhisperAudioEncoder(load_whisper_encoder(whisper_tiny_path).eval())
    a, b = _speechlike(24000, 1), _speechlike(9000, 2)
    batch = torch.zeros(2, 24000)
    batch[0], batch[1, :9000] = a, b
    states, lens = enc(batch, torch.tensor([24000, 9000]))
    alone, alone_lens = enc(b[None], torch.tensor([9000]))
    # 100 log-mel frames per second, halved by the stride-2 convolution, no 30 s padding
    assert lens.tolist() == [75, 28] and alone_lens.tolist() == [28]
    assert states.shape[1] == 75 and not states.requires_grad
    torch.testing.assert_close(states[1, :28], alone[0], rtol=1e-4, atol=1e-4)
    assert states[1, 28:].abs().max() == 0
