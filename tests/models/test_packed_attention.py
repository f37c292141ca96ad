"""Per-utterance sdpa for packed sequences: the block-diagonal mask's numbers, and the path the
packed WeST forward really takes."""
import dataclasses

import pytest
import torch
from transformers import AttentionInterface

from tests.models.test_west import SHORT, make_batch
from westkit.models import packed_attention
from westkit.models.packed_attention import PACKED_SDPA, packed_kwargs, packed_sdpa_attention
from westkit.models.west import tiny_random


class GQA(torch.nn.Module):
    num_key_value_groups = 2  # 4 query heads share 2 key/value heads, as Qwen2 / SmolLM2 do
    is_causal = True


def block_causal(lengths):
    n = sum(lengths)
    seg = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))
    pos = torch.arange(n)
    return ((seg[:, None] == seg[None, :]) & (pos[:, None] >= pos[None, :]))[None, None]


def test_per_utterance_attention_equals_the_block_diagonal_mask():
    lengths = [3, 6, 1, 4]
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 4, sum(lengths), 8, generator=g)
    k, v = (torch.randn(1, 2, sum(lengths), 8, generator=g) for _ in range(2))
    kw = packed_kwargs(torch.tensor(lengths))
    assert kw["cu_seq_lens_q"].tolist() == [0, 3, 9, 10, 14] and kw["max_length_q"] == 6
    got, _ = packed_sdpa_attention(GQA(), q, k, v, None, scaling=8 ** -0.5, **kw)
    rep = lambda t: t.repeat_interleave(2, dim=1)  # noqa: E731
    want = torch.nn.functional.scaled_dot_product_attention(q, rep(k), rep(v), attn_mask=block_causal(lengths))
    torch.testing.assert_close(got, want.transpose(1, 2), rtol=1e-5, atol=1e-6)
    # the whole sequence as one causal utterance differs: the boundaries are what is tested
    whole, _ = packed_sdpa_attention(GQA(), q, k, v, None, scaling=8 ** -0.5)
    assert not torch.allclose(whole, got, atol=1e-3)


@pytest.fixture
def spy(monkeypatch):
    """Records, per attention call of the tiny LLM, whether the utterance boundaries came."""
    calls = []

    def record(module, q, k, v, mask, cu_seq_lens_q=None, **kw):
        calls.append(None if cu_seq_lens_q is None else cu_seq_lens_q.tolist())
        return packed_sdpa_attention(module, q, k, v, mask, cu_seq_lens_q=cu_seq_lens_q, **kw)

    monkeypatch.setitem(AttentionInterface._global_mapping, PACKED_SDPA, record)
    monkeypatch.setattr(packed_attention, "packed_sdpa_attention", record)
    return calls


def test_packed_forward_attends_per_utterance_and_unpacked_forward_is_plain_sdpa(spy):
    batch = make_batch([12000, 5000, 16000], ["one two", "three", "four five six"], seed=1)
    model = tiny_random(dataclasses.replace(SHORT, pack=True), seed=4)
    assert model.llm.config._attn_implementation == PACKED_SDPA
    packed = model(batch)
    lengths = model.prompt_inputs(batch["audio"], batch["audio_lens"],
                                  [r[:n].tolist() for r, n in zip(batch["targets"], batch["target_lens"])]
                                  )["attention_mask"].sum(-1).tolist()
    cu = [0] + torch.tensor(lengths).cumsum(0).tolist()
    assert spy == [cu, cu]  # both layers, the three utterances' boundaries
    spy.clear()
    model.pack = False
    padded = model(batch)
    assert spy == [None, None]
    torch.testing.assert_close(packed["loss"], padded["loss"], rtol=1e-5, atol=1e-6)


def test_only_sdpa_models_switch():
    model = tiny_random(SHORT)
    assert model.llm.config._attn_implementation == "sdpa"  # pack off: untouched
    model.llm.set_attn_implementation("eager")
    assert not packed_attention.use_packed_sdpa(model.llm)
    assert model.llm.config._attn_implementation == "eager"


def test_a_packed_model_decodes_a_padded_batch_like_its_unpacked_twin(spy):
    """Decoding (left padding, KV cache) passes no boundaries: the switched attention is plain
    sdpa with sdpa's masks, so hypotheses and their log-probabilities are unchanged."""
    from westkit.decode.search import LLMStep, beam_search, greedy

    batch = make_batch([12000, 5000, 16000], ["one two", "three", "four five six"], seed=2)
    plain = tiny_random(SHORT, seed=4).eval()
    packed = tiny_random(dataclasses.replace(SHORT, pack=True), seed=4).eval()
    assert packed.llm.config._attn_implementation == PACKED_SDPA
    runs = {}
    for name, m in (("plain", plain), ("packed", packed)):
        def step():
            return LLMStep(m.llm, m.prompt_inputs(batch["audio"], batch["audio_lens"]))
        runs[name] = (greedy(step(), [8] * 3, m.prompt.stop_ids),
                      beam_search(step(), [8] * 3, m.prompt.stop_ids, 3))
    assert spy and set(spy) == {None}  # the packed model's attention ran, without boundaries
    for got, want in zip(runs["packed"], runs["plain"]):
        assert got == want  # ids and budget cuts
        torch.testing.assert_close([h.logprobs for h in got], [h.logprobs for h in want])
