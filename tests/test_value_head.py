"""The value head's checkpoint format, old and new."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from engine.critics.value import CONFIG_FILE, ValueHead, load_value_head, save_value_head


def test_normalised_head_ignores_the_hidden_state_scale(tmp_path: Path) -> None:
    torch.manual_seed(0)
    head = ValueHead(16, 8)
    hidden = torch.randn(3, 16) * 50
    saved = save_value_head(head, tmp_path / "value", base_model="m")
    loaded, config = load_value_head(saved)
    assert config["normalize"] is True
    assert torch.allclose(loaded(hidden), head(hidden))
    assert torch.allclose(loaded(hidden), loaded(hidden / 50), atol=1e-5)


def test_checkpoint_without_the_normalize_key_loads_unnormalised(tmp_path: Path) -> None:
    torch.manual_seed(0)
    head = ValueHead(16, 8, normalize=False)
    saved = save_value_head(head, tmp_path / "value", base_model="m")
    config = json.loads((saved / CONFIG_FILE).read_text())
    del config["normalize"]  # as written before normalisation existed
    (saved / CONFIG_FILE).write_text(json.dumps(config))
    loaded, _ = load_value_head(saved)
    hidden = torch.randn(3, 16) * 50
    assert loaded.normalize is False
    assert torch.allclose(loaded(hidden), torch.sigmoid(head.mlp(hidden).squeeze(-1)))
