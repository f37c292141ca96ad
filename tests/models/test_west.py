"""WeST model on a tiny random configuration: prompt layout, labels, masks, loss, learning to stop."""
import fnmatch

import pytest
import torch

from westkit.data.pipeline import collate, tokenize
from westkit.models.projector import ProjectorConfig
from westkit.models.west import AUDIO, ChatPrompt, LoraSettings, WestConfig, char_tokenizer, tiny_random

SHORT = WestConfig(projector=ProjectorConfig(rate=2, hidden=64), system=None, prompt=f"hear {AUDIO}")


def make_batch(lens, texts, seed=0, prompt=None):
    """A batch as the recipe's loader makes it: audio, and targets from the pipeline's
    tokenize step with the model's prompt (collated: targets, target_lens, num_targets)."""
    g = torch.Generator().manual_seed(seed)
    lens = torch.tensor(lens)
    audio = torch.zeros(len(lens), int(lens.max()))
    for i, n in enumerate(lens.tolist()):
        audio[i, :n] = torch.randn(n, generator=g) * 0.1
    batch = {"audio": audio, "audio_lens": lens, "texts": list(texts)}
    # every tiny model shares the char tokenizer, so one prompt's targets fit them all
    step = tokenize("targets", (prompt or ChatPrompt(char_tokenizer(), f"hear {AUDIO}", None)).target)
    tok = collate([step({"key": str(i), "text": t, "lang": ""}) for i, t in enumerate(texts)])
    batch.update({k: tok[k] for k in ("targets", "target_lens", "num_targets")})
    return batch


@pytest.fixture(scope="module")
def model():
    return tiny_random(SHORT).eval()


def test_prompt_comes_from_the_chat_template(model):
    tok = model.prompt.tokenizer
    want = tok.apply_chat_template([{"role": "user", "content": f"hear {AUDIO}"}],
                                   add_generation_prompt=True, tokenize=False)
    got = tok.decode(model.prompt.prefix) + AUDIO + tok.decode(model.prompt.suffix)
    assert got == want
    assert model.prompt.eot == tok.convert_tokens_to_ids("<|im_end|>")


def test_prompt_needs_exactly_one_audio_placeholder():
    with pytest.raises(ValueError, match="model.prompt"):
        ChatPrompt(char_tokenizer(), "transcribe this", None)


def test_layout_labels_only_transcript_and_end_of_turn_even_when_pad_is_eos():
    """SmolLM2/Qwen2 ship pad = eos: the end-of-turn target must still carry loss."""
    tok = char_tokenizer()
    tok.pad_token = tok.eos_token
    m = tiny_random(SHORT)
    m.prompt = ChatPrompt(tok, SHORT.prompt, None)
    m.pad_id = tok.pad_token_id
    assert m.pad_id == m.prompt.eot
    targets = [m.prompt.target("ab"), m.prompt.target("hello")]
    ids, is_audio, mask, pos, labels = m.layout([3, 5], targets)
    for row, t in enumerate(targets):
        got = labels[row][labels[row] != -100].tolist()
        assert got == t and got[-1] == m.prompt.eot
        n = int(mask[row].sum())
        assert mask[row, -n:].all() and not mask[row, :-n].any()          # left padding
        assert pos[row, -n:].tolist() == list(range(n))                     # positions start at 0
        assert int(is_audio[row].sum()) == [3, 5][row]
    # loss is never on prompt, audio or padding positions
    assert not (labels != -100)[is_audio | (mask == 0)].any()
    prompt_len = len(m.prompt.prefix) + len(m.prompt.suffix)
    assert int((labels != -100).sum()) == sum(map(len, targets))
    assert ids.shape[1] == prompt_len + 5 + len(targets[1])


def test_audio_frames_follow_each_utterance_length(model):
    batch = make_batch([16000, 4000, 8160], ["a", "b", "c"])
    emb, n = model.audio_embeddings(batch["audio"], batch["audio_lens"])
    # 100 log-mel frames per second -> 50 encoder states -> / rate 2
    expected = [-(-((n_samples // 160 + 1) // 2) // 2) for n_samples in (16000, 4000, 8160)]
    assert n.tolist() == expected
    inputs = model.prompt_inputs(batch["audio"], batch["audio_lens"])
    assert inputs["inputs_embeds"].shape[1] == len(model.prompt.prefix) + len(model.prompt.suffix) + max(expected)


def test_loss_is_token_mean_and_independent_of_batching(model):
    texts = ["one two", "three", "four five six"]
    batch = make_batch([12000, 5000, 16000], texts)
    out = model(batch)
    assert int(out["num_tokens"]) == sum(len(t) + 1 for t in texts) == batch["num_targets"]
    total = 0.0
    for i in range(3):
        n = int(batch["audio_lens"][i])
        one = model({"audio": batch["audio"][i:i + 1, :n], "audio_lens": batch["audio_lens"][i:i + 1],
                     "targets": batch["targets"][i:i + 1], "target_lens": batch["target_lens"][i:i + 1],
                     "texts": [texts[i]]})
        total += float(one["loss"].detach()) * int(one["num_tokens"])
    assert float(out["loss"]) == pytest.approx(total / int(out["num_tokens"]), rel=1e-5)
    assert 0 < float(out["audio_padding"]) < 1 and 0 < float(out["llm_padding"]) < 1
    assert float(out["audio_seconds"]) == pytest.approx(33000 / 16000)


def test_gradients_reach_projector_not_encoder():
    m = tiny_random(SHORT).train()
    m(make_batch([8000, 6000], ["ab", "cd"]))["loss"].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in m.projector.parameters())
    assert all(p.grad is None for p in m.encoder.parameters())


def test_lora_parameters_are_named_for_the_trainable_patterns():
    cfg = WestConfig(projector=SHORT.projector, system=None, prompt=SHORT.prompt,
                     lora=LoraSettings(r=2, target_modules=["q_proj", "v_proj"]))
    m = tiny_random(cfg)
    names = [n for n, _ in m.named_parameters()]
    lora = [n for n in names if fnmatch.fnmatch(n, "llm.*lora_*")]
    assert len(lora) == 2 * 2 * 2  # layers x (q, v) x (A, B)
    m(make_batch([8000], ["ab"]))["loss"].backward()
    assert all(p.grad is not None for n, p in m.named_parameters() if n in lora)


def test_learns_to_stop():
    """Trained on two utterances, greedy decoding reproduces each transcript and then emits the
    end-of-turn token instead of running to its budget (WeST v1's pad = eos never stopped).
    The two prompts differ only in their audio, so this also fails for a model that ignores it."""
    from westkit.decode.search import LLMStep, greedy

    torch.manual_seed(0)
    m = tiny_random(SHORT, dim=48)
    texts = ["yes", "no no"]
    batch = make_batch([6000, 9000], texts, seed=3)
    opt = torch.optim.AdamW([p for n, p in m.named_parameters() if not n.startswith("encoder.")], lr=3e-3)
    for _ in range(150):
        loss = m(batch)["loss"]
        loss.backward()
        opt.step()
        opt.zero_grad()
    m.eval()
    out = greedy(LLMStep(m.llm, m.prompt_inputs(batch["audio"], batch["audio_lens"])), [20, 20], m.prompt.stop_ids)
    assert [m.prompt.decode(o.ids) for o in out] == texts
    assert not any(o.hit_limit for o in out)


def test_runs_after_a_bf16_cast():
    """Mixed-precision engines cast the whole module; the log-mel front end stays float32."""
    m = tiny_random(SHORT).to(torch.bfloat16)
    out = m(make_batch([8000, 5000], ["ab", "c"]))
    assert torch.isfinite(out["loss"]) and out["loss"].dtype == torch.float32
    assert m.encoder.logmel.filters.dtype == torch.float32


def test_packed_loss_equals_the_padded_loss_and_gradients_match():
    """pack: the batch's utterances in one sequence, positions restarting per utterance (a
    block-diagonal causal mask): same loss and projector gradients as the left-padded batch."""
    import dataclasses

    texts = ["one two", "three", "four five six"]
    batch = make_batch([12000, 5000, 16000], texts, seed=1)
    padded = tiny_random(SHORT, seed=4)
    packed = tiny_random(dataclasses.replace(SHORT, pack=True), seed=4)
    assert packed.pack and not padded.pack
    outs = []
    for m in (padded, packed):
        out = m(batch)
        out["loss"].backward()
        outs.append((out, m.projector.out.weight.grad.clone()))
    (a, ga), (b, gb) = outs
    assert int(a["num_tokens"]) == int(b["num_tokens"]) == batch["num_targets"]
    torch.testing.assert_close(b["loss"], a["loss"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gb, ga, rtol=1e-4, atol=1e-6)
    assert float(b["llm_padding_packed"]) == 0 and float(b["llm_padding"]) > 0

