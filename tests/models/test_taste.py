"""TASTE's parts on tiny random modules: the encoder's extra layer, the aggregator's masks and
shapes, the residual quantiser, the unit decoder's packing and greedy step, the whole model."""
import pytest
import torch

from westkit.models.taste import (CrossAttention, ResidualVQ, TasteConfig, TasteModel, UnitDecoder,
                                  UnitStep, code_usage, length_mask)


@pytest.fixture(scope="module")
def encoder():
    from transformers import WhisperConfig, WhisperModel

    from westkit.models.whisper import WhisperAudioEncoder
    torch.manual_seed(0)
    cfg = WhisperConfig(d_model=16, encoder_layers=3, decoder_layers=1, encoder_attention_heads=2,
                        decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32,
                        max_source_positions=1500)
    return WhisperAudioEncoder(WhisperModel(cfg).get_encoder()).eval()


def _audio(seconds, seed):
    g = torch.Generator().manual_seed(seed)
    return 0.1 * torch.randn(int(seconds * 16000), generator=g)


def test_encoder_middle_layer_in_the_same_pass_leaves_the_outputs_alone(encoder):
    a, b = _audio(1.0, 1), _audio(0.6, 2)
    audio = torch.zeros(2, len(a))
    audio[0], audio[1, :len(b)] = a, b
    lens = torch.tensor([len(a), len(b)])
    states, n = encoder(audio, lens)
    last, middle, n2 = encoder.forward_layers(audio, lens, 2)
    assert torch.equal(states, last) and torch.equal(n, n2)
    # the middle layer is block 2's output, as transformers' own hidden_states report it
    # (Whisper's 30 s window, where both run the same computation)
    full = type(encoder)(encoder.encoder, pad_to_30s=True)
    _, mid30, _ = full.forward_layers(audio[:1], lens[:1], 2)
    feats, _ = full.logmel(audio[:1], lens[:1], pad_to_30s=True)
    ref = encoder.encoder(feats.float(), output_hidden_states=True).hidden_states[2]
    torch.testing.assert_close(mid30, ref, atol=1e-4, rtol=1e-4)
    # variable length: an utterance's middle layer does not depend on its batch partner
    _, alone, m = encoder.forward_layers(audio[1:, :len(b)], lens[1:], 2)
    torch.testing.assert_close(middle[1, :m[0]], alone[0], atol=1e-5, rtol=1e-5)
    assert middle[1, m[0]:].abs().sum() == 0
    with pytest.raises(ValueError, match="3 layers, choose 0..3"):
        encoder.forward_layers(audio, lens, 4)


@pytest.mark.parametrize("prior", [0.0, 10.0])
def test_cross_attention_shapes_and_masks(prior):
    torch.manual_seed(0)
    att = CrossAttention(d_query=12, d_key=16, d_value=20, d_model=24, heads=4, align_prior=prior)
    text, keys, values = torch.randn(2, 5, 12), torch.randn(2, 9, 16), torch.randn(2, 9, 20)
    text_mask, audio_mask = length_mask(torch.tensor([5, 3]), 5), length_mask(torch.tensor([9, 6]), 9)
    out, w = att(text, text_mask, keys, values, audio_mask, return_weights=True)
    assert out.shape == (2, 5, 24) and w.shape == (2, 4, 5, 9)
    assert out[1, 3:].abs().sum() == 0                         # padded text rows are zero
    assert w[1, ..., 6:].abs().max() == 0                       # padded audio gets no weight
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 4, 5))
    # what sits in the padding changes nothing
    keys2, values2, text2 = keys.clone(), values.clone(), text.clone()
    keys2[1, 6:], values2[1, 6:], text2[1, 3:] = 1e3, -1e3, 7.0
    out2 = att(text2, text_mask, keys2, values2, audio_mask)
    torch.testing.assert_close(out, out2)
    # a row alone equals the row in the batch
    alone = att(text[1:, :3], text_mask[1:, :3], keys[1:, :6], values[1:, :6], audio_mask[1:, :6])
    torch.testing.assert_close(out[1:, :3], alone, atol=1e-6, rtol=1e-5)
    if prior:   # the prior puts the first token's weight early and the last token's late
        frames = torch.arange(9.0)
        centre = (w[0].mean(0) * frames).sum(-1)              # (L,) mean attended frame per token
        plain = CrossAttention(12, 16, 20, 24, 4)
        plain.load_state_dict({k: v for k, v in att.state_dict().items() if k != "prior"})
        _, w0 = plain(text, text_mask, keys, values, audio_mask, return_weights=True)
        assert centre[0] < 3 < 5 < centre[-1]
        assert (centre[1:] - centre[:-1] > 0).all() and not torch.allclose(w0, w)


def test_residual_quantiser_straight_through_commitment_and_depth():
    torch.manual_seed(0)
    z = torch.randn(4, 6, 32)
    mask = length_mask(torch.tensor([6, 6, 4, 2]), 6)
    rvq = ResidualVQ(32, depth=3, codes=16, code_dim=4, commitment=0.25)
    zq, codes, loss = rvq(z.requires_grad_(), mask)
    assert zq.shape == z.shape and codes.shape == (4, 6, 3) and codes.dtype == torch.long
    assert int(codes.max()) < 16 and loss > 0
    assert zq[3, 2:].abs().sum() == 0
    zq.pow(2).sum().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0          # straight-through reaches z
    usage = code_usage(codes, mask, 16)
    assert usage.shape == (3, 16) and int(usage.sum()) == 3 * int(mask.sum())
    # trained to reconstruct, more quantisers leave a smaller error
    errors = {}
    for depth in (1, 4):
        torch.manual_seed(1)
        q = ResidualVQ(32, depth=depth, codes=16, code_dim=4, commitment=0.25)
        opt = torch.optim.Adam(q.parameters(), lr=1e-2)
        data = torch.randn(64, 1, 32)
        ones = torch.ones(64, 1, dtype=torch.bool)
        for _ in range(150):
            out, _, vq = q(data, ones)
            rec = (out - data).pow(2).mean()
            opt.zero_grad()
            (rec + vq).backward()
            opt.step()
        errors[depth] = float((q(data, ones)[0] - data).pow(2).mean().detach())
    assert errors[4] < 0.8 * errors[1], errors


def test_unit_decoder_scores_each_row_alone_and_greedy_steps_match_teacher_forcing():
    torch.manual_seed(0)
    cfg = TasteConfig(d_model=16, dec_heads=2, dec_layers=2, dec_ff=32, dropout=0.0, n_units=10, max_positions=64)
    dec = UnitDecoder(cfg).eval()
    prefix = torch.randn(2, 4, 16)
    prefix_lens = torch.tensor([4, 2])
    targets = torch.tensor([[3, 1, 4, 10], [5, 10, -100, -100]])   # units + EOS (10), -100 padded
    target_lens = torch.tensor([4, 2])
    logits, labels = dec(prefix, prefix_lens, targets, target_lens)
    assert logits.shape[-1] == 11
    # row 0: positions 4..7 predict 3, 1, 4, EOS; row 1: positions 2..3 predict 5, EOS
    assert labels[0, 4:8].tolist() == [3, 1, 4, 10] and (labels[0, :4] == -100).all()
    assert labels[1, 2:4].tolist() == [5, 10] and (labels[1, 4:] == -100).all()
    one, lab1 = dec(prefix[1:, :2], prefix_lens[1:], targets[1:, :2], target_lens[1:])
    torch.testing.assert_close(logits[1, 2:4], one[0, 2:4], atol=1e-5, rtol=1e-5)
    # the greedy step's logits are the teacher-forced ones at the same place
    step = UnitStep(dec, prefix, prefix_lens)
    torch.testing.assert_close(step.first()[0], logits[0, 4], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(step.next(torch.tensor([3, 5]))[0], logits[0, 5], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(step.units[1], torch.tensor([5]))
    with pytest.raises(ValueError, match="max_positions"):
        dec(torch.randn(1, 70, 16), torch.tensor([70]), targets[:1], target_lens[:1])


def _batch(encoder, n_units=12):
    a, b = _audio(1.0, 3), _audio(0.5, 4)
    audio = torch.zeros(2, len(a))
    audio[0], audio[1, :len(b)] = a, b
    return {"audio": audio, "audio_lens": torch.tensor([len(a), len(b)]),
            "text_ids": torch.tensor([[5, 6, 7], [8, 9, 0]]), "text_lens": torch.tensor([3, 2]),
            "targets": torch.tensor([[1, 2, 3, 4, n_units], [5, 6, n_units, -100, -100]]),
            "target_lens": torch.tensor([5, 3])}


@pytest.mark.parametrize("fusion,depth", [("sum", 2), ("concat", 0)])
def test_model_trains_both_decoders_and_only_taste_hears_the_audio(encoder, fusion, depth):
    torch.manual_seed(0)
    cfg = TasteConfig(layer=1, d_model=16, heads=2, rvq_depth=depth, rvq_codes=8, rvq_dim=4, fusion=fusion,
                      dec_layers=1, dec_heads=2, dec_ff=32, dropout=0.0, n_units=12, max_positions=64)
    model = TasteModel(cfg, encoder, torch.nn.Embedding(60, 10)).eval()
    batch = _batch(encoder)
    out = model(batch)
    assert torch.isfinite(out["loss"]) and int(out["num_tokens"]) == 8
    assert ("codes_used" in out) == bool(depth)
    other = dict(batch, audio=batch["audio"].flip(1))
    out2 = model(other)
    assert out2["loss_baseline"] == out["loss_baseline"]        # the baseline reads text only
    if depth == 0:   # (at random init every quantised token may take the same code)
        assert out2["loss_taste"] != out["loss_taste"]
    model.train()
    model(batch)["loss"].backward()
    grads = {n: p.grad for n, p in model.named_parameters() if n.startswith(("aggregator.attention.", "baseline."))}
    assert all(g is not None and g.abs().sum() > 0 for g in grads.values()), [n for n, g in grads.items() if g is None]
    model.zero_grad()
    model.eval()
    # precomputed [last | middle] states give the same result as the encoder
    last, middle, _ = encoder.forward_layers(batch["audio"], batch["audio_lens"], 1)
    pre = dict(batch, states=torch.cat([last, middle], -1).half())
    torch.testing.assert_close(model(pre)["loss_taste"], out["loss_taste"], atol=2e-2, rtol=2e-2)
    with pytest.raises(ValueError, match="model.layer=5"):
        TasteModel(TasteConfig(layer=5, d_model=16, heads=2, dec_heads=2), encoder, torch.nn.Embedding(60, 10))


def test_config_errors_name_the_key():
    with pytest.raises(ValueError, match=r"model.heads \(3\) must divide model.d_model"):
        TasteConfig(d_model=16, heads=3)
    with pytest.raises(ValueError, match="model.rvq_depth"):
        TasteConfig(rvq_depth=-1)
    assert TasteConfig(rvq_depth=4, rvq_codes=512).bits_per_token == 36
