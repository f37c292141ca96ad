"""Recognisers: a batch of audio -> transcripts, for every model kind, over one decoding core.

`WestRecognizer` (a `westkit.models.west.WestModel`: `LLMStep`) and `WhisperRecognizer` (a
plain or adapted Whisper: `WhisperStep`) both decode with `westkit.decode.search`, so
training-time evaluation and `westkit-recognize` give the same hypotheses. Both also offer
``decode_words`` (transcripts plus timed words), which `westkit.decode.longform` calls.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Callable

import torch

from westkit.data.pipeline import pad_audio
from westkit.decode.search import GenerateConfig, LLMStep, WhisperStep, search, token_budget
from westkit.decode.timestamps import HEADS_FILE, WestHeads, west_words, whisper_words

Done = Callable[[bool], bool] | None


@dataclasses.dataclass
class Transcript:
    """One utterance's result: text, its token ids (no stop token), whether the budget cut it,
    and each id's log-probability (`westkit.decode.timestamps` turns them into confidences)."""
    text: str
    ids: list[int]
    hit_limit: bool
    logprobs: list[float] = dataclasses.field(default_factory=list, compare=False)


class WestRecognizer:
    """A WeST model: audio -> left-padded prompt embeddings -> the LLM's search.

    ``heads``: the LLM attention heads that align transcript tokens with the audio embeddings
    (`westkit.decode.timestamps.WestHeads`, the run's ``alignment_heads.json``), which word
    timestamps (`decode_words`) need."""

    def __init__(self, model, gen: GenerateConfig, heads=None):
        self.model = model.eval()
        self.gen = gen
        self.heads = heads

    @property
    def device(self) -> torch.device:
        return next(self.model.projector.parameters()).device

    @classmethod
    def load(cls, run: str | None, weights: str | None, config: str | None, gen: GenerateConfig,
             device: torch.device, dtype: torch.dtype, overrides: list[str] = ()) -> WestRecognizer:
        """Rebuild the model from the recipe config and load the exported trainable weights."""
        from safetensors.torch import load_file

        from westkit.config import build, load_yaml
        from westkit.models.west import WestConfig, WestModel

        weights, config = west_files(run, weights, config)
        cfg = build(WestConfig, load_yaml(config, overrides).get("model"), f"{config}: model")
        model = WestModel.from_config(cfg)
        state = load_file(weights)
        names = dict(model.named_parameters())
        unknown = sorted(set(state) - set(names))
        if unknown:
            raise ValueError(f"{weights}: {len(unknown)} weights are not in the model built from "
                             f"{config} (e.g. {unknown[:3]}); is this the run's own config?")
        if not any(k.startswith("projector.") for k in state):
            raise ValueError(f"{weights}: holds no projector weights; export the trainable weights "
                             "of a west run (train.export_trainable: true)")
        model.load_state_dict(state, strict=False)
        heads_file = os.path.join(os.path.dirname(weights), HEADS_FILE)
        heads = WestHeads.load(heads_file) if os.path.isfile(heads_file) else None
        return cls(model.to(device=device, dtype=dtype), gen, heads)

    @torch.no_grad()
    def __call__(self, audio: torch.Tensor, audio_lens: torch.Tensor, everyone_done: Done = None,
                 prompts=None) -> list[Transcript]:
        """audio (B, T) zero-padded at 16 kHz, audio_lens (B,) -> one `Transcript` per row.
        ``prompts``: per-row (prefix, suffix) ids (a batch's "prompts"), else the fixed prompt."""
        return self._search(self.model.prompt_inputs(audio, audio_lens, prompts=prompts), audio_lens, everyone_done)

    def _search(self, inputs: dict, audio_lens, everyone_done: Done = None) -> list[Transcript]:
        m = self.model
        step = LLMStep(m.llm, inputs)
        outs = search(step, token_budget(audio_lens, self.gen), m.prompt.stop_ids, self.gen, everyone_done)
        return [Transcript(m.prompt.decode(o.ids), o.ids, o.hit_limit, o.logprobs) for o in outs]

    @torch.no_grad()
    def decode_words(self, audio: torch.Tensor, audio_lens: torch.Tensor, offsets: list[float] | None = None):
        """audio (B, T), audio_lens (B,) -> (transcripts, words per row): the search, then one
        teacher-forced pass whose attention over the audio embeddings times the words
        (`westkit.decode.timestamps.west_words`; times shifted by ``offsets[b]`` s)."""
        if self.heads is None:
            raise ValueError("word timestamps of a WeST model need its alignment heads: run "
                             "python -m westkit.decode.align_heads --west RUN (writes RUN/alignment_heads.json)")
        emb, n = self.model.audio_embeddings(audio, audio_lens)
        outs = self._search(self.model.embed_prompt(emb, n), audio_lens)
        return outs, west_words(self, emb, n, outs, offsets)

    def batch_prompts(self, batch: dict):
        """Per-row prompt ids from a batch's "instructions" / "contexts" (shard json fields), or
        None when the model's prompt is fixed (then the batch's fields do not matter)."""
        if not self.model.prompt.dynamic:
            return None
        n = len(batch["keys"])
        return [self.model.prompt.render(i, c) for i, c in
                zip(batch.get("instructions", [None] * n), batch.get("contexts", [None] * n))]

    def transcribe(self, audio, instruction: str | None = None, context: str | None = None):
        """One waveform (T,) at 16 kHz (tensor or array) -> its transcript, or a list of them
        -> a list. ``instruction`` replaces the prompt's {instruction}, ``context`` (e.g. rare
        words, the previous sentence) fills its {context}; both apply to every waveform."""
        single = not isinstance(audio, (list, tuple))
        batch, lens = pad_audio([torch.as_tensor(a, dtype=torch.float32).reshape(-1).cpu()
                                 for a in ([audio] if single else audio)])
        prompts = [self.model.prompt.render(instruction, context)] * len(lens)
        texts = [t.text for t in self(batch.to(self.device), lens.to(self.device), prompts=prompts)]
        return texts[0] if single else texts


class WhisperRecognizer:
    """Whisper (``WhisperForConditionalGeneration``): its encoder over the 30 s window, then
    its decoder from the tokenizer's prefix (no timestamps), no special token but the end."""

    def __init__(self, whisper, tokenizer, gen: GenerateConfig, language: str | None = None):
        from westkit.models.whisper import WhisperAudioEncoder, WhisperText

        self.whisper = whisper.eval()
        self.tokenizer, self.gen = tokenizer, gen
        self.prefix, self.eot = whisper_prefix(tokenizer, language), tokenizer.eos_token_id
        self.text = WhisperText(tokenizer)   # after whisper_prefix: a given language wins
        self.encoder = WhisperAudioEncoder(whisper.model.encoder, pad_to_30s=True)

    @classmethod
    def load(cls, name: str, gen: GenerateConfig, device, dtype, language=None) -> WhisperRecognizer:
        """Any Whisper checkpoint: built-in asset name, hub id or local folder."""
        from westkit.models.whisper import load_whisper

        whisper, tokenizer = load_whisper(name)
        return cls(whisper.to(device=device, dtype=dtype), tokenizer, gen, language)

    @torch.no_grad()
    def encode(self, audio: torch.Tensor, audio_lens: torch.Tensor) -> torch.Tensor:
        """audio (B, T), audio_lens (B,) -> encoder states (B, 1500, D). Only the first 30 s of
        each utterance are heard (Whisper's window): callers flag longer ones."""
        return self.encoder(audio, audio_lens)[0].to(self.whisper.proj_out.weight.dtype)

    @torch.no_grad()
    def decode_states(self, states: torch.Tensor, audio_lens: torch.Tensor | None = None,
                      everyone_done: Done = None, langs: list[str] | None = None) -> list[Transcript]:
        """Encoder states (B, T, D) -> transcripts; budgets from ``audio_lens`` (B,) samples, or
        ``gen.max_new_tokens`` per row without them (e.g. states a TLE made from text).
        ``langs`` (B,): each row's language (a batch's "langs"), its prefix (`row_prefixes`)."""
        budgets = (token_budget(audio_lens, self.gen) if audio_lens is not None
                   else [self.gen.max_new_tokens] * states.shape[0])
        step = WhisperStep(self.whisper, states, row_prefixes(self.text, self.prefix, langs, states.shape[0]),
                           self.eot)
        outs = search(step, budgets, [self.eot], self.gen, everyone_done)
        return [Transcript(self.tokenizer.decode(o.ids, skip_special_tokens=True).strip(), o.ids, o.hit_limit, o.logprobs)
                for o in outs]

    def __call__(self, audio: torch.Tensor, audio_lens: torch.Tensor, everyone_done: Done = None,
                 langs: list[str] | None = None) -> list[Transcript]:
        return self.decode_states(self.encode(audio, audio_lens), audio_lens, everyone_done, langs)

    @property
    def device(self) -> torch.device:
        return self.whisper.proj_out.weight.device

    @torch.no_grad()
    def decode_words(self, audio: torch.Tensor, audio_lens: torch.Tensor, offsets: list[float] | None = None):
        """audio (B, T), audio_lens (B,) -> (transcripts, words per row): the search, then the
        alignment heads' cross-attention (`westkit.decode.timestamps.whisper_words`)."""
        states = self.encode(audio, audio_lens)
        outs = self.decode_states(states, audio_lens)
        return outs, whisper_words(self, states, audio_lens, outs, offsets)


def whisper_prefix(tokenizer, language: str | None = None) -> list[int]:
    """The decoder's start ids: ``<|startoftranscript|>`` (+ ``<|lang|><|transcribe|>`` for a
    multilingual model given ``language``) ``<|notimestamps|>``."""
    if language:
        tokenizer.set_prefix_tokens(language=language, task="transcribe")
    return list(tokenizer.prefix_tokens)


def row_prefixes(text, prefix: list[int], langs: list[str] | None, n: int) -> list[list[int]]:
    """The decoder prefix of each of ``n`` rows: its own language's (``text.sample_prefix``, a
    `westkit.models.whisper.WhisperText`) for a multilingual model when every row has a
    language, else ``prefix`` (English-only models, a given ``--language``, unlabelled rows)."""
    if not langs or not text.per_language or not all(langs):
        return [list(prefix)] * n
    return [text.sample_prefix(lang) for lang in langs]


def west_files(run, weights, config) -> tuple[str, str]:
    """(weights, config) of a west run folder or of the explicit files; ValueError if missing."""
    if run:
        weights = weights or os.path.join(run, "trainable.safetensors")
        config = config or os.path.join(run, "config.yaml")
    if not weights or not config:
        raise ValueError("--west RUN_DIR, or both --weights and --config, name the model")
    for what, path in (("weights", weights), ("config", config)):
        if not os.path.isfile(path):
            hint = " (the engine writes it at the end of training)" if what == "weights" else ""
            raise ValueError(f"{what} file not found: {path}{hint}")
    return weights, config
