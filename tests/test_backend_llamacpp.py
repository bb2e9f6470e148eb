"""The ``llamacpp`` backend on ``smollm2-135m``: sampling, prefix reuse, scoring,
a search on it, and the one-line errors of ``load_policy``."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from engine.config import SearchConfig
from engine.critics import Critics
from engine.critics.generative import PRM_SYSTEM, GenerativePRM, prm_prompt
from engine.policies import BackendError, load_policy
from engine.search import run_search
from engine.termination import make_termination
from engine.types import TrajectoryRequest

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("llama_cpp") is None,
        reason="llama-cpp-python is not installed (the [cpu] extra)",
    ),
]

MODEL = "smollm2-135m"
QUESTION = "Sam has 4 boxes with 6 pens in each box. He gives away 5 pens. How many pens does he have left?"
NEWLINE = make_termination(["newline"])


def _load(**options):
    return load_policy(MODEL, backend="llamacpp", n_ctx=1024, **options)


@pytest.fixture(scope="module")
def policy():
    return _load()


def _propose(policy, state, *, k=3, seed=5, max_tokens=12):
    return policy.propose(state, k=k, termination=NEWLINE, max_tokens=max_tokens, temperature=0.8, seed=seed)


def test_options_are_well_formed_with_logprobs_at_most_zero(policy) -> None:
    state = policy.root_state(QUESTION)
    options = _propose(policy, state)
    assert len(options) == 3
    for option in options:
        assert 1 <= len(option.token_ids) <= 12
        assert option.logprob_sum <= 0
        assert option.logprob_mean == pytest.approx(option.logprob_sum / len(option.token_ids))
        assert option.text == policy.decode(option.token_ids)
        assert option.stop_reason in ("newline", "token_cap", "eos")
        if option.stop_reason == "newline":
            assert option.text.rstrip(" ").endswith("\n")


def test_same_seed_same_options_across_fresh_policies(policy) -> None:
    other = _load()
    state = policy.root_state(QUESTION)
    first = _propose(policy, state, seed=11)
    second = _propose(other, state, seed=11)
    assert [o.token_ids for o in first] == [o.token_ids for o in second]
    assert [o.logprob_sum for o in first] == pytest.approx([o.logprob_sum for o in second], abs=1e-4)
    assert [o.token_ids for o in _propose(policy, state, seed=12)] != [o.token_ids for o in first]


def test_siblings_and_children_reuse_the_evaluated_prefix(policy) -> None:
    state = policy.extend(policy.root_state(QUESTION), "Step 1:")
    before = policy.stats()
    options = _propose(policy, state, k=3, seed=3)
    after_root = policy.stats()
    # The new state is read once, not once per sibling.
    assert after_root.prefill_tokens - before.prefill_tokens <= len(state)
    _propose(policy, state, k=2, seed=4)
    again = policy.stats()
    assert again.prefill_tokens == after_root.prefill_tokens, "a re-expanded state is read again"
    for option in options:
        if option.finished:
            continue
        child = state + option.token_ids
        start = policy.stats()
        _propose(policy, child, k=2, seed=6, max_tokens=4)
        assert policy.stats().prefill_tokens == start.prefill_tokens, "a child's own option was re-read"
    stats = policy.stats()
    assert stats.generated_tokens > 0 and stats.cached_tokens > 0 and stats.generate_seconds > 0


def test_without_snapshots_a_child_rereads_at_most_its_option() -> None:
    policy = _load(snapshot_bytes=0)
    state = policy.root_state(QUESTION)
    options = _propose(policy, state, k=3, seed=2)
    first = next(o for o in options if not o.finished)
    before = policy.stats().prefill_tokens
    _propose(policy, state + first.token_ids, k=1, seed=1, max_tokens=3)
    assert 0 <= policy.stats().prefill_tokens - before <= len(first.token_ids)


def test_a_restored_snapshot_gives_the_logits_of_the_live_read(policy) -> None:
    state = policy.root_state(QUESTION)
    option = next(o for o in _propose(policy, state, seed=9) if not o.finished)
    child = state + option.token_ids
    live = policy.logits.get(child).copy()
    policy.state_logits(policy.extend(state, " unrelated text"))  # move the live cache off the child
    policy.logits = type(policy.logits)(policy.logits.max_bytes)  # forget logits: force a 1-token read
    before = policy.stats().prefill_tokens
    restored = policy.state_logits(child)
    assert policy.stats().prefill_tokens - before == 1
    assert np.allclose(restored, live, atol=1e-4)


def test_complete_gives_n_per_state(policy) -> None:
    root = policy.root_state(QUESTION)
    states = [root, policy.extend(root, "4 * 6 = 24\n")]
    results = policy.complete(states, n=2, termination=NEWLINE, max_tokens=6, temperature=1.0, seed=0)
    assert [len(options) for options in results] == [2, 2]
    assert all(o.logprob_sum <= 0 for options in results for o in options)


def test_score_true_is_a_probability_and_reuses_the_prompt_prefix(policy) -> None:
    prm = GenerativePRM(policy)
    requests = [
        TrajectoryRequest(QUESTION, ("4 * 6 = 24",), finished=False),
        TrajectoryRequest(QUESTION, ("4 * 6 = 25",), finished=False),
    ]
    scores = prm.score_steps(requests)
    assert len(scores) == 2 and all(0.0 <= score <= 1.0 for score in scores)
    before = policy.stats().scoring_prefill_tokens
    assert prm.score_steps(requests[:1]) == pytest.approx(scores[:1], abs=1e-4)
    prompt_tokens = len(policy.chat_ids(PRM_SYSTEM, prm_prompt(requests[0])))
    reread = policy.stats().scoring_prefill_tokens - before
    assert reread < prompt_tokens / 2, "the shared prefix was re-read"


def test_a_search_runs_on_it(policy) -> None:
    config = SearchConfig(
        simulations=3,
        max_option_tokens=12,
        rollouts=0,
        similarity="edit",
        weight_prm=0.0,
        weight_orm=0.0,
        weight_tool=0.0,
        root_min_children=2,
        min_children=2,
    )
    tree = run_search(question=QUESTION, policy=policy, critics=Critics(), config=config, similarity=None)
    assert len(tree.nodes) > 1 and tree.generated_tokens > 0


def test_last_hidden_points_to_the_hf_value_model(policy) -> None:
    with pytest.raises(NotImplementedError, match="own HF model"):
        policy.last_hidden([policy.root_state(QUESTION)])


def test_load_errors_are_one_line_and_name_the_fix(tmp_path, monkeypatch) -> None:
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"not a model")
    with pytest.raises(BackendError, match="not a GGUF file"):
        load_policy(str(fake), backend="llamacpp")
    hf_dir = tmp_path / "hf"
    hf_dir.mkdir()
    (hf_dir / "config.json").write_text("{}")
    with pytest.raises(BackendError, match="reads GGUF files.*not a GGUF file"):
        load_policy(str(hf_dir), backend="llamacpp")
    with pytest.raises(BackendError, match="unknown backend"):
        load_policy(MODEL, backend="tgi")
    with pytest.raises(BackendError, match="--base-url"):
        load_policy(MODEL, backend="openai")
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "llama_cpp" else real_find_spec(name, *a),
    )
    with pytest.raises(
        BackendError, match=r"llama-cpp-python is not installed; CMAKE_ARGS=.*pip install"
    ) as error:
        load_policy(MODEL, backend="llamacpp")
    assert "\n" not in str(error.value)
