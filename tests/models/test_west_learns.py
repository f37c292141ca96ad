"""Proof that WeST learns on CPU: the projector alone, between the real whisper-tiny.en and the
real SmolLM2-135M-Instruct (both frozen), learns a handful of espeak-ng utterances until greedy
decoding transcribes them (WER < 10%), stops at the end-of-turn token, and gives the same
hypotheses at batch size 1 and 4."""
import subprocess

import pytest
import torch

from westkit.data.audio import read_audio
from westkit.data.pipeline import collate, tokenize
from westkit.decode.search import GenerateConfig, LLMStep, greedy, token_budget
from westkit.decode.scoring import score
from westkit.models.projector import ProjectorConfig
from westkit.models.west import WestConfig, WestModel
from westkit.train import freeze

SENTENCES = ["open the door", "the cat sat down", "turn left", "seven green apples"]


@pytest.mark.slow
def test_projector_learns_real_speech(whisper_tiny_path, smollm2_path, tmp_path):
    clips = []
    for i, text in enumerate(SENTENCES):
        subprocess.run(["espeak-ng", "-w", str(tmp_path / f"{i}.wav"), text], check=True)
        clips.append(torch.tensor(read_audio(str(tmp_path / f"{i}.wav"))))
    lens = torch.tensor([len(c) for c in clips])
    audio = torch.zeros(len(clips), int(lens.max()))
    for i, c in enumerate(clips):
        audio[i, :len(c)] = c
    batch = {"audio": audio, "audio_lens": lens, "texts": SENTENCES}

    torch.manual_seed(0)
    cfg = WestConfig(encoder=whisper_tiny_path, llm=smollm2_path, system="Transcribe.", prompt="<audio>",
                     projector=ProjectorConfig(kind="conv1d", rate=8, hidden=1024))
    model = WestModel.from_config(cfg)
    targets = collate([tokenize("targets", model.prompt.target)({"key": str(i), "text": t, "lang": ""})
                       for i, t in enumerate(SENTENCES)])  # what the recipe's loader adds
    batch.update({k: targets[k] for k in ("targets", "target_lens", "num_targets")})
    assert freeze(model, ["projector.*"])  # what the engine does with train.trainable
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    gen = GenerateConfig()

    def decode(rows):
        model.eval()
        a, n = audio[rows, :int(lens[rows].max())], lens[rows]
        out = greedy(LLMStep(model.llm, model.prompt_inputs(a, n)), token_budget(n, gen), model.prompt.stop_ids)
        model.train()
        return [model.prompt.decode(o.ids) for o in out], [o.hit_limit for o in out]

    before, _ = decode(list(range(4)))
    for step in range(1, 61):
        loss = model(batch)["loss"]
        loss.backward()
        opt.step()
        opt.zero_grad()
        if step % 15 == 0:
            hyps, cut = decode(list(range(4)))
            if score(SENTENCES, hyps).wer < 0.1 and not any(cut):
                break
    assert score(SENTENCES, before).wer > 0.5  # it did not know them before training
    assert score(SENTENCES, hyps).wer < 0.1, (step, hyps)
    assert not any(cut), "every hypothesis must end with the end-of-turn token"
    assert [decode([i])[0][0] for i in range(4)] == hyps  # batch 1 == batch 4
