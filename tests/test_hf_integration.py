"""The real thing on ``smollm2-135m``: the hf backend's prefix cache, a stored
search reloaded equal, SIGKILL mid-run then --resume, and a reader polling."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
import torch
from sqlmodel import Session, select

from engine.api import build_components, effective_config
from engine.config import CriticModels, SearchConfig
from engine.persist import StoreSink, create_run, create_tree, load_tree
from engine.search import run_search
from engine.termination import make_termination
from engine.types import BatchProposer, Problem, ProposeRequest
from store import schema
from store.db import make_engine
from tests.test_search import _snapshot

pytestmark = pytest.mark.slow

MODEL = "smollm2-135m"
QUESTION = "Sam has 4 boxes with 6 pens in each box. He gives away 5 pens. How many pens does he have left?"
SMALL = {
    "simulations": 3,
    "max_option_tokens": 16,
    "rollout_max_tokens": 24,
    "root_min_children": 2,
    "min_children": 2,
}


@pytest.fixture(scope="module")
def components():
    return build_components(SearchConfig(**SMALL, similarity="edit"), model=MODEL)


def test_child_state_is_cached_whole_and_matches_a_fresh_forward(components) -> None:
    policy = components.policy
    state = policy.root_state(QUESTION)
    newline = make_termination(["newline"])
    options = policy.propose(state, k=3, termination=newline, max_tokens=12, temperature=0.8, seed=5)
    assert len(options) == 3 and all(1 <= len(o.token_ids) <= 12 for o in options)
    assert all(
        o.logprob_sum <= 0 and o.logprob_mean == pytest.approx(o.logprob_sum / len(o.token_ids))
        for o in options
    )
    for option in options:  # one log-prob per token, summed in the order the sampler summed them
        assert len(option.token_logprobs) == len(option.token_ids)
        assert sum(option.token_logprobs) == option.logprob_sum and max(option.token_logprobs) <= 0
    child = next(o for o in options if not o.finished)
    child_state = state + child.token_ids
    entry = policy.cache.get(child_state)
    assert entry is not None, "a finished option's state must be cached for its expansion"
    with torch.inference_mode():
        logits = policy.model(input_ids=torch.tensor([child_state])).logits[0].float()
    fresh = logits[-1:]
    assert torch.allclose(fresh, entry.logits, atol=1e-3)
    # Each stored log-prob belongs to its own token: a teacher-forced read gives the same.
    read = torch.log_softmax(logits[len(state) - 1 : -1], dim=-1)
    forced = read.gather(1, torch.tensor(child.token_ids)[:, None]).squeeze(1)
    assert forced.tolist() == pytest.approx(list(child.token_logprobs), abs=1e-3)
    before = policy.stats()
    policy.propose(child_state, k=2, termination=newline, max_tokens=8, temperature=0.8, seed=6)
    after = policy.stats()
    assert after.prefill_tokens == before.prefill_tokens, "expanding a cached child must prefill nothing"
    assert after.generated_tokens > before.generated_tokens


def test_sampling_is_deterministic_under_a_seed(components) -> None:
    policy = components.policy
    state = policy.root_state("What is 12 + 30?")
    newline = make_termination(["newline"])
    first = policy.propose(state, k=2, termination=newline, max_tokens=10, temperature=1.0, seed=11)
    second = policy.propose(state, k=2, termination=newline, max_tokens=10, temperature=1.0, seed=11)
    assert [o.token_ids for o in first] == [o.token_ids for o in second]


def test_propose_many_samples_each_leaf_as_its_own_propose_would(components) -> None:
    policy = components.policy
    assert isinstance(policy, BatchProposer)
    root = policy.root_state(QUESTION)
    requests = [ProposeRequest(root, 2, 5), ProposeRequest(policy.extend(root, "Step 1:"), 3, 9)]
    sampling = {"termination": make_termination(["newline"]), "max_tokens": 10, "temperature": 0.8}
    batched = policy.propose_many(requests, **sampling)
    for request, options in zip(requests, batched, strict=True):
        single = policy.propose(request.state, k=request.k, seed=request.seed, **sampling)
        assert [o.token_ids for o in options] == [o.token_ids for o in single]
        assert [o.logprob_sum for o in options] == pytest.approx([o.logprob_sum for o in single], abs=1e-3)
        for option in options:
            if not option.finished:
                assert policy.cache.get(request.state + option.token_ids) is not None, "child not cached"


def test_generative_critics_score_in_unit_interval(components) -> None:
    from engine.types import TrajectoryRequest

    requests = [
        TrajectoryRequest("What is 2 + 3?", ("2 + 3 = 5\n",), False),
        TrajectoryRequest("What is 2 + 3?", ("2 + 3 = 9\n", "The answer is 9.\n"), True),
    ]
    steps = components.critics.prm.score_steps(requests)
    outcomes = components.critics.orm.score_outcomes(requests)
    assert all(0.0 <= score <= 1.0 for score in [*steps, *outcomes])


def test_real_search_is_stored_and_reloads_equal(tmp_path, components) -> None:
    engine = make_engine(str(tmp_path / "real.db"))
    config = SearchConfig(**SMALL, similarity="edit", rollouts=1)
    problem = Problem(question=QUESTION, answer="19")
    run_id = create_run(
        engine,
        model=MODEL,
        task="custom",
        seed=0,
        config=effective_config(config, components.critics),
        critics={},
    )
    tree_id = create_tree(engine, run_id=run_id, problem=problem, prompt="", simulations=config.simulations)
    sink = StoreSink(engine, tree_id)
    tree = run_search(
        question=QUESTION,
        policy=components.policy,
        critics=components.critics,
        config=config,
        similarity=components.similarity,
        sink=sink,
    )
    reloaded, reloaded_problem = load_tree(engine, tree_id)
    assert reloaded_problem.answer == "19"
    assert _snapshot(reloaded) == _snapshot(tree)
    assert reloaded.root_state == tree.root_state
    for got, want in zip(reloaded.nodes, tree.nodes, strict=True):
        assert got.scores == want.scores
        assert got.rollouts == want.rollouts
        assert got.option == want.option


def _canopy(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "canopy", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def test_sigkill_mid_search_then_resume_completes(tmp_path) -> None:
    db = tmp_path / "kill.db"
    args = [
        "search",
        "--model",
        MODEL,
        "--question",
        QUESTION,
        "--answer",
        "19",
        "--db",
        str(db),
        "--json",
        "--simulations",
        "6",
        "--max-option-tokens",
        "16",
        "--rollout-max-tokens",
        "24",
        "--root-min-children",
        "2",
        "--seed",
        "1",
    ]
    process = _canopy(*args)
    reads = 0
    deadline = time.monotonic() + 400
    try:
        while time.monotonic() < deadline:
            if db.exists():
                with sqlite3.connect(db, timeout=30) as raw:
                    tables = {r[0] for r in raw.execute("SELECT name FROM sqlite_master WHERE type='table'")}
                    if "tree" in tables:
                        reads += 1
                        done = raw.execute("SELECT MAX(simulations_done) FROM tree").fetchone()[0]
                        if done and done >= 2:
                            break
            assert process.poll() is None, process.communicate()
            time.sleep(0.2)
        else:
            pytest.fail("the search made no progress in time")
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert reads > 0
    engine = make_engine(str(db), create=False)
    with Session(engine) as session:
        run = session.exec(select(schema.Run)).one()
        tree_row = session.exec(select(schema.Tree)).one()
        nodes = session.exec(select(schema.Node).where(schema.Node.tree_id == tree_row.id)).all()
    assert run.status == "running" and 2 <= tree_row.simulations_done < 6
    assert len(nodes) == tree_row.node_count, "a killed search leaves a consistent tree"
    root = next(node for node in nodes if node.index == 0)
    assert root.visits == tree_row.simulations_done

    resumed = subprocess.run(
        [sys.executable, "-m", "canopy", "search", "--resume", str(run.id), "--db", str(db), "--json"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stderr
    result = json.loads(resumed.stdout)
    assert result["run_id"] == run.id and result["simulations"] == 6
    with Session(engine) as session:
        run = session.get(schema.Run, run.id)
        tree_row = session.get(schema.Tree, tree_row.id)
        nodes = session.exec(select(schema.Node).where(schema.Node.tree_id == tree_row.id)).all()
        backups = session.exec(
            select(schema.SearchEvent).where(
                schema.SearchEvent.tree_id == tree_row.id, schema.SearchEvent.phase == "backpropagate"
            )
        ).all()
    assert run.status == "completed" and tree_row.status == "completed"
    assert tree_row.simulations_done == 6 and len(nodes) == tree_row.node_count == result["nodes"]
    assert sorted(event.simulation for event in backups) == list(range(6)), "each simulation backed up once"
    indices = sorted(node.index for node in nodes)
    assert indices == list(range(len(nodes)))
    assert all(node.parent_index < node.index for node in nodes)


def test_cli_search_json_and_trees_listing(tmp_path) -> None:
    db = tmp_path / "cli.db"
    env = {**os.environ, "CANOPY_DB": str(db)}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "canopy",
            "search",
            "--model",
            MODEL,
            "--task",
            "arithmetic",
            "--index",
            "3",
            "--simulations",
            "2",
            "--max-option-tokens",
            "12",
            "--rollouts",
            "0",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    for key in (
        "run_id",
        "tree_id",
        "nodes",
        "filtered",
        "simulations",
        "answer",
        "correct",
        "generated_tokens",
    ):
        assert key in result
    assert result["simulations"] == 2 and result["nodes"] >= 3 and result["generated_tokens"] > 0
    assert isinstance(result["correct"], bool), "arithmetic problems have gold answers"
    assert "sim" in done.stderr, "a progress bar goes to stderr"
    listing = subprocess.run(
        [sys.executable, "-m", "canopy", "trees", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    rows = json.loads(listing.stdout)
    assert [row["tree_id"] for row in rows] == [result["tree_id"]]


def test_rollouts_from_states_of_different_lengths_batch_like_alone(components) -> None:
    """Left-padded batching must not change what the model computes: greedy
    completions from two states in one batch equal those made one at a time."""
    policy = components.policy
    short = policy.root_state("What is 2 + 3?")
    long = policy.extend(
        policy.root_state("Ann has 12 pens and buys 30 more. How many pens?"), "Ann starts with 12"
    )
    stop = make_termination(["answer"])
    greedy = {"n": 1, "termination": stop, "max_tokens": 12, "temperature": 1e-4, "seed": 0}
    together = policy.complete([short, long], **greedy)
    alone = [policy.complete([state], **greedy)[0] for state in (short, long)]
    assert [batch[0].token_ids for batch in together] == [batch[0].token_ids for batch in alone]


def test_value_head_checkpoint_scores_nodes(tmp_path, components) -> None:
    from engine.critics.value import ValueHead, save_value_head

    hidden_size = components.policy.model.config.hidden_size
    torch.manual_seed(0)
    checkpoint = save_value_head(ValueHead(hidden_size), tmp_path / "value", base_model=MODEL)
    config = SearchConfig(**SMALL, similarity="edit", rollouts=0)
    with_value = build_components(
        config, model=MODEL, critic_models=CriticModels(value=str(checkpoint)), policy=components.policy
    )
    assert (
        with_value.critic_info(config)["value"]["active"]
        and effective_config(config, with_value.critics)["weight_value"] == 1.0
    )
    tree = run_search(
        question=QUESTION,
        policy=components.policy,
        critics=with_value.critics,
        config=config,
        similarity=with_value.similarity,
    )
    scored = [node.scores.value for node in tree.nodes[1:]]
    assert scored and all(value is not None and 0.0 <= value <= 1.0 for value in scored)
