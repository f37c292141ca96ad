"""WeST / SLAM-ASR: a frozen speech encoder, a trainable projector and a (frozen) causal LLM.

The encoder is any of `westkit.models.encoders.ENCODERS` (Whisper of any size; wav2vec2,
HuBERT, MMS), the prompt format any of `PROMPTS` (the LLM's own chat template, or a plain
prompt for base models). One utterance becomes one prompt::

    <prompt prefix ids> <audio embeddings, one per projector frame> <prompt suffix ids> | <transcript ids> <end>

where the prompt holds the placeholder ``<audio>`` (and optionally ``{instruction}`` and
``{context}``, filled per utterance by the data pipeline). Loss is on the transcript and the
end token only; the end target is never masked, even when the tokenizer's pad token is the
same token (SmolLM2, Qwen2: pad = eos), because which positions are padding comes from the
lengths, never from token ids. Batches are left-padded with explicit position ids, the same
layout for training and generation, so a row's numbers do not depend on its neighbours; with
``pack`` the rows are concatenated into one sequence instead (training only).

Freezing is the engine's job (``train.trainable: ["projector.*"]``); this module only keeps the
encoder out of autograd (every encoder runs under ``torch.no_grad``).
"""
from __future__ import annotations

import dataclasses
import zlib
from typing import Literal

import torch
from torch import nn

from westkit.models.encoders import build_encoder
from westkit.models.projector import ProjectorConfig, build_projector
from westkit.models.whisper import WhisperAudioEncoder  # tiny_random
from westkit.models.features import SAMPLE_RATE
from westkit.models.packed_attention import packed_kwargs, use_packed_sdpa
from westkit.models.losses import IGNORE_INDEX as IGNORE, token_cross_entropy

AUDIO = "<audio>"


@dataclasses.dataclass
class LoraSettings:
    """PEFT LoRA on the LLM; its parameters are named ``llm.*lora_*`` for ``train.trainable``."""
    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: list[str] = dataclasses.field(default_factory=lambda: ["q_proj", "v_proj"])


@dataclasses.dataclass
class WestConfig:
    """The ``model`` section of a west recipe config."""
    encoder: str = "whisper-tiny.en"          # built-in asset name, hub id or local folder
    encoder_kind: str = "whisper"             # a key of westkit.models.encoders.ENCODERS
    llm: str = "smollm2-135m-instruct"        # any causal LM (chat template or base model)
    prompt_format: str = "chat"               # a key of PROMPTS: "chat" (instruct LLMs), "plain" (base LLMs)
    projector: ProjectorConfig = dataclasses.field(default_factory=ProjectorConfig)
    lora: LoraSettings | None = None
    prompt: str = "Transcribe the audio: <audio>"   # user message; must hold <audio> once
    system: str | None = "You are a speech recognizer. Reply with the transcript only."
    # per-utterance prompts: `prompt` may hold {instruction} and {context}; an utterance's own
    # "instruction" (shard json) wins, else one of `instructions` chosen by its key and the seed
    instructions: list[str] = dataclasses.field(default_factory=list)
    instruction_seed: int = 0
    context_format: str = "Context: {context}\n"   # how a non-empty context fills {context}
    export_merged: bool = False               # with LoRA: also write the merged LLM (merged/)
    pack: bool = False                        # training: a batch's utterances in one LLM sequence
    pad_to_30s: bool = False                  # Whisper's 30 s window (WeST v1), for comparison
    llm_dtype: Literal["float32", "bfloat16", "float16"] = "float32"  # the LLM's load dtype


INSTRUCTION, CONTEXT = "{instruction}", "{context}"


class Prompt:
    """The token ids around the audio, and the targets, for one prompt format.

    ``prefix`` and ``suffix`` are the ids before and after the audio placeholder for the
    default instruction and no context; `render` gives them for any (instruction, context) and
    `for_sample` for a data-pipeline sample (``dynamic`` says whether they can vary at all).
    ``eot`` ends the transcript (last training target, stop token in decoding).
    """

    def __init__(self, tokenizer, prompt: str, system: str | None, instructions=(),
                 instruction_seed: int = 0, context_format: str = "Context: {context}\n"):
        if prompt.count(AUDIO) != 1:
            raise ValueError(f"model.prompt: must contain {AUDIO} exactly once, got {prompt!r}")
        if instructions and INSTRUCTION not in prompt:
            raise ValueError(f"model.instructions: the prompt {prompt!r} has no {INSTRUCTION} to put "
                             f"them in; add {INSTRUCTION} to model.prompt")
        if CONTEXT not in context_format:
            raise ValueError(f"model.context_format: must contain {CONTEXT}, got {context_format!r}")
        self.tokenizer, self.template, self.system = tokenizer, prompt, system
        self.instructions = list(instructions)
        self.instruction_seed = instruction_seed
        self.context_format = context_format
        self.dynamic = INSTRUCTION in prompt or CONTEXT in prompt
        self.prefix, self.suffix = self.render()

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False).input_ids

    def user_message(self, instruction: str | None = None, context: str | None = None) -> str:
        """The prompt with {instruction} (default: the first of ``instructions``) and
        {context} (formatted by ``context_format``; nothing when empty) filled in."""
        if instruction is None:
            instruction = self.instructions[0] if self.instructions else ""
        ctx = self.context_format.replace(CONTEXT, context) if context else ""
        return self.template.replace(INSTRUCTION, instruction).replace(CONTEXT, ctx)

    def render(self, instruction: str | None = None, context: str | None = None) -> tuple[list[int], list[int]]:
        """(prefix ids, suffix ids) around the audio for this instruction and context."""
        raise NotImplementedError

    def for_sample(self, sample: dict) -> tuple[list[int], list[int]]:
        """A pipeline sample's prompt ids: its own "instruction" if it has one, else one of
        ``instructions`` chosen by a hash of its key and the seed (the same on every rank, run
        and resume), and its "context" if any."""
        instruction = sample.get("instruction")
        if instruction is None and self.instructions:
            h = zlib.crc32(f"{self.instruction_seed}:{sample['key']}".encode())
            instruction = self.instructions[h % len(self.instructions)]
        return self.render(instruction, sample.get("context"))

    def target(self, text: str) -> list[int]:
        """Transcript ids followed by the end id: what the model learns to say."""
        return self._ids(text) + [self.eot]

    def decode(self, ids: list[int]) -> str:
        """Generated ids (stop token excluded) -> transcript text."""
        return self.tokenizer.decode(ids, skip_special_tokens=True).strip()


class ChatPrompt(Prompt):
    """The prompt rendered by the tokenizer's own chat template (instruct / chat LLMs).

    The suffix ends with the template's generation prompt; ``eot`` is the token that ends the
    assistant's turn (``<|im_end|>``, ``<|eot_id|>``, ...).
    """

    def __init__(self, tokenizer, prompt: str, system: str | None, **kwargs):
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError(f"model.llm: tokenizer {tokenizer.name_or_path!r} has no chat template; "
                             "for a base model set model.prompt_format: plain")
        super().__init__(tokenizer, prompt, system, **kwargs)
        # the end-of-turn token: the first special token the template puts after a reply
        sentinel = "XQZSENTINEL"
        full = tokenizer.apply_chat_template(
            self._messages(self.user_message()) + [{"role": "assistant", "content": sentinel}], tokenize=False)
        tail = self._ids(full.split(sentinel, 1)[1])
        special = set(tokenizer.all_special_ids)
        eot = next((t for t in tail if t in special), tail[0] if tail else tokenizer.eos_token_id)
        if eot is None:
            raise ValueError(f"model.llm: cannot find the end-of-turn token of {tokenizer.name_or_path!r}")
        self.eot = eot
        self.stop_ids = sorted({eot} | ({tokenizer.eos_token_id} - {None}))

    def _messages(self, user: str) -> list[dict]:
        messages = ([{"role": "system", "content": self.system}] if self.system else [])
        return messages + [{"role": "user", "content": user}]

    def render(self, instruction=None, context=None):
        text = self.tokenizer.apply_chat_template(
            self._messages(self.user_message(instruction, context)), add_generation_prompt=True, tokenize=False)
        pre, post = text.split(AUDIO)
        return self._ids(pre), self._ids(post)


class PlainPrompt(Prompt):
    """A plain-text prompt for base LLMs (no chat template; VoxLM's Qwen/Qwen2-1.5B)::

        [BOS] [system "\n\n"] prompt-before-audio <audio> prompt-after-audio "\n" | transcript <eos>

    The end token is the tokenizer's eos, which the model learns to emit after the transcript.
    """

    def __init__(self, tokenizer, prompt: str, system: str | None, **kwargs):
        if tokenizer.eos_token_id is None:
            raise ValueError(f"model.llm: tokenizer {tokenizer.name_or_path!r} has no eos token to end "
                             "transcripts with; set one in its tokenizer_config.json")
        self.eot = tokenizer.eos_token_id
        self.stop_ids = [self.eot]
        bos = tokenizer.bos_token_id
        self.bos = [bos] if bos is not None and getattr(tokenizer, "add_bos_token", False) else []
        super().__init__(tokenizer, prompt, system, **kwargs)

    def render(self, instruction=None, context=None):
        text = (f"{self.system}\n\n" if self.system else "") + self.user_message(instruction, context) + "\n"
        pre, post = text.split(AUDIO)
        return self.bos + self._ids(pre), self._ids(post)


PROMPTS: dict[str, type[Prompt]] = {"chat": ChatPrompt, "plain": PlainPrompt}


def build_prompt(cfg: WestConfig, tokenizer) -> Prompt:
    """The prompt format ``cfg.prompt_format`` (a key of `PROMPTS`) for ``tokenizer``."""
    if cfg.prompt_format not in PROMPTS:
        raise ValueError(f"model.prompt_format: unknown format {cfg.prompt_format!r}; choose one of {sorted(PROMPTS)}")
    return PROMPTS[cfg.prompt_format](tokenizer, cfg.prompt, cfg.system, instructions=cfg.instructions,
                                      instruction_seed=cfg.instruction_seed, context_format=cfg.context_format)


class WestModel(nn.Module):
    """Speech -> text with an LLM. ``forward(batch) -> {"loss", "num_tokens", "audio_seconds", ...}``.

    batch: ``audio`` (B, T) float zero-padded at 16 kHz, ``audio_lens`` (B,), ``texts`` list[str],
    ``targets``/``target_lens`` and, for per-utterance prompts, ``prompts`` (list of (prefix ids,
    suffix ids), `Prompt.for_sample` in the data pipeline).
    Submodules: ``encoder`` (frozen, any of `westkit.models.encoders.ENCODERS`), ``projector``
    (trainable), ``llm`` (causal LM, optionally wrapped by PEFT LoRA).
    """

    def __init__(self, encoder: nn.Module, projector: nn.Module, llm: nn.Module, prompt: Prompt,
                 export_merged: bool = False, pack: bool = False):
        super().__init__()
        self.encoder = encoder
        self.projector = projector
        self.llm = llm
        self.prompt = prompt
        self.export_merged = export_merged
        self.pack = pack
        self.pad_id = prompt.tokenizer.pad_token_id
        if self.pad_id is None:
            self.pad_id = prompt.eot  # only ever fed at masked positions

    @classmethod
    def from_config(cls, cfg: WestConfig) -> WestModel:
        """Load the pretrained encoder and LLM named in ``cfg`` and a fresh projector."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from westkit.assets import resolve

        encoder = build_encoder(cfg.encoder_kind, cfg.encoder, cfg.pad_to_30s)
        path = resolve(cfg.llm)
        tokenizer = AutoTokenizer.from_pretrained(path)
        llm = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, cfg.llm_dtype))
        model = cls.assemble(cfg, encoder, llm, tokenizer)
        model.llm_path = path  # where `export` reloads the base LLM from to merge LoRA into it
        return model

    @classmethod
    def assemble(cls, cfg: WestConfig, encoder: nn.Module, llm: nn.Module, tokenizer) -> WestModel:
        """Projector (from ``cfg.projector``) and optional LoRA around given encoder and LLM."""
        projector = build_projector(cfg.projector, encoder.dim, llm.get_input_embeddings().embedding_dim)
        if cfg.pack:
            use_packed_sdpa(llm)  # sdpa per utterance, not over the packed sequence's (N, N) mask
        if cfg.lora is not None:
            from peft import LoraConfig, get_peft_model

            llm = get_peft_model(llm, LoraConfig(
                r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                target_modules=list(cfg.lora.target_modules), task_type="CAUSAL_LM"))
        return cls(encoder, projector, llm, build_prompt(cfg, tokenizer), cfg.export_merged, cfg.pack)

    @property
    def seconds_per_embedding(self) -> float:
        """Audio time one LLM audio embedding covers: projector rate / encoder frame rate
        (embedding k starts at k times this)."""
        return self.projector.rate / self.encoder.frame_rate

    # -- shared by training and decoding -------------------------------------------------

    def audio_embeddings(self, audio: torch.Tensor, audio_lens: torch.Tensor):
        """audio (B, T), audio_lens (B,) -> (embeddings (B, N, H), lens (B,)) in LLM space."""
        states, lens = self.encoder(audio, audio_lens)
        return self.projector(states, lens)

    def layout(self, n_audio: list[int], targets: list[list[int]] | None = None, prompts=None):
        """Token layout of a left-padded batch.

        Row i = prefix, ``n_audio[i]`` audio slots, suffix, ``targets[i]``; the prompt's fixed
        prefix and suffix, or row i's own ``prompts[i]`` = (prefix, suffix). Returns ``ids``
        (B, L) long (audio slots and padding hold ``pad_id``), ``is_audio`` (B, L) bool,
        ``attention_mask`` (B, L) long, ``position_ids`` (B, L) long and ``labels`` (B, L) long
        (-100 except on target tokens; None without targets).
        """
        p = self.prompt
        rows, audio_rows, label_rows = [], [], []
        for i, n in enumerate(n_audio):
            tgt = targets[i] if targets is not None else []
            prefix, suffix = prompts[i] if prompts is not None else (p.prefix, p.suffix)
            ids = prefix + [self.pad_id] * n + suffix + tgt
            rows.append(ids)
            audio_rows.append([False] * len(prefix) + [True] * n + [False] * (len(suffix) + len(tgt)))
            label_rows.append([IGNORE] * (len(ids) - len(tgt)) + tgt)
        width = max(len(r) for r in rows)

        def left(rs, fill):
            return torch.tensor([[fill] * (width - len(r)) + r for r in rs])

        mask = left([[1] * len(r) for r in rows], 0)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        labels = left(label_rows, IGNORE) if targets is not None else None
        return left(rows, self.pad_id), left(audio_rows, False), mask, positions, labels

    def inputs_embeds(self, ids: torch.Tensor, is_audio: torch.Tensor, audio: torch.Tensor,
                      audio_lens: torch.Tensor) -> torch.Tensor:
        """Token embeddings of ``ids`` (B, L) with the audio slots replaced by ``audio`` (B, N, H)
        frames, each row's first ``audio_lens[i]`` frames in order -> (B, L, H)."""
        tokens = self.llm.get_input_embeddings()(ids)
        valid = torch.arange(audio.shape[1], device=audio.device)[None, :] < audio_lens[:, None]
        frames = audio[valid].to(tokens.dtype)  # (sum of lens, H), row-major like is_audio
        return tokens.masked_scatter(is_audio[..., None], frames)

    def prompt_inputs(self, audio: torch.Tensor, audio_lens: torch.Tensor,
                      targets: list[list[int]] | None = None, prompts=None):
        """Everything the LLM needs for a batch: dict of ``inputs_embeds`` (B, L, H),
        ``attention_mask``, ``position_ids`` and, with ``targets`` (per row, from
        `Prompt.target` in the data pipeline), ``labels`` (all (B, L)). ``prompts``: per-row
        (prefix, suffix) ids (`Prompt.render` / `Prompt.for_sample`), else the fixed prompt."""
        emb, n = self.audio_embeddings(audio, audio_lens)
        return self.embed_prompt(emb, n, targets, prompts)

    def embed_prompt(self, emb: torch.Tensor, n: torch.Tensor, targets: list[list[int]] | None = None,
                     prompts=None) -> dict:
        """`prompt_inputs` from audio embeddings already made: emb (B, N, H), n (B,) from
        `audio_embeddings` (decoding reuses them for the word-timing pass)."""
        ids, is_audio, mask, positions, labels = self.layout(n.tolist(), targets, prompts)
        dev = emb.device
        out = {"inputs_embeds": self.inputs_embeds(ids.to(dev), is_audio.to(dev), emb, n),
               "attention_mask": mask.to(dev), "position_ids": positions.to(dev)}
        if labels is not None:
            out["labels"] = labels.to(dev)
        return out

    def forward(self, batch: dict) -> dict:
        """Mean cross-entropy over transcript + end-of-turn tokens, and counters for the logs.
        ``batch["targets"]`` (B, L) / ``target_lens`` come from `ChatPrompt.target` in the
        data pipeline (`westkit.data.pipeline.tokenize`)."""
        targets = [row[:n].tolist() for row, n in zip(batch["targets"], batch["target_lens"].tolist())]
        inputs = self.prompt_inputs(batch["audio"], batch["audio_lens"], targets, batch.get("prompts"))
        labels = inputs.pop("labels")
        mask, audio_lens = inputs["attention_mask"], batch["audio_lens"]
        if self.pack:
            loss, num_tokens = self._packed_loss(inputs, labels)
        else:
            # targets sit at the right end of every (left-padded) row: only those logits are needed
            keep = int((labels != IGNORE).sum(-1).max()) + 1
            logits = self.llm(**inputs, use_cache=False, logits_to_keep=keep).logits  # (B, keep, V)
            # logits at position p predict the token at p + 1
            loss, num_tokens = token_cross_entropy(logits[:, :-1], labels[:, labels.shape[1] - keep + 1:])
        out = {"loss": loss,
               "num_tokens": num_tokens,
               "audio_seconds": audio_lens.sum() / SAMPLE_RATE,
               # share of the batch that is padding: small when batches come from duration buckets
               "audio_padding": 1.0 - audio_lens.sum() / batch["audio"].numel(),
               "llm_padding": 1.0 - mask.sum() / mask.numel()}
        if self.pack:  # the LLM saw no padding; llm_padding stays what the padded rows would hold
            out["llm_padding_packed"] = torch.zeros(())
        return out

    def _packed_loss(self, inputs: dict, labels: torch.Tensor):
        """The batch's rows (left-padded (B, L)) as one sequence (1, sum of lengths) without
        padding: positions restart at 0 for each utterance and the utterance boundaries go to
        attention as ``cu_seq_lens_q`` (`westkit.models.packed_attention`: flash-attention
        varlen where installed, sdpa on each utterance's slice otherwise; eager reads the
        restarting positions as a block-diagonal mask), so each utterance sees only itself.
        Same loss as unpacked."""
        real = inputs["attention_mask"].bool()                       # (B, L), row-major = packed order
        emb = inputs["inputs_embeds"][real][None]                    # (1, N, H)
        positions = inputs["position_ids"][real][None]               # (1, N), 0.. per utterance
        packed_labels = labels[real]                                 # (N,)
        # logits at p predict p + 1; a row's last token predicts the next row's first (a prompt
        # token, never a target), so shifting across the boundary scores nothing extra
        predict = (packed_labels[1:] != IGNORE).nonzero()[:, 0]     # positions whose logits are needed
        logits = self.llm(inputs_embeds=emb, position_ids=positions, attention_mask=None,
                          use_cache=False, logits_to_keep=predict,
                          **packed_kwargs(real.sum(-1))).logits     # (1, K, V)
        return token_cross_entropy(logits, packed_labels[predict + 1][None])

    def export(self, folder, state: dict[str, torch.Tensor]) -> list:
        """Beside the engine's ``trainable.safetensors`` (projector, LoRA) and the recipe's
        ``config.yaml``, which is what `westkit-recognize --west` loads: with LoRA, the adapter
        alone as a PEFT folder (``lora/``) that ``PeftModel.from_pretrained`` takes."""
        if not hasattr(self.llm, "peft_config"):
            return []
        out = folder / "lora"
        adapter = {k[len("llm."):]: v for k, v in state.items() if k.startswith("llm.")}
        self.llm.save_pretrained(out, state_dict=adapter)  # PEFT keeps the adapter's tensors
        if not self.export_merged:
            return [out]
        return [out, self._export_merged(folder / "merged", out)]

    def _export_merged(self, out, adapter_dir):
        """With ``export_merged``: the base LLM with the LoRA deltas added into its weights, a
        plain transformers folder (+ tokenizer) that needs no PEFT (CTranslate2, vLLM). The base
        is reloaded from disk: under ZeRO-3 the live module holds only this rank's shard."""
        from peft import PeftModel
        from transformers import AutoModelForCausalLM

        path = getattr(self, "llm_path", None)
        if path is None:
            raise ValueError("model.export_merged: the base LLM's folder is unknown (the model was not "
                             "built by WestModel.from_config); set model.export_merged: false")
        dtype = next(self.llm.parameters()).dtype
        base = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
        merged = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
        merged.save_pretrained(out)
        self.prompt.tokenizer.save_pretrained(out)
        return out


# -- a tiny random model for fast tests and smoke runs (no files, no network) ----------------

def char_tokenizer():
    """A character-level tokenizer with a ChatML chat template (pad distinct from eos)."""
    import string

    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<unk>", "<|im_start|>", "<|im_end|>"]
    chars = sorted(set(string.printable) - set("\x0b\x0c\r\t"))
    vocab = {t: i for i, t in enumerate(specials + chars)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("[\\s\\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>",
                                   eos_token="<|im_end|>", additional_special_tokens=["<|im_start|>"])
    fast.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    return fast


def tiny_random(cfg: WestConfig | None = None, seed: int = 0, dim: int = 32) -> WestModel:
    """A randomly initialised WeST of a few thousand parameters: Whisper-shaped encoder
    (80 mels, 2 layers), Llama LLM (2 layers) and the char tokenizer. For tests only."""
    from transformers import LlamaConfig, LlamaForCausalLM, WhisperConfig
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    cfg = cfg or WestConfig(projector=ProjectorConfig(rate=2, hidden=2 * dim))
    torch.manual_seed(seed)
    tokenizer = char_tokenizer()
    enc = WhisperEncoder(WhisperConfig(
        d_model=dim, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=2 * dim,
        num_mel_bins=80, max_source_positions=1500))
    llm = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=dim, intermediate_size=2 * dim, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=4096,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None, tie_word_embeddings=False))
    model = WestModel.assemble(cfg, WhisperAudioEncoder(enc.eval(), cfg.pad_to_30s), llm, tokenizer)
    return model

