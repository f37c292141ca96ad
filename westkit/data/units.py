"""Speech units: k-means over a Whisper encoder layer (the offline default) or CosyVoice S3 tokens.

A *unit codebook* file (safetensors) holds ``centroids`` (K, D) and, in its metadata, the
Whisper model, its encoder fingerprint, the layer and the pooling (``pool`` consecutive 50 Hz
states averaged: 2 gives 25 units per second, the rate of CosyVoice 2's S3 tokens). Fit one:

    westkit units fit general-train --layer 4 --k 512 --out exp/units/tiny-l4-k512.safetensors

The data pipeline turns each sample's audio into ``targets = units + [K]`` (K is the EOS id)
with `kmeans_units(FILE)` or `s3_units(HUB_ID)`, so the batch arrives with ``targets``,
``target_lens`` and ``num_targets`` like every recipe's (`westkit.data.pipeline` schema).
The steps run the encoder in the loader's workers, on every rank alike (ZeRO-safe: ``forward``
never sees it).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from westkit.data.loader import LoaderConfig, build_loader


@dataclass
class Codebook:
    """K-means unit centroids over one Whisper encoder layer."""
    centroids: torch.Tensor   # (K, D) float32
    model: str
    fingerprint: str
    layer: int
    pool: int
    frames: int = 0           # frames the centroids were fitted on
    inertia: float = 0.0      # mean squared distance of those frames to their centroid

    @property
    def k(self) -> int:
        return self.centroids.shape[0]

    def save(self, path: str | Path) -> Path:
        from safetensors.torch import save_file
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {"kind": "westkit-units", "model": self.model, "fingerprint": self.fingerprint,
                "layer": str(self.layer), "pool": str(self.pool), "frames": str(self.frames),
                "inertia": repr(self.inertia)}
        tmp = path.with_name(path.name + ".partial")
        save_file({"centroids": self.centroids.contiguous()}, str(tmp), metadata=meta)
        tmp.rename(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> Codebook:
        from safetensors import safe_open
        if not Path(path).is_file():
            raise ValueError(f"unit codebook {path} does not exist: fit one with "
                             f"`westkit units fit SHARDS --layer N --k 512 --out {path}`")
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
            if meta.get("kind") != "westkit-units":
                raise ValueError(f"{path} is not a unit codebook made by `westkit units fit`")
            centroids = f.get_tensor("centroids").float()
        return cls(centroids, meta["model"], meta["fingerprint"], int(meta["layer"]), int(meta["pool"]),
                   int(meta.get("frames", 0)), float(meta.get("inertia", 0.0)))

    def assign(self, frames: torch.Tensor) -> torch.Tensor:
        """(N, D) -> (N,) nearest centroid ids."""
        return _nearest(frames.float(), self.centroids)


def _nearest(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    d = (x * x).sum(1, keepdim=True) - 2 * x @ c.T + (c * c).sum(1)[None, :]
    return d.argmin(1)


def kmeans(x: torch.Tensor, k: int, iters: int = 30, seed: int = 0) -> tuple[torch.Tensor, float]:
    """Lloyd's k-means with k-means++ seeding: x (N, D) -> (centroids (K, D), mean sq. distance).

    Empty clusters are reseeded with the frames farthest from their centroid."""
    if len(x) < k:
        raise ValueError(f"k-means: {len(x)} frames cannot make {k} units: fit on more audio or lower --k")
    g = torch.Generator().manual_seed(seed)
    x = x.float()
    centroids = x[torch.randint(len(x), (1,), generator=g)]
    d2 = ((x - centroids[0]) ** 2).sum(1)
    for _ in range(1, k):   # k-means++: the next seed with probability ~ squared distance
        nxt = x[torch.multinomial(d2 / d2.sum(), 1, generator=g)]
        centroids = torch.cat([centroids, nxt])
        d2 = torch.minimum(d2, ((x - nxt) ** 2).sum(1))
    for _ in range(iters):
        idx = _nearest(x, centroids)
        sums = torch.zeros_like(centroids).index_add_(0, idx, x)
        counts = torch.bincount(idx, minlength=k).float()
        empty = counts == 0
        centroids = torch.where(empty[:, None], centroids, sums / counts.clamp(min=1)[:, None])
        if empty.any():
            far = ((x - centroids[idx]) ** 2).sum(1).topk(int(empty.sum())).indices
            centroids[empty] = x[far]
    idx = _nearest(x, centroids)
    return centroids, float(((x - centroids[idx]) ** 2).sum(1).mean())


def pooled_frames(states: torch.Tensor, lens: torch.Tensor, pool: int) -> list[torch.Tensor]:
    """(B, T, D) states with lengths (B,) -> per utterance (ceil(len / pool), D): means of
    ``pool`` consecutive frames (a last, shorter group is averaged over what it has)."""
    out = []
    for s, n in zip(states, lens.tolist()):
        s = s[:n].float()
        groups = -(-n // pool)
        padded = torch.zeros(groups * pool, s.shape[-1])
        padded[:n] = s
        counts = torch.zeros(groups * pool)
        counts[:n] = 1
        out.append(padded.reshape(groups, pool, -1).sum(1) / counts.reshape(groups, pool).sum(1, keepdim=True))
    return out


def _layer_frames(encoder, audio: torch.Tensor, audio_lens: torch.Tensor, layer: int, pool: int):
    last, hidden, lens = encoder.forward_layers(audio, audio_lens, layer)
    return pooled_frames(hidden, lens, pool)


def fit_units(shards: list[str], out: str | Path, model: str = "whisper-tiny.en", layer: int = 4,
              k: int = 512, pool: int = 2, max_frames: int = 200_000, iters: int = 30, seed: int = 0,
              batch_size: int = 16, progress: bool = True) -> Codebook:
    """Fit a ``k``-unit codebook on layer ``layer`` of ``model``'s encoder over ``shards``."""
    from tqdm import tqdm

    from westkit.models.whisper import WhisperAudioEncoder, encoder_fingerprint, load_whisper_encoder

    if k < 2 or pool < 1:
        raise ValueError(f"--k must be >= 2 and --pool >= 1 (got {k}, {pool})")
    encoder = WhisperAudioEncoder(load_whisper_encoder(model)).eval()
    if not 0 <= layer <= encoder.num_layers:
        raise ValueError(f"--layer {layer}: {model} has {encoder.num_layers} encoder layers, choose 0..{encoder.num_layers}")
    cfg = LoaderConfig(shards=list(shards), max_batch_size=batch_size, max_batch_seconds=1e9, shuffle=False,
                       num_workers=1, min_text_chars=0)
    loader = build_loader(cfg, train=False)
    frames = []
    for batch in tqdm(loader, desc="units: encode", unit="batch", total=len(loader), disable=not progress):
        if "audio" in batch:
            frames += _layer_frames(encoder, batch["audio"], batch["audio_lens"], layer, pool)
    if not frames:
        raise ValueError(f"{shards}: no audio to fit units on")
    x = torch.cat(frames)
    if len(x) > max_frames:   # a seeded subsample keeps k-means within memory and minutes
        x = x[torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:max_frames]]
    if progress:
        print(f"units: k-means, {k} units over {len(x)} frames of layer {layer}", flush=True)
    centroids, inertia = kmeans(x, k, iters, seed)
    book = Codebook(centroids, model, encoder_fingerprint(encoder.encoder), layer, pool, len(x), inertia)
    book.save(out)
    return book


# -- pipeline steps: audio -> targets ------------------------------------------------------------

class _Units:
    """A pipeline step ``sample -> sample`` adding ``targets = units + [eos]`` from ``audio``
    (text-only samples pass unchanged). Models load lazily, once per worker process."""

    def __init__(self):
        self._model = None

    def __getstate__(self):   # workers load their own copy
        return dict(self.__dict__, _model=None)

    def __call__(self, sample: dict) -> dict:
        if "audio" not in sample:
            return sample
        return dict(sample, targets=self.units(sample["audio"]) + [self.eos])


class KMeansUnits(_Units):
    """K-means units over the codebook's Whisper layer (`Codebook`).

    ``from_states`` ("last" or "middle"): take the layer from the sample's precomputed
    ``states`` [last | middle] (``westkit-encode --layer``) instead of running the encoder;
    the caller says which half is the codebook's layer. (Those states are float16, so a few
    frames near a boundary between two units may be assigned differently.)
    """

    def __init__(self, path: str | Path, from_states: str | None = None):
        super().__init__()
        assert from_states in (None, "last", "middle")
        self.path, self.from_states = str(path), from_states
        self.book = Codebook.load(path)
        self.eos = self.book.k

    def __call__(self, sample: dict) -> dict:
        if self.from_states and "states" in sample:
            states = torch.from_numpy(sample["states"].astype(np.float32))
            d = states.shape[-1] // 2
            layer = states[:, :d] if self.from_states == "last" else states[:, d:]
            frames = pooled_frames(layer[None], torch.tensor([len(layer)]), self.book.pool)[0]
            return dict(sample, targets=self.book.assign(frames).tolist() + [self.eos])
        return super().__call__(sample)

    def units(self, audio: np.ndarray) -> list[int]:
        from westkit.models.whisper import WhisperAudioEncoder, load_whisper_encoder
        if self._model is None:
            torch.set_num_threads(1)
            self._model = WhisperAudioEncoder(load_whisper_encoder(self.book.model)).eval()
        x = torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32))[None]
        with torch.no_grad():
            frames = _layer_frames(self._model, x, torch.tensor([x.shape[1]]), self.book.layer, self.book.pool)[0]
        return self.book.assign(frames).tolist()


class S3Units(_Units):
    """CosyVoice S3 tokens from the ``s3tokenizer`` package (weights by hub/model id, e.g.
    ``speech_tokenizer_v1`` 50 Hz or ``speech_tokenizer_v2_25hz``); K = 4096 (v1) or 6561 (v2)."""

    def __init__(self, name: str):
        super().__init__()
        try:
            import s3tokenizer  # noqa: F401
        except ImportError:
            raise ValueError("units.kind=s3 needs the s3tokenizer package (`pip install s3tokenizer`) and "
                             "its weights (downloaded from the hub on first use); offline, fit k-means units "
                             "instead: `westkit units fit SHARDS --layer N --k 512 --out FILE`") from None
        self.name = name
        self.eos = 6561 if "v2" in name else 4096
        self._load()   # fail here, before training, when the weights cannot be had

    def _load(self):
        import s3tokenizer
        try:
            self._model = s3tokenizer.load_model(self.name).eval()
        except Exception as e:
            raise ValueError(f"units.s3: could not load S3 tokenizer {self.name!r} ({type(e).__name__}: {e}); "
                             f"it is downloaded on first use, so run once with network, or use k-means units "
                             f"(`westkit units fit`)") from None
        return self._model

    def units(self, audio: np.ndarray) -> list[int]:
        import s3tokenizer
        model = self._model or self._load()
        mel = s3tokenizer.log_mel_spectrogram(torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32)))
        mels, mel_lens = s3tokenizer.padding([mel])
        with torch.no_grad():
            codes, code_lens = model.quantize(mels, mel_lens)
        return codes[0, :int(code_lens[0])].tolist()


def main_fit(args) -> int:
    """``westkit units fit`` (see `westkit.cli`)."""
    book = fit_units(args.shards, args.out, args.model, args.layer, args.k, args.pool, args.max_frames,
                     args.iters, args.seed)
    print(json.dumps({"out": str(args.out), "k": book.k, "layer": book.layer, "pool": book.pool,
                      "frames": book.frames, "inertia": round(book.inertia, 4)}))
    return 0


def codebook_for(path: str | Path, fit_on: list[str], model: str, layer: int, k: int, pool: int,
                 seed: int = 0) -> Codebook:
    """The codebook at ``path``; when it does not exist and ``fit_on`` names shards, fit it
    there first (under a file lock, so concurrent ranks fit once and the others wait)."""
    from filelock import FileLock

    path = Path(path)
    if not path.is_file() and fit_on:
        path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(path) + ".lock"):
            if not path.is_file():
                fit_units(fit_on, path, model, layer, k, pool, seed=seed)
    book = Codebook.load(path)
    if fit_on and (book.layer, book.k, book.pool) != (layer, k, pool):
        raise ValueError(f"unit codebook {path} has layer {book.layer}, k {book.k}, pool {book.pool}, but the "
                         f"config asks for {layer}, {k}, {pool}: name another file or delete this one")
    return book
