"""Fast unit tests of the engine's pure parts: config, schedule, loss normalisation,
DeepSpeed config filling, freezing, metrics files and curves. No process group needed."""
import json
import math

import pytest
import torch
import torch.nn as nn

from westkit.config import build
from westkit.train import ds_config
from westkit.train.config import TrainConfig
from westkit.train.engine import freeze
from westkit.train.logger import RunLogger, plot_curves, read_metrics
from westkit.models.losses import count_tokens, token_cross_entropy
from westkit.train.losses import accumulation_weights
from westkit.train.schedule import lr_factor


def test_config_from_yaml_section_rejects_unknown_and_bad_values():
    cfg = build(TrainConfig, {"max_steps": 50, "lr": 1, "trainable": ["projector.*"]},
                "conf/x.yaml: train")
    assert cfg.lr == 1.0 and cfg.max_steps == 50
    with pytest.raises(ValueError, match="conf/x.yaml: train.*unknown key.*max_step"):
        build(TrainConfig, {"max_step": 5}, "conf/x.yaml: train")
    with pytest.raises(ValueError, match="warmup_steps"):
        TrainConfig(max_steps=10, warmup_steps=20)
    with pytest.raises(ValueError, match="schedule"):
        build(TrainConfig, {"schedule": "exponential"}, "train")


def test_max_steps_below_the_shipped_warmup_names_both_keys_and_the_fix():
    from pathlib import Path

    from westkit.config import load_yaml

    path = Path(__file__).resolve().parents[2] / "recipes/west/conf/tiny.yaml"
    conf = load_yaml(path, ["train.max_steps=3"])
    with pytest.raises(ValueError) as e:
        build(TrainConfig, conf["train"], f"{path}: train")
    assert str(e.value) == (
        f"{path}: train: train.warmup_steps (20) is more than train.max_steps (3): the learning "
        "rate would never finish warming up; lower it too, e.g. train.max_steps=3 "
        "train.warmup_steps=0 (set on the command line: train.max_steps=3)")


@pytest.mark.parametrize("schedule", ["cosine", "linear", "constant"])
def test_schedule_warms_up_then_decays_to_min(schedule):
    cfg = TrainConfig(max_steps=100, warmup_steps=10, schedule=schedule, min_lr_ratio=0.1)
    f = [lr_factor(s, cfg) for s in range(101)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert all(b >= a for a, b in zip(f[:10], f[1:10]))          # warmup rises
    assert all(b <= a + 1e-12 for a, b in zip(f[10:], f[11:]))    # then never rises
    assert f[100] == pytest.approx(1.0 if schedule == "constant" else 0.1)
    if schedule == "cosine":
        assert f[55] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))


def test_token_cross_entropy_ignores_masked_positions_and_empty_batches():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 7)
    labels = torch.tensor([[1, 2, -100, -100, -100], [3, 4, 5, 6, -100]])
    loss, n = token_cross_entropy(logits, labels)
    keep = labels != -100
    expected = nn.functional.cross_entropy(logits[keep], labels[keep])
    assert int(n) == 6 == count_tokens(labels)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    empty, n0 = token_cross_entropy(logits, torch.full((2, 5), -100))
    assert int(n0) == 0 and empty.item() == 0.0


def test_accumulation_weights_make_the_deepspeed_average_a_token_mean():
    """Simulate DeepSpeed: grads of each weighted micro-batch loss divided by G and averaged
    over W ranks must equal the gradient of the mean over all tokens of the step."""
    torch.manual_seed(0)
    w = torch.randn(4, 3, requires_grad=True)
    world, per_rank = 2, 3
    micro = [[(torch.randn(n, 4), torch.randint(0, 3, (n,))) for n in ns]
             for ns in ([1, 5, 2], [7, 3, 4])]                      # [rank][micro-batch]
    total = sum(x.shape[0] for rank in micro for x, _ in rank)
    grad = torch.zeros_like(w)
    for rank in micro:
        weights = accumulation_weights([x.shape[0] for x, _ in rank], total, world)
        for (x, y), weight in zip(rank, weights):
            loss = nn.functional.cross_entropy(x @ w, y)             # the model's mean
            g, = torch.autograd.grad(loss * weight / per_rank, w)    # DeepSpeed divides by G
            grad += g / world                                        # ... and averages ranks
    xs = torch.cat([x for rank in micro for x, _ in rank])
    ys = torch.cat([y for rank in micro for _, y in rank])
    reference, = torch.autograd.grad(nn.functional.cross_entropy(xs @ w, ys), w)
    torch.testing.assert_close(grad, reference, rtol=1e-5, atol=1e-6)
    unweighted = sum(torch.autograd.grad(nn.functional.cross_entropy(x @ w, y), w)[0]
                     for rank in micro for x, y in rank) / (world * per_rank)
    assert not torch.allclose(unweighted, reference, atol=1e-4)     # the weighting matters


@pytest.mark.parametrize("name", ["zero2", "zero3", "zero3_offload"])
def test_shipped_ds_configs_fill_every_auto_field(name):
    cfg = TrainConfig(grad_accum=4, grad_clip=0.5)
    model = nn.Linear(3, 3)
    model.config = type("C", (), {"hidden_size": 64})()
    ds = ds_config.load(name, cfg, world_size=2, on_gpu=False, model=model)
    assert "auto" not in json.dumps(ds)
    assert ds["gradient_accumulation_steps"] == 4 and ds["train_batch_size"] == 8
    assert ds["gradient_clipping"] == 0.5 and ds["bf16"]["enabled"] is False
    assert "offload_optimizer" not in ds["zero_optimization"]     # a no-op on CPU
    if name != "zero2":
        assert ds["zero_optimization"]["reduce_bucket_size"] == 64 * 64
    gpu = ds_config.load(name, TrainConfig(), world_size=8, on_gpu=True)
    assert gpu["bf16"]["enabled"] is True
    assert ds_config.offloads_optimizer(gpu) == (name == "zero3_offload")


def test_ds_config_mistakes_are_named(tmp_path):
    with pytest.raises(ValueError, match="zero9.*zero2"):
        ds_config.find("zero9")
    bad = tmp_path / "bad.json"
    bad.write_text('{"optimizer": {"type": "Adam"}}')
    with pytest.raises(ValueError, match="bad.json.*optimizer"):
        ds_config.load(str(bad), TrainConfig(), 1, False)
    bad.write_text('{\n "a": 1,,\n}')
    with pytest.raises(ValueError, match="bad.json: line 2"):
        ds_config.load(str(bad), TrainConfig(), 1, False)
    with pytest.raises(ValueError, match="bf16 needs a GPU"):
        ds_config.load("zero3", TrainConfig(precision="bf16"), 1, False)


def test_freeze_keeps_only_matching_parameters():
    model = nn.ModuleDict({"encoder": nn.Linear(2, 2), "projector": nn.Linear(2, 2)})
    names = freeze(model, ["projector.*"])
    assert names == ["projector.weight", "projector.bias"]
    assert not any(p.requires_grad for p in model["encoder"].parameters())
    with pytest.raises(ValueError, match="'proj' matches no parameter.*encoder.weight"):
        freeze(model, ["proj"])


def test_metrics_jsonl_keeps_last_record_per_step_and_plots(tmp_path):
    log = RunLogger(tmp_path)
    for step, loss in [(1, 3.0), (2, 2.0), (2, 1.5), (3, 1.0)]:  # step 2 repeated by a resume
        log.record(step, {"loss": loss, "lr": 0.1 * step})
    log.record(3, {"loss": 1.2, "wer": 0.3}, "eval")
    log.plot()
    log.close()
    rows = read_metrics(tmp_path / "metrics.jsonl")
    train = [(r["step"], r["loss"]) for r in rows if r["kind"] == "train"]
    assert train == [(1, 3.0), (2, 1.5), (3, 1.0)]
    png = (tmp_path / "curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    plot_curves(tmp_path / "metrics.jsonl", tmp_path / "again.png")
    assert (tmp_path / "again.png").stat().st_size > 5000


def _dead_run(out, steps=(5, 10, 15, 20), torn=True):
    """metrics.jsonl as a run that logged ``steps`` (eval at 10 and 20) and was killed
    mid-write leaves it."""
    with open(out / "metrics.jsonl", "w") as f:
        for step in steps:
            f.write(json.dumps({"kind": "train", "step": step, "time": 0.0, "loss": 1.0 / step}) + "\n")
            if step % 10 == 0:
                f.write(json.dumps({"kind": "eval", "step": step, "time": 0.0, "loss": 2.0 / step}) + "\n")
        if torn:
            f.write('{"kind": "train", "step": 2')


def test_resumed_run_drops_the_records_no_checkpoint_continues(tmp_path, capsys):
    _dead_run(tmp_path)
    log = RunLogger(tmp_path)
    log.continue_from(10)                       # the last checkpoint was step 10
    assert f"dropped 4 records after step 10" in capsys.readouterr().out
    log.record(15, {"loss": 0.5})
    log.close()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["kind"], r["step"]) for r in rows] == [("train", 5), ("train", 10), ("eval", 10),
                                                      ("train", 15)]
    assert rows[-1]["loss"] == 0.5              # the new run's step 15, not the dead run's
    assert not list(tmp_path.glob("*.tmp"))


def test_run_starting_at_step_0_moves_a_stale_metrics_file_aside(tmp_path, capsys):
    _dead_run(tmp_path, torn=False)
    before = (tmp_path / "metrics.jsonl").read_text()
    log = RunLogger(tmp_path)
    log.continue_from(0)
    assert "moved it to" in capsys.readouterr().out
    log.record(5, {"loss": 0.7})
    log.close()
    assert (tmp_path / "metrics.jsonl.stale").read_text() == before
    assert [(r["step"], r["loss"]) for r in read_metrics(tmp_path / "metrics.jsonl")] == [(5, 0.7)]


def test_resume_with_nothing_to_drop_leaves_the_file_alone(tmp_path, capsys):
    _dead_run(tmp_path, torn=False)
    before = (tmp_path / "metrics.jsonl").read_text()
    RunLogger(tmp_path).continue_from(20)
    assert (tmp_path / "metrics.jsonl").read_text() == before
    assert "dropped" not in capsys.readouterr().out


def test_gradient_checkpointing_reaches_nested_hf_models_and_keeps_gradients():
    from transformers import LlamaConfig, LlamaForCausalLM

    from westkit.train.engine import enable_gradient_checkpointing

    class Wrapper(nn.Module):  # a projector feeding a frozen LLM, like the WeST model
        def __init__(self):
            super().__init__()
            self.projector = nn.Linear(8, 32)
            self.llm = LlamaForCausalLM(LlamaConfig(
                hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, vocab_size=50))

        def forward(self, x):
            return self.llm(inputs_embeds=self.projector(x)).logits.float().square().mean()

    torch.manual_seed(0)
    model = Wrapper()
    freeze(model, ["projector.*"])
    model.train()
    x = torch.randn(2, 5, 8)
    reference = torch.autograd.grad(model(x), model.projector.weight)[0]
    assert enable_gradient_checkpointing(model) == ["llm"]
    assert model.llm.model.gradient_checkpointing
    checkpointed = torch.autograd.grad(model(x), model.projector.weight)[0]
    torch.testing.assert_close(checkpointed, reference)
    assert enable_gradient_checkpointing(nn.Linear(2, 2)) == []


def test_step_stats_weights_loss_by_tokens_and_averages_other_outputs():
    from westkit.train.metrics import StepStats

    stats = StepStats()
    stats.add({"loss": torch.tensor(1.0), "num_tokens": 3, "audio_padding": torch.tensor(0.5)}, 3)
    stats.add({"loss": torch.tensor(3.0), "num_tokens": 1, "audio_padding": 0.1}, 1)
    stats.add({"loss": torch.tensor(2.0), "num_tokens": 1, "llm_padding": 0.2}, 1)
    stats.end_step()
    out = stats.reduce(torch.device("cpu"))
    assert out["loss"] == pytest.approx((1 * 3 + 3 * 1 + 2 * 1) / 5)
    assert out["num_tokens"] == 5
    assert out["audio_padding"] == pytest.approx(0.3)  # mean over the micro-batches reporting it
    assert out["llm_padding"] == pytest.approx(0.2)


def test_zero_stage_of_the_shipped_configs():
    assert [ds_config.zero_stage(n) for n in ("zero2", "zero3", "zero3_offload")] == [2, 3, 3]
