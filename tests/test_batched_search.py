"""Parallel simulations on fakes: virtual loss, one decode batch per step, exact
simulation counts, determinism, step commits and resume, and the setting's checks."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import warnings
from dataclasses import dataclass, field

import pytest
from sqlmodel import Session, select

from engine.api import resume_search, search_problem
from engine.config import ConfigError, SearchConfig
from engine.critics import Critics
from engine.persist import load_tree
from engine.search import run_search
from engine.selection import select_leaves
from engine.tree import Tree
from engine.types import SearchEvent
from store import schema
from store.db import make_engine
from tests.fakes import FakeORM, FakePolicy, FakePRM, exact_similarity, fake_components
from tests.test_search import GOLDEN, QUESTION, _bandit_tree, _snapshot
from tests.test_store import PROBLEM

WIDE = {"c": 4.0, "branching_alpha": 0.0}
"""Settings under which the fake tree offers three distinct leaves to most steps."""


class BatchingPolicy(FakePolicy):
    """A ``FakePolicy`` that also expands several leaves in one call, each leaf
    drawing what its own ``propose`` would."""

    def propose_many(self, requests, *, termination, max_tokens, temperature) -> list[list]:
        self.calls.append(("propose_many", len(requests)))
        batches = []
        for request in requests:
            rng = random.Random(request.seed)
            batches.append([self._option(rng, termination, max_tokens) for _ in range(request.k)])
        self._stats.generated_tokens += sum(len(o.token_ids) for batch in batches for o in batch)
        return batches


@dataclass
class Step:
    simulations: range
    events: list[SearchEvent]
    calls: list[tuple[str, int]]


@dataclass
class StepRecorder:
    """A sink that keeps each step's simulations, events and the policy calls made in it."""

    policy: FakePolicy
    steps: list[Step] = field(default_factory=list)

    def step_done(self, tree: Tree, *, simulations, events, changed, filtered) -> None:
        made = sum(len(step.calls) for step in self.steps)
        self.steps.append(Step(simulations, list(events), self.policy.calls[made:]))

    def sizes(self) -> list[int]:
        return [len(step.simulations) for step in self.steps]


def _search(
    parallel: int,
    *,
    simulations: int = 14,
    policy: FakePolicy | None = None,
    tree: Tree | None = None,
    **extra,
) -> tuple[Tree, StepRecorder]:
    policy = policy or BatchingPolicy()
    recorder = StepRecorder(policy)
    config = SearchConfig(
        simulations=simulations, seed=3, similarity="edit", parallel_simulations=parallel, **extra
    )
    tree = run_search(
        question=QUESTION,
        policy=policy,
        critics=Critics(prm=FakePRM(), orm=FakeORM()),
        config=config,
        similarity=exact_similarity,
        sink=recorder,
        tree=tree,
    )
    return tree, recorder


def test_select_leaves_picks_distinct_leaves_and_takes_the_virtual_loss_back() -> None:
    tree = _bandit_tree([(4, 2.0, 0.34), (4, 2.0, 0.33), (4, 2.0, 0.33)])
    tree.root.expansions, tree.root.target_width = 1, 3  # a full root over three unexpanded children
    before = [(node.visits, node.value_sum) for node in tree.nodes]
    paths = select_leaves(tree, count=3, rule="puct", c=1.0)
    assert sorted(path[-1] for path in paths) == [1, 2, 3]
    assert all(path[0] == 0 and len(path) == 2 for path in paths)
    assert [(node.visits, node.value_sum) for node in tree.nodes] == before
    assert select_leaves(tree, count=1, rule="puct", c=1.0) == [paths[0]]


def test_select_leaves_stops_at_a_leaf_it_already_chose() -> None:
    tree = Tree.new("q", (0,))
    assert select_leaves(tree, count=3, rule="uct", c=1.0) == [[0]], "the bare root is the only leaf"
    assert tree.root.visits == 0


def test_one_simulation_per_step_is_the_golden_tree() -> None:
    tree, recorder = _search(1, rollouts=1)
    snapshot, golden = _snapshot(tree), json.loads(GOLDEN.read_text())
    assert len(snapshot) == len(golden)
    for got, want in zip(snapshot, golden, strict=True):
        assert got == {
            key: pytest.approx(value, abs=1e-6) if isinstance(value, float) else value
            for key, value in want.items()
        }
    assert recorder.sizes() == [1] * 14
    assert all(call[0] != "propose_many" for step in recorder.steps for call in step.calls)


def test_a_parallel_search_is_deterministic_under_its_seed() -> None:
    first, recorder = _search(3, rollouts=1)
    second, _ = _search(3, rollouts=1)
    assert _snapshot(first) == _snapshot(second)
    assert 3 in recorder.sizes()
    one_at_a_time, _ = _search(1, rollouts=1)
    assert _snapshot(first) != _snapshot(one_at_a_time), "the steps' selections do not see each other"


def test_a_step_holds_distinct_leaves_and_each_simulation_its_own_events() -> None:
    tree, recorder = _search(3, rollouts=1, **WIDE)
    for step in recorder.steps:
        by_simulation = {
            index: [e for e in step.events if e.simulation == index] for index in step.simulations
        }
        assert sum(len(events) for events in by_simulation.values()) == len(step.events)
        selected = []
        for index, events in by_simulation.items():
            phases = [event.phase for event in events]
            assert phases[0] == "select" and phases[-1] == "backpropagate"
            assert phases.count("select") == phases.count("backpropagate") == 1
            selected.append(events[0].node)
            made = [event.node for event in events if event.phase == "evaluate"]
            assert all(tree.nodes[node].created_simulation == index for node in made)
        assert len(set(selected)) == len(selected), "virtual loss sends each selection elsewhere"
    assert [event.simulation for step in recorder.steps for event in step.events] == sorted(
        event.simulation for step in recorder.steps for event in step.events
    ), "events come in simulation order"


def test_backups_keep_visit_and_value_invariants() -> None:
    tree, _ = _search(3, rollouts=1, **WIDE)
    assert tree.root.visits == tree.simulations_done == 14
    for node in tree.nodes:
        assert 0.0 <= node.q <= 1.0
        if node.children:
            assert sum(tree.nodes[i].visits for i in node.children) <= node.visits
        if node.visits:
            assert node.value_sum == pytest.approx(node.q * node.visits)


def test_the_simulation_count_is_exact_and_the_last_step_is_clamped() -> None:
    tree, recorder = _search(3, simulations=14, rollouts=1, **WIDE)
    assert recorder.sizes() == [1, 3, 3, 3, 3, 1]
    assert [list(step.simulations) for step in recorder.steps][:2] == [[0], [1, 2, 3]]
    backups = [e.simulation for step in recorder.steps for e in step.events if e.phase == "backpropagate"]
    assert backups == list(range(14))
    _, shorter = _search(3, simulations=8, rollouts=1, **WIDE)
    assert shorter.sizes() == [1, 3, 3, 1]


def test_each_step_decodes_its_leaves_in_one_call_and_its_rollouts_in_another() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a batching policy is never told it expands one at a time
        _, recorder = _search(3, rollouts=2, **WIDE)
    batched = 0
    for step in recorder.steps:
        expansions = [call for call in step.calls if call[0] in ("propose", "propose_many")]
        rollouts = [call for call in step.calls if call[0] == "complete"]
        assert len(expansions) <= 1 and len(rollouts) <= 1, step
        batched += sum(call[1] > 1 for call in expansions if call[0] == "propose_many")
    assert batched >= 3


def test_a_policy_without_propose_many_expands_leaves_one_at_a_time_and_says_so_once() -> None:
    with pytest.warns(UserWarning, match="no propose_many: parallel simulations expand") as caught:
        plain, _ = _search(3, rollouts=1, policy=FakePolicy(), **WIDE)
    assert len([w for w in caught if "propose_many" in str(w.message)]) == 1
    batched, _ = _search(3, rollouts=1, **WIDE)
    assert _snapshot(plain) == _snapshot(batched), "each leaf draws the same options either way"


def test_resuming_at_a_step_boundary_matches_an_uninterrupted_parallel_search() -> None:
    whole, recorder = _search(3, rollouts=1, **WIDE)
    boundary = sum(recorder.sizes()[:3])
    policy = BatchingPolicy()
    part, _ = _search(3, simulations=boundary, rollouts=1, policy=policy, **WIDE)
    resumed, _ = _search(3, rollouts=1, policy=policy, tree=part, **WIDE)
    assert _snapshot(resumed) == _snapshot(whole)


class _Crash(Exception):
    pass


class _CrashingPolicy(BatchingPolicy):
    """Dies in the rollouts of the first step that expands several leaves
    together: after that step grew the tree in memory, before it was committed."""

    def complete(self, states, **kwargs):
        if any(call[0] == "propose_many" for call in self.calls):
            raise _Crash("killed")
        return super().complete(states, **kwargs)


def _store_config(simulations: int = 14) -> SearchConfig:
    return SearchConfig(
        simulations=simulations, seed=3, similarity="edit", rollouts=1, parallel_simulations=3, **WIDE
    )


def test_a_crash_mid_step_loses_that_step_whole_and_resume_completes(tmp_path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'canopy.db'}")
    config = _store_config()
    _, recorder = _search(3, rollouts=1, **WIDE)
    sizes = recorder.sizes()
    step_at = {sum(sizes[:count]): size for count, size in enumerate(sizes)}  # first simulation -> size
    components = fake_components(config=config)
    components.policy = components.rollout_policy = _CrashingPolicy()
    with pytest.raises(_Crash):
        search_problem(engine, PROBLEM, model="fake", config=config, components=components)
    with Session(engine) as session:
        run = session.exec(select(schema.Run)).one()
        tree_row = session.exec(select(schema.Tree)).one()
        nodes = session.exec(select(schema.Node)).all()
        events = session.exec(select(schema.SearchEvent)).all()
    done = tree_row.simulations_done
    assert run.status == "failed" and 0 < done < 14
    assert step_at.get(done, 0) > 1, "the search stopped at a step boundary, before a step of several"
    assert len(nodes) == tree_row.node_count
    assert all(node.created_simulation < done for node in nodes), "nothing of the lost step is stored"
    assert sorted({event.simulation for event in events}) == list(range(done))
    partial, _ = load_tree(engine, tree_row.id)
    assert partial.root.visits == done

    components = fake_components(BatchingPolicy(), config=config)
    result = resume_search(engine, run.id, components=components, config=config)
    assert result.simulations == 14
    resumed, _ = load_tree(engine, tree_row.id)
    fresh = fake_components(BatchingPolicy(), config=config)
    whole = search_problem(engine, PROBLEM, model="fake", config=config, components=fresh)
    uninterrupted, _ = load_tree(engine, whole.tree_id)
    assert _snapshot(resumed) == _snapshot(uninterrupted)
    with Session(engine) as session:
        backups = session.exec(
            select(schema.SearchEvent.simulation).where(
                schema.SearchEvent.tree_id == tree_row.id, schema.SearchEvent.phase == "backpropagate"
            )
        ).all()
    assert sorted(backups) == list(range(14)), "each simulation backed up once"


def test_parallel_simulations_is_checked_against_simulations() -> None:
    with pytest.raises(ConfigError, match=r"parallel_simulations must be in \[1, simulations = 4\], got 0"):
        SearchConfig(simulations=4, parallel_simulations=0)
    with pytest.raises(ConfigError, match=r"parallel_simulations must be in \[1, simulations = 4\], got 5"):
        SearchConfig(simulations=4, parallel_simulations=5)
    assert SearchConfig(simulations=4, parallel_simulations=4).parallel_simulations == 4
    assert SearchConfig().parallel_simulations == 1


def test_the_cli_offers_the_setting_and_refuses_a_bad_value_in_one_line(tmp_path) -> None:
    def canopy(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "canopy", "search", *args], capture_output=True, text=True, timeout=300
        )

    assert "--parallel-simulations" in canopy("--help").stdout
    db = tmp_path / "c.db"
    refused = canopy(
        "--question", "What is 2+2?", "--simulations", "2", "--parallel-simulations", "3", "--db", str(db)
    )
    assert refused.returncode == 2
    assert refused.stderr.strip().count("\n") == 0 and "parallel_simulations must be in" in refused.stderr
