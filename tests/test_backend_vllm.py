"""The ``vllm`` backend: runs where CUDA and vllm are present, skipped elsewhere;
its load error on a machine without them is tested everywhere."""

from __future__ import annotations

import importlib.util

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
