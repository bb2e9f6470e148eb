"""The ``llamacpp`` backend on ``smollm2-135m``: sampling, prefix reuse, scoring,
a search on it, and the one-line errors of ``load_policy``."""

from __future__ import annotations

import ctypes
import importlib.util
import time

import numpy as np
import pytest

from engine.config import SearchConfig
from engine.critics import Critics
from engine.critics.generative import PRM_SYSTEM, GenerativePRM, prm_prompt
from engine.persist import StoreSink, create_run, create_tree, load_tree
from engine.policies import BackendError, load_policy
from engine.policies.llamacpp import LlamaCppPolicy
from engine.search import run_search
from engine.termination import make_termination
from engine.types import BatchProposer, Problem, ProposeRequest, TrajectoryRequest
from store.db import make_engine
from tests.test_search import _snapshot

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
FILLER = " Sam counts the pens in each box again, one box after another, and writes every count down."


def _never(text: str) -> None:
    return None


def _load(**options):
    return load_policy(MODEL, backend="llamacpp", **{"n_ctx": 1024, **options})


@pytest.fixture(scope="module")
def policy():
    return _load()


def _propose(policy, state, *, k=3, seed=5, max_tokens=12, termination=NEWLINE, temperature=0.8):
    return policy.propose(
        state, k=k, termination=termination, max_tokens=max_tokens, temperature=temperature, seed=seed
    )


@pytest.fixture(scope="module")
def f32_policy(tmp_path_factory):
    """smollm2 with its weights dequantised to F32, batching four samples.

    llama.cpp is not batch-invariant: with the Q4_1 weights a token's logits
    shift by up to ~0.5 (log-prob sums of 12-token options by ~0.2 nats) with
    the shape of the batch it was read in, because the activations fed to the
    quantised matmuls are themselves rounded to int8 and tiny differences flip
    them. F32 weights take that rounding away (~1e-4 nats left), so a one-by-one
    re-read can check the batched KV cache to 1e-3.
    """
    import llama_cpp

    source = _load().llama.model_path
    target = tmp_path_factory.mktemp("gguf") / "smollm2-f32.gguf"
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_ALL_F32
    params.allow_requantize = True
    params.quantize_output_tensor = True
    assert llama_cpp.llama_model_quantize(source.encode(), str(target).encode(), ctypes.byref(params)) == 0
    return LlamaCppPolicy(target, name="smollm2-f32", n_ctx=1024, n_threads=1, max_parallel=4)


def _rescored(reader, state, token_ids) -> list[float]:
    """Each log-prob of ``token_ids`` after ``state``, read one token at a time on sequence 0."""
    logprobs = []
    for index, token in enumerate(token_ids):
        logits = reader.state_logits(state + tuple(token_ids[:index])).astype(np.float64)
        logprobs.append(float(logits[token] - (logits.max() + np.log(np.exp(logits - logits.max()).sum()))))
    return logprobs


def test_options_are_well_formed_with_logprobs_at_most_zero(policy) -> None:
    state = policy.root_state(QUESTION)
    options = _propose(policy, state)
    assert len(options) == 3
    for option in options:
        assert 1 <= len(option.token_ids) <= 12
        assert option.logprob_sum <= 0
        assert option.logprob_mean == pytest.approx(option.logprob_sum / len(option.token_ids))
        assert len(option.token_logprobs) == len(option.token_ids)
        assert sum(option.token_logprobs) == option.logprob_sum, "summed in the sampler's order"
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


def test_batched_samples_match_a_one_by_one_rescoring(f32_policy) -> None:
    reader = LlamaCppPolicy(
        f32_policy.llama.model_path, name="reader", n_ctx=1024, n_threads=1, max_parallel=1
    )
    root = f32_policy.root_state(QUESTION)
    # Four samples in one batch, dropping out as their lines end ...
    proposed = _propose(f32_policy, root, k=4, seed=5, max_tokens=16)
    # ... and rollouts of two states, the second one longer, three at a time.
    states = [root, f32_policy.extend(root, "4 * 6 = 24\n")]
    completed = f32_policy.complete(states, n=3, termination=_never, max_tokens=8, temperature=1.0, seed=1)
    checks = [(root, option) for option in proposed]
    checks += [
        (state, option) for state, options in zip(states, completed, strict=True) for option in options
    ]
    for state, option in checks:
        rescored = _rescored(reader, state, option.token_ids)
        assert sum(rescored) == pytest.approx(option.logprob_sum, rel=1e-3, abs=1e-3)
        assert rescored == pytest.approx(list(option.token_logprobs), abs=3e-3), "each token's own"
    assert len({option.token_ids for _, option in checks}) > 1, "the samples are not independent"


def test_rollouts_of_different_states_decode_together_as_they_would_alone(f32_policy, monkeypatch) -> None:
    path = f32_policy.llama.model_path
    reader = LlamaCppPolicy(path, name="reader", n_ctx=1024, n_threads=1, max_parallel=1)
    # A policy of its own: the module's f32_policy keeps its cache for the tests after this one.
    f32_policy = LlamaCppPolicy(path, name="smollm2-f32", n_ctx=1024, n_threads=1, max_parallel=4)
    root = f32_policy.root_state(QUESTION)
    states = [root, f32_policy.extend(root, "4 * 6 = 24\n"), f32_policy.extend(root, "Step 1:")]
    batches = []
    decode = f32_policy._decode_together

    def counted(samples, *args):
        batches.append(len(samples))
        return decode(samples, *args)

    monkeypatch.setattr(f32_policy, "_decode_together", counted)
    together = f32_policy.complete(states, n=1, termination=_never, max_tokens=6, temperature=1.0, seed=2)
    assert batches == [3], "one rollout per leaf, all three in one batch"
    for state, [option] in zip(states, together, strict=True):
        assert sum(_rescored(reader, state, option.token_ids)) == pytest.approx(
            option.logprob_sum, rel=1e-3, abs=1e-3
        )


def test_propose_many_draws_what_each_propose_would_in_one_batch(f32_policy, monkeypatch) -> None:
    path = f32_policy.llama.model_path
    alone = LlamaCppPolicy(path, name="alone", n_ctx=1024, n_threads=1, max_parallel=4)
    together = LlamaCppPolicy(path, name="together", n_ctx=1024, n_threads=1, max_parallel=4)
    root = together.root_state(QUESTION)
    requests = [
        ProposeRequest(root, 2, 5),
        ProposeRequest(together.extend(root, "Step 1:"), 2, 9),
        ProposeRequest(together.extend(root, "4 * 6 = 24\n"), 1, 5),
    ]
    batches = []
    decode = together._decode_together

    def counted(samples, *args):
        batches.append(len(samples))
        return decode(samples, *args)

    monkeypatch.setattr(together, "_decode_together", counted)
    sampling = {"termination": NEWLINE, "max_tokens": 12, "temperature": 0.8}
    batched = together.propose_many(requests, **sampling)
    assert batches == [4, 1], "as many samples at once as max_parallel allows, across the leaves"
    for request, options in zip(requests, batched, strict=True):
        single = alone.propose(request.state, k=request.k, seed=request.seed, **sampling)
        assert [o.token_ids for o in options] == [o.token_ids for o in single], "other random streams"
        assert [o.logprob_sum for o in options] == pytest.approx(
            [o.logprob_sum for o in single], rel=1e-3, abs=1e-3
        )
        for option in options:
            if not option.finished:
                assert together.logits.get(request.state + option.token_ids) is not None, "child not kept"


def test_batched_children_restore_from_their_own_sequence(f32_policy) -> None:
    state = f32_policy.extend(f32_policy.root_state(QUESTION), "Step 1:")
    options = _propose(f32_policy, state, k=4, seed=8, max_tokens=12)
    again = _propose(f32_policy, state, k=4, seed=8, max_tokens=12)
    assert options == again, "the same seed gave other options"
    children = [state + option.token_ids for option in options if not option.finished]
    assert len(children) >= 2
    lives = [f32_policy.logits.get(child).copy() for child in children]
    before = f32_policy.stats().prefill_tokens
    for child in children:  # sampled on sequences 1..4, each restored into sequence 0
        _propose(f32_policy, child, k=2, seed=6, max_tokens=4)
    assert f32_policy.stats().prefill_tokens == before, "a child's own option was re-read"
    for child, live in zip(children, lives, strict=True):
        f32_policy.state_logits(f32_policy.extend(state, " unrelated text"))  # move sequence 0 away
        f32_policy.logits = type(f32_policy.logits)(f32_policy.logits.max_bytes)
        restored = f32_policy.state_logits(child)  # the snapshot, then the last token read once more
        assert np.allclose(restored, live, atol=1e-2)


def test_a_path_longer_than_its_share_of_the_kv_buffer() -> None:
    policy = _load(n_ctx=256, max_parallel=8)
    state = policy.extend(policy.root_state(QUESTION), FILLER * 6)
    assert 256 // 8 < len(state) < 256 - 40
    options = _propose(policy, state, k=4, seed=3, max_tokens=40, termination=_never)
    assert len(options) == 4 and all(len(option.token_ids) <= 40 for option in options)
    rollouts = policy.complete([state], n=3, termination=_never, max_tokens=40, temperature=1.0, seed=3)
    assert [len(options) for options in rollouts] == [3]
    full = policy.extend(policy.root_state(QUESTION), FILLER * 12)[:256]
    with pytest.raises(ValueError, match="a state of 257 tokens exceeds n_ctx=256"):
        _propose(policy, full, k=2, max_tokens=8, termination=_never, temperature=0.0)
    # The failed step left the KV cache usable.
    assert len(_propose(policy, state, k=2, seed=4, max_tokens=8)) == 2


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


def test_each_rubric_keeps_its_prefix_and_leaves_the_policy_state_cached(f32_policy) -> None:
    """PRM and ORM prompts alternate (as in a search) on their own sequences:
    each reads only what differs from its rubric's previous prompt, the scores
    equal a reading from scratch (F32 weights), and sampling's state on
    sequence 0 stays cached."""
    from engine.critics.generative import GenerativeORM

    plain = LlamaCppPolicy(
        f32_policy.llama.model_path, name="plain", n_ctx=1024, n_threads=1, rubric_sequences=0
    )
    steps = [
        "Each box has 6 pens.",
        "4 * 6 = 24 pens in all.",
        "He gives 5 away: 24 - 5 = 19.",
        "The answer is 19.",
    ]
    state = f32_policy.extend(f32_policy.root_state(QUESTION), steps[0])
    f32_policy.state_logits(state)
    ours, theirs, reads = [], [], []
    for depth in range(1, len(steps) + 1):
        request = TrajectoryRequest(QUESTION, tuple(steps[:depth]), finished=depth == len(steps))
        for policy, out in ((f32_policy, ours), (plain, theirs)):
            before = policy.stats().scoring_prefill_tokens
            out.extend(GenerativePRM(policy).score_steps([request]))
            out.extend(GenerativeORM(policy).score_outcomes([request]))
            if policy is f32_policy:
                reads.append(policy.stats().scoring_prefill_tokens - before)
    assert ours == pytest.approx(theirs, abs=1e-3)
    # After the first prompt, a deeper PRM prompt reads its new step and its closing
    # question, and the ORM prompt that follows only its own closing question (the
    # rubrics share everything before it): about 45 tokens with the chat template.
    for depth in range(2, len(steps) + 1):
        new_step = len(f32_policy.vocab.encode(f"Step {depth}: {steps[depth - 1]}"))
        assert reads[depth - 1] <= new_step + 50, (depth, reads, new_step)
    cached = f32_policy.stats().cached_tokens
    f32_policy.state_logits(state)
    assert f32_policy.stats().cached_tokens - cached == len(state), "a critic evicted the policy's state"


def test_a_branch_switch_keeps_the_other_branch_cached(f32_policy) -> None:
    """A search scores one branch, then another that shares only its first step,
    then the first again: the first branch's prompt is still cached, on its own
    rubric sequence, so its next step reads little more than itself."""
    prm = GenerativePRM(f32_policy)
    branch_a = ["Each box has 6 pens.", "4 * 6 = 24 pens in all.", "He gives 5 away: 24 - 5 = 19."]
    branch_b = ["Each box has 6 pens.", "He has 4 + 6 = 10 pens.", "10 - 5 = 5 pens are left."]

    def read(steps) -> int:
        before = f32_policy.stats().scoring_prefill_tokens
        prm.score_steps([TrajectoryRequest(QUESTION, tuple(steps), finished=False)])
        return f32_policy.stats().scoring_prefill_tokens - before

    read(branch_a[:2])
    read(branch_b[:2])
    read(branch_b[:3])
    new_step = len(f32_policy.vocab.encode(f"Step 3: {branch_a[2]}"))
    assert read(branch_a[:3]) <= new_step + 30


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


def test_a_search_of_two_simulations_per_step_runs_and_is_stored(policy, tmp_path, monkeypatch) -> None:
    config = SearchConfig(
        simulations=4,
        parallel_simulations=2,
        max_option_tokens=12,
        rollouts=1,
        rollout_max_tokens=16,
        similarity="edit",
        weight_prm=0.0,
        weight_orm=0.0,
        weight_tool=0.0,
        root_min_children=2,
        min_children=2,
        branching_alpha=0.0,
    )
    assert isinstance(policy, BatchProposer)
    leaves_per_call = []
    propose_many = policy.propose_many

    def counted(requests, **kwargs):
        leaves_per_call.append(len(requests))
        return propose_many(requests, **kwargs)

    monkeypatch.setattr(policy, "propose_many", counted)
    engine = make_engine(str(tmp_path / "batched.db"))
    run_id = create_run(engine, model=MODEL, task="custom", seed=0, config=config.to_dict(), critics={})
    problem = Problem(question=QUESTION, answer="19")
    tree_id = create_tree(engine, run_id=run_id, problem=problem, prompt="", simulations=config.simulations)
    sink = StoreSink(engine, tree_id)
    tree = run_search(
        question=QUESTION, policy=policy, critics=Critics(), config=config, similarity=None, sink=sink
    )
    assert 2 in leaves_per_call, "a step expanded two leaves in one call"
    assert tree.simulations_done == tree.root.visits == 4 and tree.generated_tokens > 0
    reloaded, _ = load_tree(engine, tree_id)
    assert _snapshot(reloaded) == _snapshot(tree)
    assert reloaded.simulations_done == 4


def test_hidden_states_match_the_hf_backend_and_leave_sampling_alone(f32_policy) -> None:
    """The value head's input from the policy's own context: on the same (F32)
    weights it is the hf backend's last hidden state, and reading it changes
    neither the cache's logits nor what is sampled next."""
    from engine.types import HiddenStateReader

    assert isinstance(f32_policy, HiddenStateReader)  # build_components loads no second model
    hf = load_policy(MODEL, backend="hf")
    steps = ["Step 1: 4 boxes times 6 pens is 24 pens.", "Step 1: He has 10 pens.", "First,"]
    states = [f32_policy.extend(f32_policy.root_state(QUESTION), step) for step in steps]
    assert states == [hf.extend(hf.root_state(QUESTION), step) for step in steps]
    before = f32_policy.state_logits(states[0]).copy()
    drawn = _propose(f32_policy, states[0], seed=11)
    ours = f32_policy.last_hidden(states).numpy()
    theirs = hf.last_hidden(states).float().numpy()
    assert ours.shape == theirs.shape == (3, hf.model.config.hidden_size)
    cosine = (ours * theirs).sum(1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(theirs, axis=1)
    assert cosine.min() > 0.9999, cosine
    assert np.abs(ours - theirs).max() < 0.05 * np.abs(theirs).max()
    f32_policy.logits = type(f32_policy.logits)(f32_policy.logits.max_bytes)  # force a fresh decode
    assert np.allclose(f32_policy.state_logits(states[0]), before, atol=1e-3)
    assert [o.token_ids for o in _propose(f32_policy, states[0], seed=11)] == [o.token_ids for o in drawn]


def test_load_errors_are_one_line_and_name_the_fix(tmp_path, monkeypatch) -> None:
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"not a model")
    with pytest.raises(BackendError, match="not a GGUF file"):
        load_policy(str(fake), backend="llamacpp")
    hf_dir = tmp_path / "hf"
    hf_dir.mkdir()
    (hf_dir / "config.json").write_text("{}")
    # An HF directory is converted to GGUF first: without a converter that fails in one line.
    monkeypatch.setenv("CANOPY_LLAMA_CPP_DIR", str(tmp_path / "no-llama.cpp"))
    with pytest.raises(BackendError, match="reads GGUF files.*holds no convert_hf_to_gguf.py"):
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


def _time_batching(k: int = 4, tokens: int = 32) -> None:
    """By hand: ``python -m tests.test_backend_llamacpp`` prints how long ``k``
    samples of ``tokens`` tokens take one after another and decoded together."""
    for max_parallel in (1, k):
        policy = _load(max_parallel=max_parallel)
        state = policy.root_state(QUESTION)
        policy.state_logits(state)
        for seed in range(3):
            started = time.perf_counter()
            _propose(policy, state, k=k, seed=seed, max_tokens=tokens, termination=_never)
            print(
                f"max_parallel={max_parallel}: {k} x {tokens} tokens in {time.perf_counter() - started:.2f} s"
            )


if __name__ == "__main__":
    _time_batching()
