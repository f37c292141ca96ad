"""The decoding core on tiny random models: KV cache, left padding, beams, budgets and
batch-size independence, for both adapters (LLM over inputs_embeds, Whisper over states)."""
import pytest
import torch

from westkit.decode.search import GenerateConfig, LLMStep, WhisperStep, beam_search, greedy, token_budget
from westkit.models.projector import ProjectorConfig
from westkit.models.west import WestConfig, tiny_random

CFG = WestConfig(projector=ProjectorConfig(rate=2, hidden=64), system=None, prompt="hear <audio>")


@pytest.fixture(scope="module")
def model():
    return tiny_random(CFG, seed=1, dim=48).eval()


def utterances(n, seed=0):
    """``n`` utterances of 0.2-2.5 s, zero-padded into one batch."""
    g = torch.Generator().manual_seed(seed)
    lens = torch.randint(3200, 40000, (n,), generator=g)
    audio = torch.zeros(n, int(lens.max()))
    for i, k in enumerate(lens.tolist()):
        audio[i, :k] = torch.randn(k, generator=g) * 0.1
    return audio, lens


def llm(model, audio, lens):
    return LLMStep(model.llm, model.prompt_inputs(audio, lens))


def test_token_budget_follows_duration():
    cfg = GenerateConfig(tokens_per_second=4.0, base_tokens=3, max_new_tokens=20)
    assert token_budget(torch.tensor([0, 16000, 24000, 16000 * 60]), cfg) == [3, 7, 9, 20]


@pytest.mark.parametrize("beam", [1, 3])
def test_llm_batch_16_equals_batch_1(model, beam):
    """Masking bugs show up as hypotheses that change with the batch (WeNet #531)."""
    audio, lens = utterances(16)
    stops = model.prompt.stop_ids

    def run(a, n):
        step = llm(model, a, n)
        return greedy(step, [12] * len(n), stops) if beam == 1 else beam_search(step, [12] * len(n), stops, beam)
    batched = run(audio, lens)
    for i in range(16):
        alone = run(audio[i:i + 1, :lens[i]], lens[i:i + 1])[0]
        assert alone == batched[i], f"utterance {i} differs between batch 1 and batch 16"
    assert len({tuple(b.ids) for b in batched}) > 1  # the outputs do depend on the audio


def test_greedy_with_cache_equals_full_recompute(model):
    """The KV-cache loop gives the argmax path of recomputing the whole sequence every step."""
    audio, lens = utterances(3, seed=5)
    inputs = model.prompt_inputs(audio, lens)
    got = greedy(LLMStep(model.llm, inputs), [8, 8, 8], [-1])  # no stop token: always 8 tokens
    assert [g.ids for g in got] == _recompute_ids(model, inputs, 8)
    assert all(g.hit_limit for g in got)


def _recompute_ids(model, inputs, steps):
    emb, mask, pos = inputs["inputs_embeds"], inputs["attention_mask"], inputs["position_ids"]
    table = model.llm.get_input_embeddings()
    ids = []
    with torch.no_grad():
        for _ in range(steps):
            nxt = model.llm(inputs_embeds=emb, attention_mask=mask, position_ids=pos).logits[:, -1].argmax(-1)
            ids.append(nxt)
            emb = torch.cat([emb, table(nxt)[:, None]], 1)
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
            pos = torch.cat([pos, pos[:, -1:] + 1], 1)
    return torch.stack(ids, 1).tolist()


def test_each_row_stops_at_its_stop_token_or_budget(model):
    audio, lens = utterances(4, seed=2)
    free = greedy(llm(model, audio, lens), [10] * 4, [-1])
    stop = free[0].ids[2]  # make row 0's third token the stop token
    out = greedy(llm(model, audio, lens), [10, 10, 3, 10], [stop])
    assert out[0].ids == free[0].ids[:2] and not out[0].hit_limit
    for row in (1, 3):
        ref = free[row].ids
        cut = ref.index(stop) if stop in ref else 10
        assert out[row].ids == ref[:cut] and out[row].hit_limit == (stop not in ref)
    assert len(out[2].ids) <= 3


def test_beam_of_one_is_greedy(model):
    audio, lens = utterances(5, seed=3)
    stops = model.prompt.stop_ids
    assert beam_search(llm(model, audio, lens), [9] * 5, stops, 1) == greedy(llm(model, audio, lens), [9] * 5, stops)


def test_full_width_beam_finds_the_best_two_token_sequence(model):
    """With as many beams as tokens, two steps of beam search are exhaustive: the answer must be
    the best of all V^2 continuations, scored by full recomputation (so the per-beam cache
    reordering is checked too)."""
    audio, lens = utterances(2, seed=4)
    inputs = model.prompt_inputs(audio, lens)
    vocab = model.llm.config.vocab_size
    got = beam_search(LLMStep(model.llm, inputs), [2, 2], [-1], beam=vocab, length_penalty=0.0)
    table = model.llm.get_input_embeddings()
    with torch.no_grad():
        for r in range(2):
            emb, mask, pos = (inputs[k][r:r + 1] for k in ("inputs_embeds", "attention_mask", "position_ids"))
            first = model.llm(inputs_embeds=emb, attention_mask=mask, position_ids=pos).logits[0, -1].log_softmax(-1)
            tok = torch.arange(vocab)
            emb2 = torch.cat([emb.expand(vocab, -1, -1), table(tok)[:, None]], 1)
            mask2 = torch.cat([mask, torch.ones_like(mask[:, :1])], 1).expand(vocab, -1)
            pos2 = torch.cat([pos, pos[:, -1:] + 1], 1).expand(vocab, -1)
            second = model.llm(inputs_embeds=emb2, attention_mask=mask2, position_ids=pos2).logits[:, -1].log_softmax(-1)
            best = int((first[:, None] + second).flatten().argmax())
            assert got[r].ids == [best // vocab, best % vocab] and got[r].hit_limit


def test_zero3_callback_keeps_stepping_until_everyone_is_done(model):
    """A rank that finished keeps stepping while another rank is not done; its result is the same."""
    audio, lens = utterances(2, seed=6)
    calls = []

    def others_need_5_more(local_done):
        calls.append(local_done)
        return local_done and len(calls) >= 10
    for search in (lambda s, **kw: greedy(s, [3, 3], [-1], **kw),
                   lambda s, **kw: beam_search(s, [3, 3], [-1], 2, **kw)):
        calls.clear()
        alone = search(llm(model, audio, lens))
        assert search(llm(model, audio, lens), everyone_done=others_need_5_more) == alone
        assert len(calls) == 10 and calls[2:] == [True] * 8


# -- Whisper over given encoder states --------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_whisper(tiny_whisper_dir):
    from transformers import WhisperForConditionalGeneration, WhisperTokenizerFast

    return (WhisperForConditionalGeneration.from_pretrained(tiny_whisper_dir).eval(),
            WhisperTokenizerFast.from_pretrained(tiny_whisper_dir))


def states(n, seed=0, dim=32):
    return 10 * torch.randn(n, 1500, dim, generator=torch.Generator().manual_seed(seed))


def whisper_step(whisper, tok, s):
    return WhisperStep(whisper, s, tok.prefix_tokens, tok.eos_token_id)


@torch.no_grad()
def reference_greedy_decode(whisper, states: torch.Tensor, tokenizer, max_new_tokens: int = 128) -> list[str]:
    """The Whisper greedy decoder westkit had before the one decoding core (as it was, for
    this regression test): the demo's recorded table came from it, so the core must match it."""
    eot = tokenizer.eos_token_id
    prefix = torch.tensor([list(tokenizer.prefix_tokens)] * states.shape[0], device=states.device)
    out = whisper.model.decoder(input_ids=prefix, encoder_hidden_states=states, use_cache=True)
    ids = torch.zeros(states.shape[0], 0, dtype=torch.long, device=states.device)
    done = torch.zeros(states.shape[0], dtype=torch.bool, device=states.device)
    # the decoder has max_target_positions positions, the prefix uses some
    for _ in range(min(max_new_tokens, whisper.config.max_target_positions - prefix.shape[1])):
        logits = whisper.proj_out(out.last_hidden_state[:, -1])
        logits[:, eot + 1:] = -torch.inf  # special tokens (timestamps, task, language) after eot
        nxt = logits.argmax(-1).masked_fill(done, eot)
        ids = torch.cat([ids, nxt[:, None]], dim=1)
        done |= nxt == eot
        if bool(done.all()):
            break
        out = whisper.model.decoder(input_ids=nxt[:, None], encoder_hidden_states=states,
                                    past_key_values=out.past_key_values, use_cache=True)
    texts = []
    for row in ids.tolist():
        row = row[:row.index(eot)] if eot in row else row
        texts.append(tokenizer.decode(row, skip_special_tokens=True).strip())
    return texts


def test_whisper_greedy_is_token_identical_to_greedy_decode(tiny_whisper):
    greedy_decode = reference_greedy_decode
    whisper, tok = tiny_whisper
    s = states(6)
    for budget in (5, 128):  # 128 is past the decoder's 64 positions: the cap applies
        got = greedy(whisper_step(whisper, tok, s), [budget] * 6, [tok.eos_token_id])
        assert [tok.decode(g.ids, skip_special_tokens=True).strip() for g in got] == \
            greedy_decode(whisper, s, tok, max_new_tokens=budget)
        assert all(len(g.ids) <= min(budget, 64 - len(tok.prefix_tokens)) for g in got)
        assert all(t < tok.eos_token_id for g in got for t in g.ids)  # no special token emitted


@pytest.mark.parametrize("beam", [1, 3])
def test_whisper_batch_16_equals_batch_1(tiny_whisper, beam):
    whisper, tok = tiny_whisper
    s = states(16, seed=1)
    stop = [tok.eos_token_id]

    def run(x):
        step = whisper_step(whisper, tok, x)
        return greedy(step, [10] * len(x), stop) if beam == 1 else beam_search(step, [10] * len(x), stop, beam)
    batched = run(s)
    assert [run(s[i:i + 1])[0] for i in range(16)] == batched
    assert len({tuple(b.ids) for b in batched}) > 1
    if beam > 1:
        assert beam_search(whisper_step(whisper, tok, s), [10] * 16, stop, 1) == run_greedy(whisper, tok, s)


def run_greedy(whisper, tok, s):
    return greedy(whisper_step(whisper, tok, s), [10] * len(s), [tok.eos_token_id])


def test_real_whisper_greedy_equals_greedy_decode_on_real_speech(whisper_tiny_path):
    """whisper-tiny.en on real telephone speech and on the demo's specialised test voice: the
    recogniser's greedy search gives exactly the old decoder's transcripts (the demo's table)."""
    from westkit.data import corpora
    from westkit.data.loader import LoaderConfig, build_loader
    from westkit.decode.recognizers import WhisperRecognizer
    greedy_decode = reference_greedy_decode

    rec = WhisperRecognizer.load(whisper_tiny_path, GenerateConfig(tokens_per_second=0, base_tokens=128,
                                                                   max_new_tokens=128), "cpu", torch.float32)
    for name in ("asterisk-test", "special-test"):
        folder = corpora.make(name, limit=4, progress=False)
        batch = next(iter(build_loader(LoaderConfig(shards=[str(folder)], shuffle=False, num_workers=0,
                                                    max_batch_size=4, max_batch_seconds=1e9), train=False)))
        states = rec.encode(batch["audio"], batch["audio_lens"])
        new = rec.decode_states(states, batch["audio_lens"])
        assert [t.text for t in new] == greedy_decode(rec.whisper, states, rec.tokenizer, max_new_tokens=128)
        assert all(t.text for t in new) and not any(t.hit_limit for t in new)


@pytest.mark.parametrize("beam", [1, 3])
def test_logprobs_are_the_models_own_for_the_chosen_ids(tiny_whisper, beam):
    """Greedy and beam search return each chosen id's log-probability: the same numbers as one
    teacher-forced pass over the hypothesis (beam=1 gives greedy's numbers)."""
    whisper, tok = tiny_whisper
    s = states(4, seed=3)
    stop = [tok.eos_token_id]
    step = whisper_step(whisper, tok, s)
    got = greedy(step, [10] * 4, stop) if beam == 1 else beam_search(step, [10] * 4, stop, beam)
    prefix = list(tok.prefix_tokens)
    for i, g in enumerate(got):
        assert len(g.logprobs) == len(g.ids) > 0
        ids = torch.tensor([prefix + g.ids])
        with torch.no_grad():
            out = whisper.model.decoder(input_ids=ids, encoder_hidden_states=s[i:i + 1], use_cache=False)
            logits = whisper.proj_out(out.last_hidden_state)[0, len(prefix) - 1:-1]
        logits[:, tok.eos_token_id + 1:] = -torch.inf
        want = logits.log_softmax(-1).gather(1, torch.tensor(g.ids)[:, None])[:, 0]
        torch.testing.assert_close(torch.tensor(g.logprobs), want, atol=1e-4, rtol=0)
    if beam == 1:
        again = beam_search(whisper_step(whisper, tok, s), [10] * 4, stop, 1)
        for a, g in zip(again, got):
            assert a.logprobs == pytest.approx(g.logprobs, abs=1e-6)
