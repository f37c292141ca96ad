"""The dense SmolLM2 folder is the wheel's GGUF model, and it answers like an instruct model."""
import pytest
import torch

QUESTIONS = [("What is the capital of France?", "Paris"), ("What is the chemical symbol for gold?", "Au")]


def _answer(model, tok, question: str) -> str:
    inputs = tok.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                     return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=16, do_sample=False)
    return tok.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)


def test_answers_factual_questions(smollm2_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2_path)
    model = AutoModelForCausalLM.from_pretrained(smollm2_path).eval()
    for question, answer in QUESTIONS:
        reply = _answer(model, tok, question)
        assert answer in reply.split() or f"{answer}." in reply.split(), (question, reply)


@pytest.mark.slow
def test_same_logits_and_tokens_as_the_gguf(smollm2_path):
    """Loading the GGUF directly and loading our folder give the same tokens and logits."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    from westkit.assets import smollm2

    src = smollm2.wheel_file()
    ref = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name, dtype=torch.float32,
                                               quantization_config=GgufConfig(dequantize=True)).eval()
    ref_tok = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
    model = AutoModelForCausalLM.from_pretrained(smollm2_path).eval()
    tok = AutoTokenizer.from_pretrained(smollm2_path)

    chat = [{"role": "user", "content": "Spell 'Weasels have eaten our phone system', then count to 3."}]
    ids = tok.apply_chat_template(chat, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    ref_ids = ref_tok.apply_chat_template(chat, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    assert ids["input_ids"].tolist() == ref_ids["input_ids"].tolist()
    with torch.no_grad():
        torch.testing.assert_close(model(**ids).logits, ref(**ids).logits, rtol=0, atol=0)
