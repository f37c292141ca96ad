"""The TLE VAE: shapes, length mapping, losses, KL schedule, tail template, language embedding."""
import math

import pytest
import torch

from westkit.models.tle import TLE, TLEConfig, kl_free_bits, length_map, speech_frames, tle_loss


def tiny_cfg(**kw) -> TLEConfig:
    base = dict(vocab_size=50, d_text=16, text_layers=1, text_heads=2, max_text_len=32, d_latent=4,
                d_model=12, n_frames=60, d_conv=16, conv_layers=2, conv_kernel=3, dropout=0.0,
                margin_frames=4, beta=0.1, beta_warmup_steps=10, free_bits=0.0)
    base.update(kw)
    return TLEConfig(**base)


def test_shapes_and_masks():
    torch.manual_seed(0)
    cfg = tiny_cfg()
    tle = TLE(cfg)
    tokens = torch.randint(1, 50, (3, 7))
    out = tle(tokens, torch.tensor([7, 4, 1]), n=torch.tensor([20, 10, 60]))
    assert out.states.shape == (3, 60, 12)
    assert out.mu.shape == out.logvar.shape == (3, 4)
    assert out.log_frames.shape == (3,)
    # template tail: regress up to n + margin, clipped to the grid
    assert out.regress_mask.sum(1).tolist() == [24, 14, 60]
    out = TLE(tiny_cfg(tail="regress"))(tokens, torch.tensor([7, 4, 1]), n=torch.tensor([20, 10, 60]))
    assert out.regress_mask.all()


def test_padding_does_not_change_a_row():
    """A row's states do not depend on how much padding its batch adds (masking is right)."""
    torch.manual_seed(0)
    tle = TLE(tiny_cfg()).eval()
    a = torch.randint(1, 50, (1, 5))
    alone = tle(a, torch.tensor([5]), n=torch.tensor([17])).states
    padded = torch.cat([a, torch.randint(1, 50, (1, 4))], dim=1)
    other = torch.randint(1, 50, (1, 9))
    both = tle(torch.cat([padded, other]), torch.tensor([5, 9]), n=torch.tensor([17, 30])).states
    torch.testing.assert_close(both[0], alone[0], atol=1e-5, rtol=1e-5)


def test_length_map_linear_interpolation():
    h = torch.arange(4, dtype=torch.float32).view(1, 4, 1).repeat(2, 1, 1)  # token i holds value i
    mapped, mask = length_map(h, torch.tensor([4, 2]), torch.tensor([8, 3]), n_frames=10)
    assert mask.sum(1).tolist() == [8, 3]
    # row 0: frame t reads position (t + 0.5) * 4 / 8 - 0.5 = t / 2 - 0.25, clamped to [0, 3]
    want = [max(0.0, min(3.0, t / 2 - 0.25)) for t in range(8)] + [0.0, 0.0]
    torch.testing.assert_close(mapped[0, :, 0], torch.tensor(want))
    # row 1 (2 tokens over 3 frames): ends land on the first and last token, the middle halfway
    torch.testing.assert_close(mapped[1, :3, 0], torch.tensor([0.0, 0.5, 1.0]))
    assert mapped[1, 3:].abs().sum() == 0


def test_length_map_identity_when_one_frame_per_token():
    h = torch.randn(1, 6, 3)
    mapped, _ = length_map(h, torch.tensor([6]), torch.tensor([6]), n_frames=6)
    torch.testing.assert_close(mapped, h)


def test_speech_frames():
    lens = torch.tensor([1, 320, 321, 16000, 480000, 500000])
    assert speech_frames(lens, 1500).tolist() == [1, 1, 2, 50, 1500, 1500]


def test_kl_matches_closed_form_and_free_bits():
    torch.manual_seed(0)
    mu, logvar = torch.randn(5, 3), torch.randn(5, 3)
    q = torch.distributions.Normal(mu, (0.5 * logvar).exp())
    p = torch.distributions.Normal(torch.zeros(3), torch.ones(3))
    want = torch.distributions.kl_divergence(q, p).mean(0).sum()
    pen, raw = kl_free_bits(mu, logvar, free_bits=0.0)
    torch.testing.assert_close(raw, want)
    torch.testing.assert_close(pen, want)
    # at the prior the KL is 0, and free bits lift every dimension to the floor
    pen, raw = kl_free_bits(torch.zeros(2, 3), torch.zeros(2, 3), free_bits=0.25)
    assert float(raw) == 0.0 and float(pen) == pytest.approx(0.75)


def test_loss_terms_and_template_tail_ignores_late_frames():
    torch.manual_seed(0)
    cfg = tiny_cfg()
    tle = TLE(cfg).eval()
    tokens, lens, n = torch.randint(1, 50, (2, 5)), torch.tensor([5, 3]), torch.tensor([10, 20])
    out = tle(tokens, lens, n=n)
    teacher = torch.randn(2, 60, 12)
    losses = tle_loss(out, teacher, n, cfg, beta=0.5)
    mask = out.regress_mask
    want_mse = ((out.states - teacher) ** 2)[mask].mean()
    torch.testing.assert_close(losses["mse"], want_mse)
    dur = ((out.log_frames - n.float().log()) ** 2).mean()
    kl_pen, _ = kl_free_bits(out.mu, out.logvar, cfg.free_bits)
    torch.testing.assert_close(losses["loss"], want_mse + 0.5 * kl_pen + dur)
    # frames after n + margin are not regressed with the template tail ...
    changed = teacher.clone()
    changed[:, 30:] += 5.0
    assert float(tle_loss(out, changed, n, cfg, 0.5)["loss"].detach()) == pytest.approx(float(losses["loss"].detach()))
    # ... but they are with the regressed tail
    cfg_r = tiny_cfg(tail="regress")
    out_r = TLE(cfg_r).eval()(tokens, lens, n=n)
    assert float(tle_loss(out_r, changed, n, cfg_r, 0.5)["mse"]) > float(tle_loss(out_r, teacher, n, cfg_r, 0.5)["mse"]) + 1


def test_tail_template_is_teacher_mean_and_cropped_grid_matches_full():
    torch.manual_seed(0)
    cfg = tiny_cfg()
    tle = TLE(cfg).eval()
    tokens, lens, n = torch.randint(1, 50, (2, 5)), torch.tensor([5, 3]), torch.tensor([10, 6])
    full = tle(tokens, lens, n=n).states    # empty template: the conv stack runs on all frames
    teacher = torch.randn(2, 60, 12)
    tle.update_tail_template(teacher, torch.tensor([5, 5]))
    tle.update_tail_template(-teacher, torch.tensor([5, 5]))
    tle.update_tail_template(torch.full((1, 60, 12), 3.0), torch.tensor([5]))
    out = tle(tokens, lens, n=n)
    # after n + margin: the mean of what the teacher showed there, (t + t - t - t + 3) / 5
    assert torch.allclose(out.states[0, 14:], torch.full((46, 12), 0.6), atol=1e-6)
    assert torch.allclose(out.states[1, 10:], torch.full((50, 12), 0.6), atol=1e-6)
    # regressed frames are the same whether the stack ran on the cropped or the full grid
    torch.testing.assert_close(out.states[0, :14], full[0, :14])
    torch.testing.assert_close(out.states[1, :10], full[1, :10])


def test_beta_warmup():
    tle = TLE(tiny_cfg(beta=0.2, beta_warmup_steps=10))
    assert tle.beta() == 0.0
    tle.num_updates += 5
    assert tle.beta() == pytest.approx(0.1)
    tle.num_updates += 50
    assert tle.beta() == pytest.approx(0.2)
    assert "num_updates" in tle.state_dict()  # the schedule resumes with a checkpoint


def test_predicted_length_used_without_n_and_sampling_is_random_only_in_training():
    torch.manual_seed(0)
    tle = TLE(tiny_cfg()).eval()
    tokens, lens = torch.randint(1, 50, (2, 6)), torch.tensor([6, 2])
    out = tle(tokens, lens)
    # the duration head starts at ~6 frames per token
    assert out.n.tolist() == [36, 12]
    for block in tle.blocks:  # FiLM starts as the identity; give z a say
        torch.nn.init.normal_(block.film.weight)
    out = tle(tokens, lens)
    torch.testing.assert_close(tle(tokens, lens).states, out.states)  # z = mu in eval
    a, b = tle(tokens, lens, sample=True).states, tle(tokens, lens, sample=True).states
    assert (a - b).abs().max() > 1e-4


def test_language_embedding():
    torch.manual_seed(0)
    tle = TLE(tiny_cfg(num_langs=2, langs=["en", "de"])).eval()
    tokens, lens, n = torch.randint(1, 50, (1, 5)), torch.tensor([5]), torch.tensor([12])
    en = tle(tokens, lens, n=n, langs=torch.tensor([0])).states
    de = tle(tokens, lens, n=n, langs=torch.tensor([1])).states
    assert (en - de).abs().max() > 1e-4
    with pytest.raises(ValueError, match="langs"):
        tle(tokens, lens, n=n)


def test_too_long_text_is_a_user_error():
    tle = TLE(tiny_cfg(max_text_len=8))
    with pytest.raises(ValueError, match="max_text_len"):
        tle(torch.ones(1, 9, dtype=torch.long), torch.tensor([9]))


def test_fits_a_synthetic_teacher():
    """The VAE can learn: states and durations that depend on the text are fitted within a few
    dozen steps (loss drops well below where it starts)."""
    torch.manual_seed(0)
    cfg = tiny_cfg(n_frames=40, margin_frames=2, beta=1e-3, beta_warmup_steps=0)
    tle = TLE(cfg)
    table = torch.randn(50, 12)
    opt = torch.optim.Adam(tle.parameters(), lr=3e-3)

    def batch():
        lens = torch.randint(2, 6, (8,))
        tokens = torch.randint(1, 50, (8, 5)) * (torch.arange(5)[None] < lens[:, None])
        n = lens * 4                                     # 4 frames per token
        mapped, _ = length_map(table[tokens], lens, n, cfg.n_frames)
        return tokens, lens, n, mapped

    losses = []
    for _ in range(150):
        tokens, lens, n, teacher = batch()
        out = tle(tokens, lens, n=n)
        tle.update_tail_template(teacher, n)
        loss = tle_loss(out, teacher, n, cfg, tle.beta())
        opt.zero_grad()
        loss["loss"].backward()
        opt.step()
        losses.append((float(loss["mse"]), float(loss["dur"])))
    first, last = losses[0], [sum(x) / 10 for x in zip(*losses[-10:])]
    assert last[0] < 0.5 * first[0]
    assert last[1] < 0.1 * first[1]
    tle.eval()
    tokens, lens, n, _ = batch()
    pred = tle(tokens, lens).n
    assert (pred - n).abs().float().mean() < 2.0
    assert not math.isnan(last[0])
