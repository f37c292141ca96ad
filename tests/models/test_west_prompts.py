"""WeST prompts: the plain format for base LLMs (learns to stop on eos), per-utterance
instruction and context from the shard json through the loader into the LLM input, seeded
instruction sampling, and transcribe(audio, instruction=, context=)."""
import json

import pytest
import torch

from westkit.data.loader import LoaderConfig, build_loader
from westkit.data.pipeline import collate, parse_meta, prompt_tokens, tokenize
from westkit.data.shards import Entry, write_shards
from westkit.decode.recognizers import WestRecognizer
from westkit.decode.search import GenerateConfig
from westkit.models.projector import ProjectorConfig
from westkit.models.west import AUDIO, ChatPrompt, PlainPrompt, WestConfig, char_tokenizer, tiny_random

PROJ = ProjectorConfig(rate=2, hidden=64)
CONTEXT = WestConfig(projector=PROJ, system=None, prompt="{context}{instruction} " + AUDIO,
                     instructions=["Transcribe:", "Write down:", "Listen:"])


def base_tokenizer():
    """The char tokenizer as a base model's: no chat template, pad = eos (like Qwen2-1.5B)."""
    tok = char_tokenizer()
    tok.chat_template = None
    tok.pad_token = tok.eos_token
    return tok


def waves(lens, seed=0):
    g = torch.Generator().manual_seed(seed)
    audio = torch.zeros(len(lens), max(lens))
    for i, n in enumerate(lens):
        audio[i, :n] = torch.randn(n, generator=g) * 0.1
    return audio, torch.tensor(lens)


def samples(texts, **fields):
    return [{"key": f"u{i}", "text": t, "lang": "", **{k: v[i] for k, v in fields.items()}}
            for i, t in enumerate(texts)]


def batch_for(model, lens, texts, seed=0, **fields):
    steps = [tokenize("targets", model.prompt.target), prompt_tokens(model.prompt.for_sample)]
    rows = samples(texts, **fields)
    for step in steps:
        rows = [step(r) for r in rows]
    audio, audio_lens = waves(lens, seed)
    return dict(collate(rows), audio=audio, audio_lens=audio_lens)


def test_a_base_model_without_chat_template_needs_the_plain_format():
    tok = base_tokenizer()
    with pytest.raises(ValueError, match="prompt_format: plain"):
        ChatPrompt(tok, f"hear {AUDIO}", None)
    p = PlainPrompt(tok, f"Audio: {AUDIO} Transcript:", "You transcribe.")
    assert tok.decode(p.prefix) == "You transcribe.\n\nAudio: "
    assert tok.decode(p.suffix) == " Transcript:\n"
    assert p.eot == tok.eos_token_id == tok.pad_token_id and p.stop_ids == [p.eot]
    assert p.target("ab")[-1] == p.eot


def test_plain_format_on_a_base_model_learns_to_stop():
    """pad = eos, no chat template: loss on transcript + eos, and greedy stops after the text."""
    from westkit.decode.search import LLMStep, greedy

    cfg = WestConfig(projector=PROJ, system=None, prompt=f"Audio: {AUDIO} Transcript:", prompt_format="plain")
    torch.manual_seed(0)
    m = tiny_random(cfg, dim=48)
    m.prompt, m.pad_id = PlainPrompt(base_tokenizer(), cfg.prompt, None), base_tokenizer().pad_token_id
    texts = ["yes", "no no"]
    b = batch_for(m, [6000, 9000], texts, seed=3)
    labels = m.layout([3, 5], [m.prompt.target(t) for t in texts])[4]
    assert [row[row != -100].tolist()[-1] for row in labels] == [m.prompt.eot] * 2
    opt = torch.optim.AdamW([p for n, p in m.named_parameters() if not n.startswith("encoder.")], lr=3e-3)
    for _ in range(150):
        m(b)["loss"].backward()
        opt.step()
        opt.zero_grad()
    m.eval()
    out = greedy(LLMStep(m.llm, m.prompt_inputs(b["audio"], b["audio_lens"])), [20, 20], m.prompt.stop_ids)
    assert [m.prompt.decode(o.ids) for o in out] == texts
    assert not any(o.hit_limit for o in out)


@pytest.mark.parametrize("fmt", ["chat", "plain"])
def test_context_reaches_the_llm_input_right_before_the_instruction_and_audio(fmt):
    import dataclasses

    cfg = dataclasses.replace(CONTEXT, prompt_format=fmt)
    m = tiny_random(cfg).eval()
    if fmt == "plain":
        m.prompt = PlainPrompt(base_tokenizer(), cfg.prompt, None, instructions=cfg.instructions)
    tok = m.prompt.tokenizer
    prefix, suffix = m.prompt.render("Write down:", "Zorbex, Quilvane")
    assert tok.decode(prefix).endswith("Context: Zorbex, Quilvane\nWrite down: ")
    audio, lens = waves([8000, 6000])
    prompts = [m.prompt.render(), (prefix, suffix)]
    ids, is_audio, mask, pos, _ = m.layout([3, 2], prompts=prompts)
    row, first_audio = ids[1], int(is_audio[1].nonzero()[0])
    assert row[first_audio - len(prefix):first_audio].tolist() == prefix   # context just before the audio
    assert row[first_audio + 2:].tolist() == suffix
    assert "Zorbex" not in tok.decode(ids[0][mask[0].bool()])                # row 0 has no context
    # and what the LLM gets at those positions is the embedding of those very tokens
    with torch.no_grad():
        emb = m.prompt_inputs(audio, lens, prompts=prompts)["inputs_embeds"]
        n = int(m.audio_embeddings(audio, lens)[1][1])
        start = emb.shape[1] - len(suffix) - n - len(prefix)
        want = m.llm.get_input_embeddings()(torch.tensor(prefix))
    torch.testing.assert_close(emb[1, start:start + len(prefix)], want)


def test_rows_with_different_prompts_lose_as_they_would_alone():
    m = tiny_random(CONTEXT).eval()
    texts = ["one two", "three"]
    b = batch_for(m, [12000, 5000], texts, context=["Zorbex", None], instruction=[None, "Spell it:"])
    assert b["contexts"] == ["Zorbex", None] and b["instructions"] == [None, "Spell it:"]
    out, total = m(b), 0.0
    for i in range(2):
        n = int(b["audio_lens"][i])
        one = {"audio": b["audio"][i:i + 1, :n], "audio_lens": b["audio_lens"][i:i + 1],
               "targets": b["targets"][i:i + 1], "target_lens": b["target_lens"][i:i + 1],
               "prompts": b["prompts"][i:i + 1]}
        total += float(m(one)["loss"].detach()) * int(b["target_lens"][i])
    assert float(out["loss"]) == pytest.approx(total / b["num_targets"], rel=1e-5)
    # the prompt changes the loss: without the per-row prompts the numbers differ
    assert float(m(dict(b, prompts=None))["loss"]) != pytest.approx(float(out["loss"]), rel=1e-6)


def test_instructions_are_sampled_by_key_and_seed_and_an_utterances_own_wins():
    p = ChatPrompt(char_tokenizer(), CONTEXT.prompt, None, instructions=CONTEXT.instructions)
    tok = p.tokenizer

    def chosen(prompt, key, **extra):
        return next(i for i in CONTEXT.instructions if i in tok.decode(prompt.for_sample({"key": key, **extra})[0]))
    keys = [f"utt{i}" for i in range(60)]
    picks = [chosen(p, k) for k in keys]
    assert set(picks) == set(CONTEXT.instructions)                            # all of them get used
    assert picks == [chosen(p, k) for k in keys]                              # same on every call (resume)
    other = ChatPrompt(char_tokenizer(), CONTEXT.prompt, None, instructions=CONTEXT.instructions,
                       instruction_seed=1)
    assert picks != [chosen(other, k) for k in keys]                          # the seed matters
    assert "Say it" in tok.decode(p.for_sample({"key": "utt0", "instruction": "Say it"})[0])
    with pytest.raises(ValueError, match="model.instructions"):
        ChatPrompt(char_tokenizer(), f"hear {AUDIO}", None, instructions=["x"])


def test_instruction_and_context_travel_from_shard_json_to_the_batch(tmp_path):
    from tests.data.data_helpers import Tone

    entries = [Entry(key="a", text="aspirin", audio=Tone(1.0), extra={"context": "aspirin, ibuprofen"}),
               Entry(key="b", text="vega", audio=Tone(1.2), extra={"instruction": "Spell it:"})]
    write_shards(entries, tmp_path / "s", workers=1, progress=False)
    m = tiny_random(CONTEXT)
    loader = build_loader(LoaderConfig(shards=[str(tmp_path / "s")], shuffle=False, num_workers=0,
                                       min_duration=0.0), train=False,
                          steps=[tokenize("targets", m.prompt.target), prompt_tokens(m.prompt.for_sample)])
    (batch,) = list(loader)
    got = {k: (c, i) for k, c, i in zip(batch["keys"], batch["contexts"], batch["instructions"])}
    assert got == {"a": ("aspirin, ibuprofen", None), "b": (None, "Spell it:")}
    prompts = dict(zip(batch["keys"], batch["prompts"]))
    assert "Context: aspirin, ibuprofen" in m.prompt.tokenizer.decode(prompts["a"][0])
    assert torch.isfinite(m(batch)["loss"])
    raw = {"key": "x", "json": json.dumps({"text": "t", "context": "c"}).encode()}
    assert parse_meta(raw)["context"] == "c" and "instruction" not in parse_meta(raw)


def test_transcribe_puts_instruction_and_context_in_the_prompt():
    m = tiny_random(CONTEXT).eval()
    rec = WestRecognizer(m, GenerateConfig(max_new_tokens=4))
    seen = []
    real = m.prompt_inputs
    m.prompt_inputs = lambda a, l, targets=None, prompts=None: seen.append(prompts) or real(a, l, targets, prompts)
    audio, lens = waves([8000, 5000])
    one = rec.transcribe(audio[0], instruction="Spell it:", context="Zorbex")
    many = rec.transcribe([audio[0], audio[1, :5000].numpy()], context="Zorbex")
    assert isinstance(one, str) and isinstance(many, list) and len(many) == 2
    tok = m.prompt.tokenizer
    assert tok.decode(seen[0][0][0]).endswith("Context: Zorbex\nSpell it: ")
    assert tok.decode(seen[1][1][0]).endswith("Context: Zorbex\nTranscribe: ")   # default: first instruction


def test_recognizer_takes_each_rows_context_from_the_batch():
    m = tiny_random(CONTEXT).eval()
    rec = WestRecognizer(m, GenerateConfig(max_new_tokens=4))
    got = rec.batch_prompts({"keys": ["a", "b"], "contexts": ["Zorbex", None], "instructions": [None, "Spell:"]})
    tok = m.prompt.tokenizer
    assert tok.decode(got[0][0]).endswith("Context: Zorbex\nTranscribe: ") and tok.decode(got[1][0]).endswith("Spell: ")
    assert WestRecognizer(tiny_random().eval(), GenerateConfig()).batch_prompts({"keys": ["a"], "contexts": ["x"]}) is None
