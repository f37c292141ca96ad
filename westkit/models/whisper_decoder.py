"""Running Whisper's decoder on given encoder states, and the two WhisTLE training models.

* `decoder_targets` / `text_tokens`: transcripts -> decoder inputs and labels / TLE inputs.
* `decoder_loss`: teacher-forced cross-entropy of the decoder on any encoder states, mean over
  target tokens.
* `TLERegression` (stage 1): trains a `TLE` to regress the frozen Whisper encoder's states of
  paired speech.
* `WhisTLE` (stage 2): fine-tunes the Whisper decoder; a text-only batch gets encoder states
  from the frozen TLE, an audio batch from the frozen real encoder. The real encoder is what
  decodes at inference, so the result is an ordinary Whisper checkpoint.

Both follow the engine's model contract: ``forward(batch) -> {"loss", counters...}`` with the
batch schema ``{"keys", "texts", "langs"}`` plus ``"audio" (B, T), "audio_lens" (B,)`` when the
batch has audio.
"""
from __future__ import annotations

import torch
from torch import nn

from westkit.models.tle import TLE, speech_frames, tle_loss
from westkit.models.whisper import WhisperAudioEncoder
from westkit.train.losses import token_cross_entropy

SAMPLE_RATE = 16000


def text_tokens(tokenizer, texts: list[str], device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Transcripts -> TLE inputs: (tokens (B, L) right-padded with 0, lens (B,)).

    Plain text tokens, no special tokens, with the leading space Whisper puts before the first
    word; an empty text becomes one space token so every row has a length >= 1.
    """
    ids = [tokenizer.encode(" " + t.strip(), add_special_tokens=False) for t in texts]
    ids = [x if x else tokenizer.encode(" ", add_special_tokens=False) for x in ids]
    lens = torch.tensor([len(x) for x in ids], dtype=torch.long)
    tokens = torch.zeros(len(ids), int(lens.max()), dtype=torch.long)
    for i, x in enumerate(ids):
        tokens[i, :len(x)] = torch.tensor(x)
    return tokens.to(device), lens.to(device)


def decoder_targets(tokenizer, texts: list[str], max_len: int = 448, device=None):
    """Transcripts -> (decoder_input_ids (B, L), labels (B, L)), labels -100 where not scored.

    Each row is ``prefix + text + <|endoftext|>`` shifted by one (the prefix is the tokenizer's
    own: ``<|startoftranscript|><|notimestamps|>`` for English-only models, with language and
    task tokens for multilingual ones). Loss falls on the text and end tokens only, never on the
    prefix, so the model learns to stop and is not taught its own prompt.
    """
    prefix = list(tokenizer.prefix_tokens)
    eot = tokenizer.eos_token_id
    rows, n_prefix = [], len(prefix) - 1
    for t in texts:
        body = tokenizer.encode(" " + t.strip(), add_special_tokens=False)
        ids = prefix + body + [eot]
        if len(ids) > max_len:
            raise ValueError(f"transcript of {len(ids)} tokens exceeds the decoder's {max_len} "
                             f"positions: filter long texts in the loader ({t[:60]!r}...)")
        rows.append(ids)
    width = max(len(r) for r in rows) - 1
    inputs = torch.full((len(rows), width), eot, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    for i, r in enumerate(rows):
        inputs[i, :len(r) - 1] = torch.tensor(r[:-1])
        labels[i, n_prefix:len(r) - 1] = torch.tensor(r[n_prefix + 1:])
    return inputs.to(device), labels.to(device)


def decoder_loss(whisper: nn.Module, states: torch.Tensor, input_ids: torch.Tensor,
                 labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher-forced decoder cross-entropy on given encoder states.

    whisper: transformers' ``WhisperForConditionalGeneration``; states (B, T, D) encoder states;
    input_ids, labels (B, L) from `decoder_targets`. Returns (mean loss over scored tokens,
    number of scored tokens). Padded input positions sit after every scored position, so the
    causal decoder never lets them change a scored token.
    """
    out = whisper.model.decoder(input_ids=input_ids, encoder_hidden_states=states, use_cache=False)
    return token_cross_entropy(whisper.proj_out(out.last_hidden_state), labels)


def language_ids(langs: list[str], names: list[str] | None, device=None) -> torch.Tensor | None:
    """Language names -> ids (B,) in the order of ``names`` (TLEConfig.langs); None without names."""
    if not names:
        return None
    index = {n: i for i, n in enumerate(names)}
    unknown = sorted(set(langs) - set(index))
    if unknown:
        raise ValueError(f"language(s) {unknown} not in tle.langs={names}: add them to the TLE "
                         f"config (and train the TLE on them) or filter the data")
    return torch.tensor([index[x] for x in langs], dtype=torch.long, device=device)


class StateCache:
    """Encoder states by utterance key in fp16: in a folder on disk, or in CPU memory without one.

    The frozen Whisper encoder gives the same states for an utterance every time it is seen,
    and on a small paired set it is most of the cost of a step; stage 1 (teacher states) and
    stage 2 (the real-encoder path of audio batches) can share one folder because the encoder
    is frozen in both. The folder records a fingerprint of the encoder's weights and refuses
    to serve states of another encoder. Memory/disk: T * D * 2 bytes per utterance (1.1 MB for
    whisper-tiny's 1500 x 384).
    """

    def __init__(self, encoder: nn.Module, folder: str | None = None):
        self.memory: dict[str, torch.Tensor] = {}
        self.folder = None
        if folder:
            import json
            from pathlib import Path
            self.folder = Path(folder)
            self.folder.mkdir(parents=True, exist_ok=True)
            import hashlib
            digest = hashlib.sha1()  # of the exact bytes: float sums differ with thread counts
            for t in (encoder.conv1.weight, encoder.layers[-1].fc2.weight, encoder.layer_norm.weight):
                digest.update(t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
            stamp = {"fingerprint": digest.hexdigest(),
                     "shape": [encoder.config.max_source_positions, encoder.config.d_model]}
            marker = self.folder / "encoder.json"
            if marker.exists():
                if json.loads(marker.read_text()) != stamp:
                    raise ValueError(f"state cache {self.folder} was made by another encoder: "
                                     f"point the cache at a new folder or delete it")
            else:
                marker.write_text(json.dumps(stamp))

    def _file(self, key: str):
        return self.folder / f"{key.replace('/', '_')}.pt"

    def get(self, key: str) -> torch.Tensor | None:
        if self.folder is not None:  # read from disk each time: the OS page cache keeps it warm
            f = self._file(key)
            return torch.load(f) if f.exists() else None
        return self.memory.get(key)

    def put(self, key: str, states: torch.Tensor) -> None:
        states = states.detach().to("cpu", torch.float16).clone()
        if self.folder is None:
            self.memory[key] = states
        else:
            tmp = self._file(key).with_suffix(".tmp")
            torch.save(states, tmp)
            tmp.replace(self._file(key))  # atomic: parallel ranks may write the same key

    def __contains__(self, key: str) -> bool:
        return key in self.memory if self.folder is None else self._file(key).exists()

    def states(self, encoder: WhisperAudioEncoder, batch: dict) -> torch.Tensor:
        """(B, T, D) float states of the batch's audio: cached ones, or encoded and stored.

        Fresh states are rounded through fp16 too, so a step sees the same numbers whether
        its batch was cached or not."""
        keys, device = batch["keys"], batch["audio"].device
        if all(k in self for k in keys):
            return torch.stack([self.get(k) for k in keys]).to(device).float()
        with torch.no_grad():
            states, _ = encoder(batch["audio"], batch["audio_lens"])
        for k, s in zip(keys, states):
            self.put(k, s)
        return states.half().float()


class TLERegression(nn.Module):
    """Stage 1: the TLE learns to regress a frozen Whisper encoder's states of paired speech.

    ``teacher`` is a `WhisperAudioEncoder` with ``pad_to_30s=True`` (the states Whisper's
    decoder sees at inference: 1500 frames, speech first, encoded silence after). With a
    `StateCache` later epochs over a small paired set skip the encoder.
    """

    def __init__(self, tle: TLE, teacher: WhisperAudioEncoder, tokenizer, cache: StateCache | None = None):
        super().__init__()
        if not teacher.pad_to_30s:
            raise ValueError("the TLE's teacher must encode Whisper's 30 s window (pad_to_30s=True)")
        grid = teacher.encoder.config.max_source_positions
        if (tle.cfg.n_frames, tle.cfg.d_model) != (grid, teacher.dim):
            raise ValueError(f"tle.n_frames={tle.cfg.n_frames}, tle.d_model={tle.cfg.d_model} must match "
                             f"the Whisper encoder's {grid} frames and width {teacher.dim}")
        self.tle = tle
        self.teacher = teacher
        self.tokenizer = tokenizer
        self.cache = cache

    def teacher_states(self, batch: dict) -> torch.Tensor:
        """(B, T, D) float states of the batch's audio, from the cache where possible."""
        if self.cache is not None:
            return self.cache.states(self.teacher, batch)
        with torch.no_grad():
            return self.teacher(batch["audio"], batch["audio_lens"])[0].float()

    def forward(self, batch: dict) -> dict:
        device = batch["audio"].device
        teacher = self.teacher_states(batch)
        n = speech_frames(batch["audio_lens"], self.tle.cfg.n_frames)
        tokens, lens = text_tokens(self.tokenizer, batch["texts"], device)
        langs = language_ids(batch["langs"], self.tle.cfg.langs, device)
        out = self.tle(tokens, lens, n=n, langs=langs)
        if self.training:
            self.tle.update_tail_template(teacher, n)
            self.tle.num_updates += 1
        losses = tle_loss(out, teacher, n, self.tle.cfg, self.tle.beta())
        losses["audio_seconds"] = batch["audio_lens"].sum().float() / SAMPLE_RATE
        return losses


class WhisTLE(nn.Module):
    """Stage 2: Whisper whose encoder states come from the TLE for text-only batches.

    whisper: ``WhisperForConditionalGeneration`` (decoder trained, encoder frozen by the
    engine's ``trainable`` patterns); tle: a trained `TLE` (frozen), or None when every batch
    has audio (TTS-only adaptation). A batch without ``"audio"``
    is text-only: the TLE makes 1500 states from its text with the predicted speech length
    (z sampled from q(z|text) when ``sample_z``, else its mean). A batch with audio goes through
    the real encoder, exactly as at inference. Both frozen parts stay in eval mode (no dropout)
    whatever mode the engine sets.
    """

    def __init__(self, whisper: nn.Module, tle: TLE | None, tokenizer, sample_z: bool = True,
                 cache: StateCache | None = None):
        super().__init__()
        self.whisper = whisper
        self.tle = tle
        # the encoder's weights are registered once, under whisper.model.encoder; the wrapper
        # that runs them is kept out of the module tree (its log-mel is registered here)
        self._audio = [WhisperAudioEncoder(whisper.model.encoder, pad_to_30s=True)]
        self.logmel = self._audio[0].logmel
        self.tokenizer = tokenizer
        self.sample_z = sample_z
        self.cache = cache
        if tle is not None and (tle.cfg.n_frames, tle.cfg.d_model) != (
                whisper.config.max_source_positions, whisper.config.d_model):
            raise ValueError(f"the TLE makes {tle.cfg.n_frames} x {tle.cfg.d_model} states but this Whisper "
                             f"expects {whisper.config.max_source_positions} x {whisper.config.d_model}: "
                             f"train the TLE against this Whisper's encoder")

    def train(self, mode: bool = True):
        super().train(mode)
        if self.tle is not None:
            self.tle.eval()
        self.whisper.model.encoder.eval()
        return self

    def encoder_states(self, batch: dict, device) -> torch.Tensor:
        """(B, T, D) states in the decoder's dtype: real encoder for audio batches, TLE for
        text-only ones (no grad). The cache keeps fp16 and returns fp32, hence the cast."""
        dtype = self.whisper.proj_out.weight.dtype
        with torch.no_grad():
            if "audio" in batch:
                if self.cache is not None:
                    return self.cache.states(self._audio[0], batch).to(dtype)
                return self._audio[0](batch["audio"], batch["audio_lens"])[0].to(dtype)
            if self.tle is None:
                raise ValueError("a text-only batch reached a WhisTLE without a TLE: give the "
                                 "stage-1 run (stage2.tle) or drop the text-only source")
            tokens, lens = text_tokens(self.tokenizer, batch["texts"], device)
            langs = language_ids(batch["langs"], self.tle.cfg.langs, device)
            return self.tle(tokens, lens, langs=langs, sample=self.sample_z).states.to(dtype)

    def count_loss_tokens(self, batch: dict) -> int:
        """Target tokens of a batch before the forward pass (text + end token per row), so the
        engine can weigh micro-batches into a mean over every token of the step."""
        return sum(len(self.tokenizer.encode(" " + t.strip(), add_special_tokens=False)) + 1
                   for t in batch["texts"])

    def forward(self, batch: dict) -> dict:
        device = self.whisper.proj_out.weight.device
        states = self.encoder_states(batch, device)
        input_ids, labels = decoder_targets(self.tokenizer, batch["texts"],
                                            self.whisper.config.max_target_positions, device)
        loss, num = decoder_loss(self.whisper, states, input_ids, labels)
        text_only = "audio" not in batch
        return {"loss": loss, "num_tokens": num,
                "text_only_batches": torch.tensor(float(text_only)),
                "audio_seconds": (torch.tensor(0.0) if text_only
                                  else batch["audio_lens"].sum().float().cpu() / SAMPLE_RATE)}


@torch.no_grad()
def greedy_decode(whisper: nn.Module, states: torch.Tensor, tokenizer, max_new_tokens: int = 128) -> list[str]:
    """Greedy transcripts of encoder states (B, T, D) with Whisper's decoder (KV cache).

    Starts from the tokenizer's prefix (no timestamps) and never emits a special token other
    than ``<|endoftext|>``. Used to read TLE states back ("what does the decoder hear in the
    TLE's latents?") and for quick WER checks during training; `westkit.decode.recognize` is
    the decoder for reported results.
    """
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
