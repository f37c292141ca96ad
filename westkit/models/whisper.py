"""A frozen Whisper encoder that runs on variable-length input.

Whisper's own encoder insists on 30 s of log-mel (3000 frames) and attends over the padding.
`WhisperAudioEncoder` runs the same weights on each utterance's real length: the positional
embeddings are sliced to the input length, padded frames are zeroed after each convolution and
masked out of self-attention, so an utterance's output does not depend on what it is batched
with. ``pad_to_30s=True`` gives Whisper's original behaviour for comparison.
"""
from __future__ import annotations

import torch
from torch import nn

from westkit.models.features import HOP, SAMPLE_RATE, LogMel
from westkit.models.losses import IGNORE_INDEX, token_cross_entropy


def load_whisper_encoder(name_or_path: str, dtype: torch.dtype = torch.float32):
    """The encoder half of any Whisper checkpoint (built-in asset name, hub id or local folder).

    Returns transformers' ``WhisperEncoder`` (weights only; `WhisperAudioEncoder` runs it).
    """
    from transformers import WhisperModel

    from westkit.assets import resolve

    whisper = WhisperModel.from_pretrained(resolve(name_or_path), dtype=dtype)
    encoder = whisper.get_encoder()
    del whisper.decoder  # the decoder is half the weights and never used here
    return encoder


def load_whisper(name_or_path: str):
    """(WhisperForConditionalGeneration, WhisperTokenizerFast) of any Whisper checkpoint
    (built-in asset name, hub id or local folder): the whole model, for recipes that train or
    decode with its decoder."""
    from transformers import WhisperForConditionalGeneration

    from westkit.assets import resolve

    path = resolve(name_or_path)
    return WhisperForConditionalGeneration.from_pretrained(path), load_whisper_tokenizer(path)


class WhisperAudioEncoder(nn.Module):
    """Audio (B, T) at 16 kHz -> encoder states (B, F', D) with lengths (B,).

    F' = ceil(F / 2) where F = T // 160 log-mel frames (50 states per second). By default no
    gradients flow through it: the encoder is frozen in most recipes, and running it under
    ``torch.no_grad`` saves the activation memory of a model that never learns. With
    ``trainable=True`` (Whisper fine-tuning with ``freeze_encoder: false``) the encoder keeps
    its autograd graph; the frozen path is unchanged.
    """

    frame_rate = SAMPLE_RATE / HOP / 2  # states per second: 100 log-mel frames, halved by conv2

    def __init__(self, encoder: nn.Module, pad_to_30s: bool = False, trainable: bool = False):
        super().__init__()
        self.encoder = encoder
        self.pad_to_30s = pad_to_30s
        # True: `encode` keeps the autograd graph (fine-tuning the encoder); the log-mel front
        # end never needs gradients
        self.trainable = trainable
        # kept out of the module tree: a precision cast of the model (``.bfloat16()``, as
        # mixed-precision engines do) would otherwise round the float32 mel filter bank too
        object.__setattr__(self, "_logmel", LogMel(n_mels=encoder.config.num_mel_bins))

    @classmethod
    def from_pretrained(cls, name_or_path: str, pad_to_30s: bool = False) -> WhisperAudioEncoder:
        return cls(load_whisper_encoder(name_or_path), pad_to_30s=pad_to_30s)

    @property
    def dim(self) -> int:
        return self.encoder.config.d_model

    @property
    def max_frames(self) -> int:
        """Longest input in log-mel frames (3000 = 30 s for every released Whisper)."""
        return self.encoder.config.max_source_positions * 2

    def forward(self, audio: torch.Tensor, audio_lens: torch.Tensor):
        """audio (B, T) zero-padded float, audio_lens (B,) samples -> (states (B, F', D), lens (B,))."""
        feats, feat_lens = self.features(audio, audio_lens)
        with torch.set_grad_enabled(self.trainable and torch.is_grad_enabled()):
            return self.encode(feats, feat_lens)

    def features(self, audio: torch.Tensor, audio_lens: torch.Tensor):
        """audio (B, T), audio_lens (B,) -> float32 log-mel (B, n_mels, F) and lengths (B,), no grad."""
        with torch.no_grad():
            feats, feat_lens = self.logmel(audio, audio_lens, pad_to_30s=self.pad_to_30s)
            feats = feats.float()
            if feats.shape[-1] > self.max_frames:
                raise ValueError(f"audio of {feats.shape[-1] * HOP / SAMPLE_RATE:.1f} s is longer than "
                                 f"Whisper's 30 s window: filter long utterances in the data config")
        return feats, feat_lens

    def forward_layers(self, audio: torch.Tensor, audio_lens: torch.Tensor, layer: int):
        """Like `forward`, and also the hidden states after transformer block ``layer`` (1..N;
        0: the input to the first block), in the same pass: (last (B, F', D), hidden at
        ``layer`` (B, F', D), lens (B,)). ``last`` equals `forward`'s states."""
        with torch.no_grad():
            feats, feat_lens = self.logmel(audio, audio_lens, pad_to_30s=self.pad_to_30s)
            feats = feats.float()
            if feats.shape[-1] > self.max_frames:
                raise ValueError(f"audio of {feats.shape[-1] * HOP / SAMPLE_RATE:.1f} s is longer than "
                                 f"Whisper's 30 s window: filter long utterances in the data config")
            return self.encode_layers(feats, feat_lens, layer)

    @property
    def num_layers(self) -> int:
        return len(self.encoder.layers)

    @property
    def logmel(self) -> LogMel:
        """The log-mel front end (float32), on the device of the encoder's weights."""
        device = self.encoder.conv1.weight.device
        if self._logmel.window.device != device:
            object.__setattr__(self, "_logmel", self._logmel.to(device))
        return self._logmel

    def encode(self, feats: torch.Tensor, feat_lens: torch.Tensor):
        """Log-mel (B, n_mels, F) with lengths (B,) -> (states (B, ceil(F/2), D), lens (B,))."""
        last, _, lens = self.encode_layers(feats, feat_lens, None)
        return last, lens

    def encode_layers(self, feats: torch.Tensor, feat_lens: torch.Tensor, layer: int | None):
        """`encode`, also keeping the states after block ``layer`` (None: keep none):
        (last (B, F', D), hidden (B, F', D) or None, lens (B,)); padded frames are zero."""
        enc = self.encoder
        if layer is not None and not 0 <= layer <= len(enc.layers):
            raise ValueError(f"encoder layer {layer} does not exist: this Whisper encoder has "
                             f"{len(enc.layers)} layers, choose 0..{len(enc.layers)}")
        dtype = enc.conv1.weight.dtype
        x = feats.to(dtype)
        if self.pad_to_30s:
            # Whisper's own behaviour: every frame of the 30 s window is valid, padding included
            x = nn.functional.pad(x, (0, self.max_frames - x.shape[-1]))
            feat_lens = torch.full_like(feat_lens, self.max_frames)
        frame_mask = _length_mask(feat_lens, x.shape[-1])  # (B, F)
        # Zero padded frames before each convolution so the last real frames see the same
        # zeros whatever the batch's longest utterance is.
        x = x * frame_mask[:, None, :].to(dtype)
        x = nn.functional.gelu(enc.conv1(x))
        x = x * frame_mask[:, None, :].to(dtype)
        x = nn.functional.gelu(enc.conv2(x)).transpose(1, 2)  # (B, F', D)
        lens = (feat_lens + 1) // 2
        state_mask = _length_mask(lens, x.shape[1])  # (B, F')
        # through the module (not .weight) so engines that shard weights can gather them
        x = x + enc.embed_positions(torch.arange(x.shape[1], device=x.device)).to(dtype)
        # additive key mask, (B, 1, F', F'): padded keys get -inf-like scores
        bias = torch.zeros(state_mask.shape, dtype=dtype, device=x.device)
        bias = bias.masked_fill(~state_mask, torch.finfo(dtype).min)
        bias = bias[:, None, None, :].expand(-1, 1, x.shape[1], -1)
        keep = state_mask[..., None].to(dtype)
        hidden = x * keep if layer == 0 else None
        for i, block in enumerate(enc.layers, 1):
            x = block(x, bias)
            if isinstance(x, tuple):  # older transformers return (hidden, attn)
                x = x[0]
            if i == layer:
                hidden = x * keep
        x = enc.layer_norm(x)
        return x * keep, hidden, lens


def _length_mask(lens: torch.Tensor, width: int) -> torch.Tensor:
    """(B,) lengths -> (B, width) bool, True on real positions."""
    return torch.arange(width, device=lens.device)[None, :] < lens[:, None]



def load_whisper_tokenizer(name_or_path: str):
    """The ``WhisperTokenizerFast`` of any Whisper checkpoint (asset name, hub id or folder)."""
    from transformers import WhisperTokenizerFast

    from westkit.assets import resolve

    return WhisperTokenizerFast.from_pretrained(resolve(name_or_path))


def encoder_fingerprint(encoder: nn.Module) -> str:
    """A short hash of a Whisper encoder's weights: states made by one encoder are only valid
    for the same encoder (precomputed state shards record it, recipes check it). Hashes the
    exact bytes of three tensors (float sums would differ with thread counts)."""
    import hashlib

    digest = hashlib.sha1()
    for t in (encoder.conv1.weight, encoder.layers[-1].fc2.weight, encoder.layer_norm.weight):
        digest.update(t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()


class WhisperText:
    """Per-sample text -> token ids for Whisper's decoder and the TLE (the data pipeline calls
    these on every sample, so models never tokenise in ``forward``).

    * `targets(text)`: what the decoder learns to say, ``text ids + <|endoftext|>``; the
      decoder's input is ``prefix + targets[:-1]`` (`decoder_batch`). The prefix is the
      tokenizer's own (``<|startoftranscript|><|notimestamps|>`` for English-only models, with
      language and task tokens for multilingual ones) and is never scored.
    * `text_ids(text)`: plain text tokens for the TLE, with the leading space Whisper puts
      before the first word; an empty text becomes one space token so every row has a length.
    * `sample_prefix(lang)`: the prefix of one sample in language ``lang`` (its shard's
      ``lang``): ``<|startoftranscript|><|lang|><|task|><|notimestamps|>`` for multilingual
      tokenizers; English-only models, and a tokenizer whose language was set
      (``whisper.language``), keep their one fixed ``prefix``. Every prefix of one `WhisperText`
      has the same length, so per-row prefixes collate into a (B, P) tensor.
    """

    # English-only Whisper vocabularies have 51864 entries and no language tokens in use
    ENGLISH_ONLY_VOCAB = 51864

    def __init__(self, tokenizer, max_positions: int = 448):
        self.tokenizer = tokenizer
        self.prefix = list(tokenizer.prefix_tokens)
        self.eot = tokenizer.eos_token_id
        self.max_positions = max_positions
        # a set language wins over the samples' own (one prefix for the whole run)
        self.per_language = len(tokenizer) > self.ENGLISH_ONLY_VOCAB and tokenizer.language is None
        if self.per_language:
            sot, task, no_ts = tokenizer.convert_tokens_to_ids(
                ["<|startoftranscript|>", f"<|{tokenizer.task or 'transcribe'}|>", "<|notimestamps|>"])
            self._frame = (sot, task, no_ts)
        self.prefix_len = 4 if self.per_language else len(self.prefix)

    def sample_prefix(self, lang: str) -> list[int]:
        """Decoder prefix ids for one sample in language ``lang`` (e.g. "de"); see the class doc."""
        if not self.per_language:
            return self.prefix
        lang_id = self.tokenizer.convert_tokens_to_ids(f"<|{lang}|>") if lang else None
        if lang_id is None or lang_id == self.tokenizer.unk_token_id:
            raise ValueError(f"language {lang!r} has no Whisper language token (give shards a `lang` "
                             f"such as en, de, es, or set whisper.language)")
        sot, task, no_ts = self._frame
        return [sot, lang_id, task, no_ts]

    def _body(self, text: str) -> list[int]:
        return self.tokenizer.encode(" " + text.strip(), add_special_tokens=False)

    def targets(self, text: str) -> list[int]:
        ids = self._body(text) + [self.eot]
        if self.prefix_len + len(ids) > self.max_positions:
            raise ValueError(f"transcript of {self.prefix_len + len(ids)} tokens exceeds the decoder's "
                             f"{self.max_positions} positions: filter long texts ({text[:60]!r}...)")
        return ids

    def text_ids(self, text: str) -> list[int]:
        return self._body(text) or self.tokenizer.encode(" ", add_special_tokens=False)


def decoder_batch(prefix, targets: torch.Tensor, target_lens: torch.Tensor, pad_id: int):
    """Collated targets (B, L) (-100 padded) -> (decoder_input_ids (B, W), labels (B, W)).

    prefix: one prefix for every row (list[int]) or one per row (LongTensor (B, P) or a list
    of B equal-length lists, e.g. ``batch["prefix_ids"]`` with each sample's language token).
    Row i is ``prefix_i + targets[i][:-1]`` (padded with ``pad_id``), labels ``-100`` over the
    prefix but its last position, then the targets: loss falls on the text and end tokens only.
    """
    b = len(target_lens)
    if not torch.is_tensor(prefix) and prefix and isinstance(prefix[0], (list, tuple)):
        assert len({len(p) for p in prefix}) == 1, "all decoder prefixes of one model have one length"
    prefix = torch.as_tensor(prefix, dtype=torch.long, device=targets.device)
    if prefix.dim() == 1:
        prefix = prefix.expand(b, -1)
    assert prefix.shape[0] == b, f"{prefix.shape[0]} prefixes for {b} rows"
    n_prefix = prefix.shape[1]
    width = n_prefix + int(target_lens.max()) - 1
    inputs = torch.full((b, width), pad_id, dtype=torch.long, device=targets.device)
    labels = torch.full((b, width), IGNORE_INDEX, dtype=torch.long, device=targets.device)
    inputs[:, :n_prefix] = prefix
    for i, n in enumerate(target_lens.tolist()):
        inputs[i, n_prefix:n_prefix + n - 1] = targets[i, :n - 1]
        labels[i, n_prefix - 1:n_prefix - 1 + n] = targets[i, :n]
    return inputs, labels


def decoder_loss(whisper: nn.Module, states: torch.Tensor, input_ids: torch.Tensor,
                 labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher-forced decoder cross-entropy on given encoder states.

    whisper: transformers' ``WhisperForConditionalGeneration``; states (B, T, D) encoder states;
    input_ids, labels (B, L) from `decoder_batch`. Returns (mean loss over scored tokens,
    number of scored tokens). Padded input positions sit after every scored position, so the
    causal decoder never lets them change a scored token.
    """
    out = whisper.model.decoder(input_ids=input_ids, encoder_hidden_states=states, use_cache=False)
    return token_cross_entropy(whisper.proj_out(out.last_hidden_state), labels)


def spec_augment(feats: torch.Tensor, feat_lens: torch.Tensor, freq_masks: int, freq_width: int,
                 time_masks: int, time_width: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """SpecAugment (Park et al. 2019) without time warping on log-mel (B, n_mels, F).

    Each row gets ``freq_masks`` bands of up to ``freq_width`` mel bins and ``time_masks``
    spans of up to ``time_width`` x its own length (``feat_lens`` (B,)) set to the row's mean
    log-mel (Whisper's features are normalised to about [-1, 1], so 0 would be a loud value).
    Returns a new tensor; padded frames stay as they were.
    """
    out = feats.clone()
    b, n_mels, width = feats.shape
    for i, n in enumerate(feat_lens.tolist()):
        fill = feats[i, :, :n].mean()
        for _ in range(freq_masks):
            w = int(torch.randint(0, freq_width + 1, (1,), generator=generator))
            f0 = int(torch.randint(0, max(1, n_mels - w), (1,), generator=generator))
            out[i, f0:f0 + w, :n] = fill
        for _ in range(time_masks):
            w = int(torch.randint(0, int(time_width * n) + 1, (1,), generator=generator))
            t0 = int(torch.randint(0, max(1, n - w), (1,), generator=generator))
            out[i, :, t0:t0 + w] = fill
    return out
