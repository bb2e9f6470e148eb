"""The engine's public surface: search a problem into the store, resume a run.

A thin facade in the manner of vLLM's ``LLM``: it builds the policy, critics
and similarity filter from names and a ``SearchConfig``, opens the run and tree
rows, and delegates to ``engine.search.run_search``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from engine.answer_selection import choose_answers
from engine.config import SearchConfig
from engine.critics import Critics
from engine.persist import (
    Heartbeat,
    StoreSink,
    create_run,
    create_tree,
    load_tree,
    set_run_status,
    writer_alive,
)
from engine.search import run_search
from engine.tree import Tree
from engine.types import Policy, Problem
from store import schema


class RunNotResumable(ValueError):
    """The run id does not exist or the run has nothing left to do."""


@dataclass
class Components:
    """Everything a search needs besides the problem and the config."""

    policy: Policy
    rollout_policy: Policy
    critics: Critics
    similarity: Any
    critic_info: dict[str, Any]


def build_components(
    config: SearchConfig,
    *,
    model: str,
    rollout_model: str | None = None,
    policy: Policy | None = None,
    rollout_policy: Policy | None = None,
) -> Components:
    """Load what ``config`` asks for. Pass ``policy`` to reuse a loaded model."""
    from engine.critics.generative import GenerativeORM, GenerativePRM
    from engine.critics.tool import ArithmeticChecker
    from engine.policies import load_policy
    from engine.similarity import make_similarity

    policy = policy or load_policy(model)
    if rollout_policy is None:
        rollout_policy = load_policy(rollout_model) if rollout_model and rollout_model != model else policy
    value = None
    value_reason = "no value_checkpoint given"
    if config.value_checkpoint:
        from engine.critics.value import ValueHeadCritic, load_value_head
        from engine.policies.hf import HFPolicy

        head, head_config = load_value_head(config.value_checkpoint)
        # Only the hf backend reads hidden states; others get the value model as its own HF model.
        reader = policy if isinstance(policy, HFPolicy) else load_policy(model, backend="hf")
        value = ValueHeadCritic(head, reader)
        value_reason = f"checkpoint {config.value_checkpoint} (trained on {head_config.get('base_model')})"
    # A trained PRM/ORM is its own HF model; without one the policy answers the rubric itself.
    prm_model = load_policy(config.prm_checkpoint, backend="hf") if config.prm_checkpoint else policy
    orm_model = load_policy(config.orm_checkpoint, backend="hf") if config.orm_checkpoint else policy
    critics = Critics(
        value=value,
        prm=GenerativePRM(prm_model) if config.weight_prm > 0 else None,
        orm=GenerativeORM(orm_model) if config.weight_orm > 0 else None,
        tool=ArithmeticChecker() if config.weight_tool > 0 else None,
    )
    weights = critics.weights(config)
    info = {
        name: {"active": weights[name] > 0, "weight": weights[name]}
        for name in ("value", "prm", "orm", "tool")
    }
    info["value"]["source"] = value_reason
    info["prm"]["source"] = f"generative, on {config.prm_checkpoint or model}"
    info["orm"]["source"] = f"generative, on {config.orm_checkpoint or model}"
    info["tool"]["source"] = "arithmetic checker (safe evaluator)"
    similarity = None if config.similarity == "off" else make_similarity(config.similarity)
    return Components(policy, rollout_policy, critics, similarity, info)


def effective_config(config: SearchConfig, critics: Critics) -> dict[str, Any]:
    """The config as it ran: a critic that is off has weight 0."""
    data = config.to_dict()
    for name, weight in critics.weights(config).items():
        data[f"weight_{name}"] = weight
    return data


@dataclass(frozen=True)
class SearchResult:
    """What ``canopy search --json`` prints."""

    run_id: int
    tree_id: int
    nodes: int
    filtered: int
    simulations: int
    answer: str | None
    answers: dict[str, str | None]
    gold: str | None
    correct: bool | None
    generated_tokens: int
    prefill_tokens: int
    seconds: float
    model: str

    def to_dict(self) -> dict[str, Any]:
        return dict(vars(self))


def _search_tree(
    engine: Engine,
    *,
    tree_id: int,
    tree: Tree | None,
    problem: Problem,
    components: Components,
    config: SearchConfig,
    on_simulation: Callable[[Tree], None] | None,
) -> SearchResult:
    policy = components.policy
    sink = StoreSink(
        engine, tree_id, prefill_tokens=lambda: policy.stats().prefill_tokens, on_simulation=on_simulation
    )
    started = time.monotonic()
    tree = tree or Tree.new(problem.question, policy.root_state(problem.question))
    sink.start(tree)
    tree = run_search(
        question=problem.question,
        policy=policy,
        critics=components.critics,
        config=config,
        similarity=components.similarity,
        rollout_policy=components.rollout_policy,
        sink=sink,
        tree=tree,
    )
    choices = choose_answers(tree)
    tree_row = sink.finish(tree, choices, method=config.answer_selection, gold=problem.answer)
    with Session(engine) as session:
        run_id = session.get(schema.Tree, tree_id).run_id
    return SearchResult(
        run_id=run_id,
        tree_id=tree_id,
        nodes=len(tree.nodes),
        filtered=len(tree.filtered),
        simulations=tree.simulations_done,
        answer=tree_row.answer,
        answers=dict(tree_row.answers),
        gold=problem.answer,
        correct=tree_row.correct,
        generated_tokens=tree.generated_tokens,
        prefill_tokens=tree_row.prefill_tokens,
        seconds=round(time.monotonic() - started, 3),
        model=policy.name,
    )


def search_problem(
    engine: Engine,
    problem: Problem,
    *,
    model: str,
    config: SearchConfig,
    components: Components,
    on_run_created: Callable[[int], None] | None = None,
    on_simulation: Callable[[Tree], None] | None = None,
) -> SearchResult:
    """Search ``problem`` into a new run; on any failure the run is marked failed
    (or interrupted on Ctrl-C/SIGTERM) and the exception propagates."""
    run_id = create_run(
        engine,
        model=model,
        task=problem.task,
        seed=config.seed,
        config=effective_config(config, components.critics),
        critics=components.critic_info,
        rollout_model=getattr(components.rollout_policy, "name", None),
    )
    if on_run_created is not None:
        on_run_created(run_id)
    prompt = components.policy.decode(components.policy.root_state(problem.question))
    tree_id = create_tree(
        engine, run_id=run_id, problem=problem, prompt=prompt, simulations=config.simulations
    )
    return _finish_run(
        engine,
        run_id,
        lambda: _search_tree(
            engine,
            tree_id=tree_id,
            tree=None,
            problem=problem,
            components=components,
            config=config,
            on_simulation=on_simulation,
        ),
    )


def _finish_run(engine: Engine, run_id: int, work: Callable[[], SearchResult]) -> SearchResult:
    try:
        with Heartbeat(engine, run_id):
            result = work()
    except KeyboardInterrupt:
        set_run_status(engine, run_id, "interrupted", error="interrupted by the user")
        raise
    except Exception as exc:
        set_run_status(engine, run_id, "failed", error=f"{type(exc).__name__}: {exc}")
        raise
    set_run_status(engine, run_id, "completed")
    return result


def run_to_resume(engine: Engine, run_id: int) -> tuple[schema.Run, schema.Tree]:
    """The run and its unfinished tree, or ``RunNotResumable`` saying why not."""
    with Session(engine) as session:
        run = session.get(schema.Run, run_id)
        if run is None:
            raise RunNotResumable(f"no run with id {run_id} in this database (see `canopy trees`)")
        trees = session.exec(select(schema.Tree).where(schema.Tree.run_id == run_id)).all()
    unfinished = [tree for tree in trees if tree.status != "completed"]
    if run.status == "completed" or not unfinished:
        raise RunNotResumable(f"run {run_id} is already complete; nothing to resume")
    if writer_alive(run):
        raise RunNotResumable(f"run {run_id} is being written right now by process {run.pid}; stop it first")
    return run, unfinished[0]


def resume_search(
    engine: Engine,
    run_id: int,
    *,
    components: Components,
    config: SearchConfig,
    on_simulation: Callable[[Tree], None] | None = None,
) -> SearchResult:
    """Continue run ``run_id`` from its last committed simulation."""
    _, tree_row = run_to_resume(engine, run_id)
    tree, problem = load_tree(engine, tree_row.id)
    if not tree.nodes:
        tree = None
    set_run_status(engine, run_id, "running")
    return _finish_run(
        engine,
        run_id,
        lambda: _search_tree(
            engine,
            tree_id=tree_row.id,
            tree=tree,
            problem=problem,
            components=components,
            config=config,
            on_simulation=on_simulation,
        ),
    )
