"""LoRA on the LLM: export writes the PEFT adapter (lora/) and, with export_merged, the merged
LLM (merged/), both giving the trained model's logits."""
import pytest
import torch

from westkit.models.projector import ProjectorConfig
from westkit.models.west import AUDIO, LoraSettings, WestConfig, WestModel, char_tokenizer, tiny_random


def test_export_writes_adapter_and_merged_llm_with_the_trained_logits(tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    cfg = WestConfig(projector=ProjectorConfig(rate=2, hidden=64), system=None, prompt=f"hear {AUDIO}",
                     lora=LoraSettings(r=2, target_modules=["q_proj", "v_proj"]), export_merged=True)
    plain = tiny_random(WestConfig(projector=cfg.projector, system=None, prompt=cfg.prompt), seed=1)
    plain.llm.save_pretrained(tmp_path / "base")
    m = WestModel.assemble(cfg, plain.encoder, plain.llm, char_tokenizer()).eval()
    m.llm_path = str(tmp_path / "base")
    torch.manual_seed(0)
    with torch.no_grad():   # a "trained" adapter: B is zero at init, which would hide a lost delta
        for n, p in m.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    state = {n: p.detach() for n, p in m.named_parameters() if "lora_" in n or n.startswith("projector.")}
    written = m.export(tmp_path / "run", state)
    assert [p.name for p in written] == ["lora", "merged"]
    ids = torch.tensor([[5, 9, 12, 40, 41]])
    with torch.no_grad():
        want = m.llm(input_ids=ids).logits
        base = AutoModelForCausalLM.from_pretrained(tmp_path / "base")
        assert not torch.allclose(base(input_ids=ids).logits, want, atol=1e-4)  # the adapter matters
        adapter = PeftModel.from_pretrained(base, tmp_path / "run" / "lora")(input_ids=ids).logits
        merged = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "merged")
        assert not any("lora" in n for n, _ in merged.named_parameters())
        torch.testing.assert_close(adapter, want, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(merged(input_ids=ids).logits, want, atol=1e-5, rtol=1e-4)


def test_merged_export_needs_a_model_built_from_its_config():
    cfg = WestConfig(projector=ProjectorConfig(rate=2, hidden=64), system=None, prompt=f"hear {AUDIO}",
                     lora=LoraSettings(r=2), export_merged=True)
    m = tiny_random(cfg)
    with pytest.raises(ValueError, match="model.export_merged"):
        m.export(__import__("pathlib").Path("/tmp/h15_never"), {})
