"""Projectors: shapes, lengths, independence from batch padding, registry errors."""
import pytest
import torch
from torch import nn

from westkit.models.projector import PROJECTORS, ProjectorConfig, build_projector, register_projector


@pytest.mark.parametrize("kind", ["conv1d", "stack"])
@pytest.mark.parametrize("rate", [1, 2, 5])
def test_shapes_and_lengths(kind, rate):
    proj = build_projector(ProjectorConfig(kind=kind, rate=rate, hidden=16), in_dim=8, out_dim=12)
    x = torch.randn(3, 23, 8)
    lens = torch.tensor([23, 11, 1])
    y, out_lens = proj(x, lens)
    assert y.shape == (3, -(-23 // rate), 12)
    assert out_lens.tolist() == [-(-n // rate) for n in (23, 11, 1)]


@pytest.mark.parametrize("kind", ["conv1d", "stack"])
def test_padding_does_not_leak_into_real_frames(kind):
    """An utterance gives the same embeddings alone and next to a longer one, whatever
    garbage sits in its padded frames (the batch-size-invariance requirement)."""
    torch.manual_seed(0)
    proj = build_projector(ProjectorConfig(kind=kind, rate=3, hidden=16), in_dim=8, out_dim=6)
    short = torch.randn(1, 10, 8)
    alone, alone_lens = proj(short, torch.tensor([10]))
    batch = torch.randn(2, 17, 8) * 100  # padding of row 1 is large noise, not zeros
    batch[1, :10] = short[0]
    together, lens = proj(batch, torch.tensor([17, 10]))
    n = int(alone_lens[0])
    assert int(lens[1]) == n
    torch.testing.assert_close(together[1, :n], alone[0, :n], rtol=1e-5, atol=1e-5)


def test_unknown_kind_names_the_key_and_choices():
    with pytest.raises(ValueError, match=r"projector\.kind.*'qformer'.*conv1d.*stack"):
        build_projector(ProjectorConfig(kind="qformer"), 8, 8)


def test_registry_builds_a_new_projector_by_name():
    @register_projector("mean-test")
    class Mean(nn.Module):
        def __init__(self, cfg, in_dim, out_dim):
            super().__init__()
            self.fc = nn.Linear(in_dim, out_dim)

        def forward(self, x, lens):
            return self.fc(x), lens

    try:
        proj = build_projector(ProjectorConfig(kind="mean-test"), 4, 5)
        assert isinstance(proj, Mean) and proj.fc.out_features == 5
    finally:
        PROJECTORS.pop("mean-test")


def test_both_projectors_train():
    """One gradient step on a fixed target lowers the loss (parameters are wired to the output)."""
    for kind in ("conv1d", "stack"):
        torch.manual_seed(0)
        proj = build_projector(ProjectorConfig(kind=kind, rate=2, hidden=16), 8, 4)
        x, lens, target = torch.randn(2, 8, 8), torch.tensor([8, 6]), torch.randn(2, 4, 4)
        opt = torch.optim.SGD(proj.parameters(), lr=0.1)
        losses = []
        for _ in range(2):
            loss = (proj(x, lens)[0] - target).pow(2).mean()
            losses.append(loss.item())
            loss.backward()
            opt.step()
            opt.zero_grad()
        assert losses[1] < losses[0]
