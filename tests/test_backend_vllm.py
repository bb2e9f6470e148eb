"""The ``vllm`` backend: runs where CUDA and vllm are present, skipped elsewhere;
its load error on a machine without them is tested everywhere."""

from __future__ import annotations

import importlib.util
import sys
import types
from types import SimpleNamespace

import pytest

from engine.policies import BackendError, load_policy
from engine.termination import make_termination


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


HAVE_VLLM = importlib.util.find_spec("vllm") is not None and _cuda()
needs_gpu = pytest.mark.skipif(not HAVE_VLLM, reason="needs CUDA and vllm")
QUESTION = "Tom has 3 bags with 5 apples each. How many apples does he have?"


@pytest.mark.skipif(HAVE_VLLM, reason="vllm and CUDA are present")
def test_without_vllm_or_cuda_loading_names_the_fix() -> None:
    with pytest.raises(BackendError) as error:
        load_policy("smollm2-135m", backend="vllm")
    message = str(error.value)
    assert "\n" not in message
    assert "pip install -e '.[gpu]'" in message or "needs a CUDA GPU" in message


@needs_gpu
@pytest.mark.slow
def test_propose_complete_and_score_on_a_gpu() -> None:
    policy = load_policy("smollm2-135m", backend="vllm", gpu_memory_utilization=0.3)
    newline = make_termination(["newline"])
    state = policy.root_state(QUESTION)
    options = policy.propose(state, k=3, termination=newline, max_tokens=12, temperature=0.8, seed=7)
    assert len(options) == 3 and all(o.token_ids and o.logprob_sum <= 0 for o in options)
    again = policy.propose(state, k=3, termination=newline, max_tokens=12, temperature=0.8, seed=7)
    assert [o.token_ids for o in again] == [o.token_ids for o in options]
    assert policy.stats().cached_tokens > 0, "the prefix cache did not serve the repeated state"
    results = policy.complete([state, state], n=2, termination=newline, max_tokens=8, temperature=1.0, seed=1)
    assert [len(r) for r in results] == [2, 2]
    scores = policy.score_true([("Reply True or False.", "Is 3 * 5 = 15?")])
    assert 0.0 <= scores[0] <= 1.0


class _CharTokenizer:
    """A character per token (id = code point), 0 the end of sequence."""

    eos_token_id = 0
    unk_token_id = -1

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict[str, list[int]]:
        return {"input_ids": [ord(char) for char in text]}

    def convert_tokens_to_ids(self, token: str) -> int:
        return self.unk_token_id

    def decode(self, token_ids, skip_special_tokens: bool = True) -> str:
        return "".join(chr(token) for token in token_ids if token)


def _fake_vllm(text: str, logprobs: list[float | None]) -> types.ModuleType:
    """A ``vllm`` module whose ``LLM`` samples ``text`` ``n`` times, with ``logprobs``
    per token (None: vLLM gave none for it)."""

    class LLM:
        def __init__(self, **options) -> None:
            pass

        def get_tokenizer(self) -> _CharTokenizer:
            return _CharTokenizer()

        def generate(self, prompts, params, use_tqdm=False) -> list:
            ids = [ord(char) for char in text]
            entries = [
                {} if value is None else {token: SimpleNamespace(logprob=value)}
                for token, value in zip(ids, logprobs, strict=True)
            ]
            sample = SimpleNamespace(token_ids=ids, logprobs=entries, finish_reason="length")
            return [SimpleNamespace(outputs=[sample] * params.n, num_cached_tokens=0) for _ in prompts]

    module = types.ModuleType("vllm")
    module.LLM = LLM
    module.SamplingParams = lambda **settings: SimpleNamespace(**settings)
    return module


def test_options_carry_vllms_per_token_logprobs_cut_at_the_termination(monkeypatch) -> None:
    from engine.policies.vllm_backend import VLLMPolicy

    monkeypatch.setitem(
        sys.modules, "vllm", _fake_vllm("4*6\nNext", [-0.5, -0.25, None, -0.125, -1, -1, -1, -1])
    )
    policy = VLLMPolicy("fake", name="fake")
    options = policy.propose(
        (65,), k=2, termination=make_termination(["newline"]), max_tokens=8, temperature=1.0, seed=0
    )
    assert [option.text for option in options] == ["4*6\n", "4*6\n"]
    for option in options:
        assert option.token_ids == (52, 42, 54, 10) and option.stop_reason == "newline"
        assert option.token_logprobs == (-0.5, -0.25, 0.0, -0.125), (
            "a missing log-prob counts 0, as in the sum"
        )
        assert sum(option.token_logprobs) == option.logprob_sum
