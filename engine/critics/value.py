"""The value head: a small MLP on the language model's last hidden state.

A checkpoint is a directory holding ``value_head.json`` (sizes and the base
model it was trained on) and ``value_head.pt`` (the MLP's weights). Training
writes it; the search only loads it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from engine.errors import ValueCheckpointError
from engine.types import HiddenStateReader, TrajectoryRequest

CONFIG_FILE = "value_head.json"
WEIGHTS_FILE = "value_head.pt"


class ValueHead(nn.Module):
    """``sigmoid(W2 tanh(W1 norm(h) + b1) + b2)``: expected return in [0, 1] of a state.

    ``norm`` is a LayerNorm without weights: a language model's last hidden
    state can have a norm near 50 with single dimensions near 30, which made
    the unnormalised MLP collapse to one score at learning rates >= 3e-3.
    Checkpoints written before it existed load with ``normalize=False``.
    """

    def __init__(self, hidden_size: int, inner_size: int = 256, *, normalize: bool = True) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.inner_size = inner_size
        self.normalize = normalize
        self.norm = nn.LayerNorm(hidden_size, elementwise_affine=False) if normalize else nn.Identity()
        self.mlp = nn.Sequential(nn.Linear(hidden_size, inner_size), nn.Tanh(), nn.Linear(inner_size, 1))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.mlp(self.norm(hidden)).squeeze(-1))


def save_value_head(head: ValueHead, directory: str | Path, *, base_model: str) -> Path:
    """Write the checkpoint atomically: a killed save leaves the old one intact."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".value-", dir=directory.parent))
    config = {
        "hidden_size": head.hidden_size,
        "inner_size": head.inner_size,
        "normalize": head.normalize,
        "base_model": base_model,
    }
    (staging / CONFIG_FILE).write_text(json.dumps(config, indent=2))
    torch.save(head.state_dict(), staging / WEIGHTS_FILE)
    if directory.exists():
        retired = directory.with_name(directory.name + ".old")
        shutil.rmtree(retired, ignore_errors=True)
        os.replace(directory, retired)
        os.replace(staging, directory)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        os.replace(staging, directory)
    return directory


def load_value_head(directory: str | Path) -> tuple[ValueHead, dict]:
    directory = Path(directory)
    try:
        config = json.loads((directory / CONFIG_FILE).read_text())
        head = ValueHead(
            int(config["hidden_size"]),
            int(config["inner_size"]),
            normalize=bool(config.get("normalize", False)),
        )
        head.load_state_dict(torch.load(directory / WEIGHTS_FILE, map_location="cpu", weights_only=True))
    except FileNotFoundError as exc:
        raise ValueCheckpointError(
            f"no value-head checkpoint in {directory} ({Path(exc.filename).name} missing)"
        ) from None
    except (KeyError, ValueError, RuntimeError) as exc:
        raise ValueCheckpointError(f"value-head checkpoint {directory} is unreadable: {exc}") from None
    return head.eval(), config


class ValueHeadCritic:
    """Scores states with a ``ValueHead`` over a reader's hidden states."""

    def __init__(self, head: ValueHead, reader: HiddenStateReader) -> None:
        self.head = head
        self.reader = reader

    def score_states(self, requests: Sequence[TrajectoryRequest]) -> list[float]:
        if not requests:
            return []
        states = [
            self.reader.extend(self.reader.root_state(request.question), "".join(request.steps))
            for request in requests
        ]
        hidden = self.reader.last_hidden(states)
        if hidden.shape[-1] != self.head.hidden_size:
            raise ValueCheckpointError(
                f"the value head expects hidden size {self.head.hidden_size} but the model gives"
                f" {hidden.shape[-1]};"
                " train a value head for this model"
            )
        with torch.inference_mode():
            return self.head(hidden.cpu()).tolist()
