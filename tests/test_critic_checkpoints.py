"""Trained critic checkpoints made for another model are refused with one line."""

from __future__ import annotations

import pytest

import engine.policies
from engine.api import build_components
from engine.config import CriticModels, SearchConfig
from engine.errors import CriticCheckpointError, ValueCheckpointError
from tests.fakes import FakePolicy


class OtherTokenizer(FakePolicy):
    """A fake whose tokenizer splits text into other ids than ``FakePolicy``'s."""

    def extend(self, state, text):
        return state + tuple(ord(character) for character in text)


def test_a_prm_or_orm_with_another_tokenizer_is_refused(monkeypatch) -> None:
    loaded = {"/ckpt/same": FakePolicy(name="same"), "/ckpt/other": OtherTokenizer(name="other")}
    monkeypatch.setattr(engine.policies, "load_policy", lambda path, backend="hf": loaded[path])
    config = SearchConfig(similarity="off")
    policy = FakePolicy(name="policy")
    same = build_components(
        config, model="policy", policy=policy, critic_models=CriticModels(prm="/ckpt/same")
    )
    assert same.critics.prm.scorer is loaded["/ckpt/same"]
    for name in ("prm", "orm"):
        with pytest.raises(
            CriticCheckpointError, match=f"the {name.upper()} checkpoint /ckpt/other does not use"
        ) as caught:
            build_components(
                config, model="policy", policy=policy, critic_models=CriticModels(**{name: "/ckpt/other"})
            )
        assert f"drop --{name}-checkpoint" in str(caught.value) and "\n" not in str(caught.value)


def test_a_value_head_of_another_hidden_size_is_refused(tmp_path) -> None:
    import torch

    from engine.critics.value import ValueHead, save_value_head

    class Reader(FakePolicy):
        def last_hidden(self, states):
            return torch.zeros(len(states), 16)

    checkpoint = save_value_head(ValueHead(32), tmp_path / "value", base_model="a-bigger-model")
    with pytest.raises(ValueCheckpointError, match="hidden states of size 32 .* but policy gives 16"):
        build_components(
            SearchConfig(similarity="off"),
            model="policy",
            policy=Reader(name="policy"),
            critic_models=CriticModels(value=str(checkpoint)),
        )
