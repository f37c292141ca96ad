"""Whisper fine-tuning model (`westkit.models.whistle.WhisTLE` with a `WhisperFinetuneConfig`):
what each strategy trains, the encoder's trainable path, SpecAugment, QLoRA on CPU, and the
exports (merged HF folder, PEFT adapter, CTranslate2) from real whisper-tiny.en weights."""
from pathlib import Path

import numpy as np
import pytest
import torch

from westkit.models.whisper import WhisperAudioEncoder, spec_augment
from westkit.models.whistle import WhisperFinetuneConfig, WhisperLora, WhisTLE, frozen_states

ASTERISK = Path("/usr/share/asterisk/sounds/en")
PROMPTS = {"agent-pass": "Please enter your password, followed by the pound key.",
           "auth-thankyou": "Thank you.", "vm-goodbye": "Goodbye.",
           "conf-onlyperson": "You are currently the only person in this conference."}


def batch_of(whisper_tiny_path, names):
    from westkit.data.audio import read_audio
    from westkit.data.pipeline import collate
    from westkit.models.whisper import WhisperText, load_whisper_tokenizer

    if not ASTERISK.is_dir():
        pytest.skip("asterisk-core-sounds-en-g722 not installed")
    text = WhisperText(load_whisper_tokenizer(whisper_tiny_path))
    samples = [{"key": n, "audio": torch.from_numpy(read_audio(str(ASTERISK / f"{n}.g722"))), "text": PROMPTS[n],
                "lang": "en", "targets": text.targets(PROMPTS[n])} for n in names]
    return collate(samples)


def grads(model, prefix):
    return [n for n, p in model.named_parameters() if n.startswith(prefix) and p.grad is not None
            and p.grad.abs().sum() > 0]


@pytest.mark.parametrize("strategy,freeze,expect", [
    ("full", True, ["whisper.model.decoder.*"]), ("full", False, ["whisper.*"]),
    ("lora", True, ["whisper.*lora_*"]), ("qlora", False, ["whisper.*lora_*"])])
def test_trainable_patterns_follow_the_strategy(strategy, freeze, expect):
    assert WhisperFinetuneConfig(strategy=strategy, freeze_encoder=freeze).trainable_patterns() == expect


def test_config_errors_name_the_key():
    with pytest.raises(ValueError, match="adapter"):
        WhisperFinetuneConfig(strategy="full", export=["hf", "adapter"])
    with pytest.raises(ValueError, match="ct2 is converted from the hf folder"):
        WhisperFinetuneConfig(export=["ct2"])
    with pytest.raises(ValueError, match="unknown artifact 'onnx'"):
        WhisperFinetuneConfig(export=["onnx"])
    with pytest.raises(ValueError, match="whisper.lora"):
        WhisperLora(r=0)


def test_spec_augment_masks_real_frames_only():
    feats = torch.randn(2, 80, 300)
    lens = torch.tensor([300, 120])
    out = spec_augment(feats, lens, 2, 10, 2, 0.1, torch.Generator().manual_seed(0))
    assert not torch.equal(out, feats)
    assert torch.equal(out[1, :, 120:], feats[1, :, 120:])       # padding untouched
    again = spec_augment(feats, lens, 2, 10, 2, 0.1, torch.Generator().manual_seed(0))
    assert torch.equal(out, again)                              # seeded: reproducible
    assert torch.equal(spec_augment(feats, lens, 0, 10, 0, 0.1), feats)


@pytest.mark.slow
def test_encoder_trains_only_when_not_frozen(whisper_tiny_path):
    from westkit.train import freeze

    batch = batch_of(whisper_tiny_path, ["auth-thankyou", "vm-goodbye"])
    for freeze_encoder in (True, False):
        cfg = WhisperFinetuneConfig(model=whisper_tiny_path, freeze_encoder=freeze_encoder)
        model = WhisTLE.from_config(cfg)
        freeze(model, cfg.trainable_patterns())
        model.train()
        assert model.whisper.model.encoder.training is not freeze_encoder
        model(batch)["loss"].backward()
        enc = grads(model, "whisper.model.encoder.")
        assert (len(enc) > 0) is not freeze_encoder, enc[:3]
        assert grads(model, "whisper.model.decoder.")


@pytest.mark.slow
def test_frozen_path_is_unchanged(whisper_tiny_path):
    """The frozen encoder still gives exactly what WhisTLE stage 2 always used: no graph,
    states rounded through float16, identical with a trainable wrapper under no_grad."""
    batch = batch_of(whisper_tiny_path, ["agent-pass", "vm-goodbye"])
    model = WhisTLE.from_config(WhisperFinetuneConfig(model=whisper_tiny_path)).train()
    states = model.encoder_states(batch)
    assert not states.requires_grad
    assert torch.equal(states, frozen_states(model.audio_encoder, batch))
    trainable = WhisperAudioEncoder(model.whisper.model.encoder, pad_to_30s=True, trainable=True).eval()
    out, _ = trainable(batch["audio"], batch["audio_lens"])
    assert out.requires_grad
    with torch.no_grad():
        assert torch.equal(trainable(batch["audio"], batch["audio_lens"])[0].half().float(), states)


def test_spec_augment_changes_training_loss_not_eval(whisper_tiny_path):
    from westkit.models.whistle import SpecAugmentConfig

    batch = batch_of(whisper_tiny_path, ["agent-pass"])
    model = WhisTLE.from_config(WhisperFinetuneConfig(model=whisper_tiny_path,
                                                      spec_augment=SpecAugmentConfig(time_width=0.2)))
    with torch.no_grad():
        model.eval()
        a, b = model(batch)["loss"], model(batch)["loss"]
        model.train()
        torch.manual_seed(0)
        c = model(batch)["loss"]
    assert a == b and c != a


@pytest.mark.slow
def test_qlora_runs_forward_and_backward_on_cpu(whisper_tiny_path):
    pytest.importorskip("bitsandbytes")
    import bitsandbytes as bnb

    from westkit.train import freeze

    cfg = WhisperFinetuneConfig(model=whisper_tiny_path, strategy="qlora")
    model = WhisTLE.from_config(cfg)
    base = model.whisper.model.decoder.layers[0].self_attn.q_proj.base_layer
    assert isinstance(base, bnb.nn.Linear4bit) and base.weight.quant_state.quant_type == "nf4"
    names = freeze(model, cfg.trainable_patterns())
    assert names and all("lora_" in n for n in names)
    batch = batch_of(whisper_tiny_path, ["agent-pass", "auth-thankyou"])
    loss = model.train()(batch)["loss"]
    assert 0 < loss.item() < 2              # a 4-bit whisper-tiny.en still knows these prompts
    loss.backward()
    assert grads(model, "whisper.model.decoder.") and not grads(model, "whisper.model.encoder.")


@pytest.mark.slow
def test_qlora_live_eval_matches_merged_export(whisper_tiny_path, tmp_path, monkeypatch):
    """A few QLoRA steps, then the recipe's training-time evaluation (the live 4-bit model
    through `WhisperRecognizer`) scores what the merged export (float32 base + adapter) scores.
    The host is made to look like one with AVX512-BF16, where bitsandbytes 0.50 switches eval-mode
    ``Linear4bit`` layers to a repacked bfloat16 kernel (the cause of the 169% live WER);
    `same_4bit_path_in_eval` must keep them on the training path."""
    pytest.importorskip("bitsandbytes")
    import bitsandbytes.nn.modules as bnb_modules

    from westkit.decode.recognizers import WhisperRecognizer
    from westkit.decode.scoring import WERAccumulator
    from westkit.decode.search import GenerateConfig
    from westkit.models.whisper import load_whisper
    from westkit.train import freeze

    monkeypatch.setattr(bnb_modules, "has_avx512bf16", lambda: True)
    cfg = WhisperFinetuneConfig(model=whisper_tiny_path, strategy="qlora")
    model = WhisTLE.from_config(cfg)
    freeze(model, cfg.trainable_patterns())
    batch = batch_of(whisper_tiny_path, list(PROMPTS))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    torch.manual_seed(0)
    for _ in range(3):
        model.train()(batch)["loss"].backward()
        opt.step()
        opt.zero_grad()

    def wer(whisper, tokenizer) -> float:
        hyps = WhisperRecognizer(whisper, tokenizer, GenerateConfig(max_new_tokens=32))(batch["audio"], batch["audio_lens"])
        return WERAccumulator().add(batch["texts"], [h.text for h in hyps]).result().wer

    model.eval()
    with torch.no_grad():
        live = wer(model.whisper, model.tokenizer)
    state = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    model.export(tmp_path, state)
    merged = wer(*load_whisper(str(tmp_path / "hf")))
    assert merged < 0.3, merged            # the export is still a recogniser of these prompts
    assert abs(live - merged) <= 0.1, (live, merged)


def _nudged_lora(whisper_tiny_path, strategy="lora"):
    """A LoRA model whose adapters are not zero (as after training), and its export state."""
    cfg = WhisperFinetuneConfig(model=whisper_tiny_path, strategy=strategy, export=["hf", "adapter", "ct2"],
                                lora=WhisperLora(r=4, alpha=8, target_modules=["q_proj", "v_proj", "fc1"]))
    model = WhisTLE.from_config(cfg)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    state = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}
    return model, state


@pytest.mark.slow
def test_exports_merged_adapter_and_ct2_agree(whisper_tiny_path, tmp_path):
    """The merged HF folder equals base + adapter (PEFT), and CTranslate2's conversion of it
    gives the same greedy tokens on real speech as our decoder on the merged folder."""
    ctranslate2 = pytest.importorskip("ctranslate2")
    from peft import PeftModel
    from transformers import WhisperForConditionalGeneration

    from westkit.decode.recognizers import WhisperRecognizer
    from westkit.decode.search import GenerateConfig
    from westkit.models.whisper import load_whisper

    model, state = _nudged_lora(whisper_tiny_path)
    written = model.export(tmp_path, state)
    assert [p.name for p in written] == ["adapter", "hf", "ct2"]
    merged = WhisperForConditionalGeneration.from_pretrained(tmp_path / "hf")
    assert not any("lora" in k for k in merged.state_dict())
    peft = PeftModel.from_pretrained(WhisperForConditionalGeneration.from_pretrained(whisper_tiny_path),
                                     tmp_path / "adapter").merge_and_unload()
    for k, v in merged.state_dict().items():
        assert torch.allclose(v, peft.state_dict()[k], atol=1e-6), k
    base = WhisperForConditionalGeneration.from_pretrained(whisper_tiny_path)
    assert not torch.equal(merged.model.decoder.layers[0].fc1.weight, base.model.decoder.layers[0].fc1.weight)

    batch = batch_of(whisper_tiny_path, list(PROMPTS))
    whisper, tok = load_whisper(str(tmp_path / "hf"))
    ours = WhisperRecognizer(whisper, tok, GenerateConfig(max_new_tokens=64))(batch["audio"], batch["audio_lens"])
    ct2 = ctranslate2.models.Whisper(str(tmp_path / "ct2"), device="cpu", compute_type="float32")
    from transformers import WhisperFeatureExtractor
    fe = WhisperFeatureExtractor.from_pretrained(tmp_path / "hf")
    audio = [batch["audio"][i, :n].numpy() for i, n in enumerate(batch["audio_lens"].tolist())]
    feats = fe(audio, sampling_rate=16000, return_tensors="np").input_features.astype(np.float32)
    res = ct2.generate(ctranslate2.StorageView.from_array(np.ascontiguousarray(feats)),
                       [list(tok.prefix_tokens)] * len(audio), beam_size=1, max_length=64)
    theirs = [r.sequences_ids[0] for r in res]
    assert [t.ids for t in ours] == theirs
    texts = dict(zip(batch["keys"], (t.text.lower() for t in ours)))
    assert "password" in texts["agent-pass"]     # still a speech recogniser after the nudge
