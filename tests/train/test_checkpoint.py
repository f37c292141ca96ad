"""`westkit.train.checkpoint` helpers that need no process group."""
import os
import stat

import pytest
import torch
from safetensors.torch import load_file

from westkit.train.checkpoint import save_safetensors


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_trainable_weights_get_the_mode_of_any_new_file(tmp_path, umask, mode):
    """trainable.safetensors must be readable by whoever can read the checkpoints beside it
    (safetensors itself creates its file 0600 whatever the umask)."""
    old = os.umask(umask)
    try:
        path = save_safetensors({"w": torch.arange(3.0)}, tmp_path / "trainable.safetensors",
                                {"step": "7"})
        (tmp_path / "plain").write_text("")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == stat.S_IMODE((tmp_path / "plain").stat().st_mode) == mode
    assert torch.equal(load_file(str(path))["w"], torch.arange(3.0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain", "trainable.safetensors"]
