"""Evaluate one method on a problem set, resumably.

``evaluate`` runs one method over problems into one ``Run(kind="eval")`` with a
tree per problem (baselines: their samples or beam tree; MCTS: the usual search
tree) and is resumable: given the run id again it skips problems whose tree is
completed and finishes the rest (an unfinished MCTS tree resumes from its last
committed simulation; an unfinished baseline tree is redone). ``matching_run``
finds the run that the same evaluation made before. Comparisons and the
ablation build on this in ``engine.compare``; their reports are ``engine.reports``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import delete
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from engine.answer_selection import AnswerChoice
from engine.api import Components, RunNotResumable, search_tree, stored_critic_models
from engine.baselines import METHODS, EvalSettings, run_baseline
from engine.config import ConfigError
from engine.persist import (
    StoreSink,
    create_run,
    create_tree,
    find_or_add_problem,
    load_tree,
    set_run_status,
    tracked_run,
    writer_alive,
)
from engine.types import Option, Problem
from store import schema
from store.queries import trajectory_counts


@dataclass(frozen=True)
class ProblemRecord:
    """One problem's outcome in an evaluation.

    Attributes:
        tree_id: the stored tree with every trajectory the method produced.
        index: the problem's index in its task split (None for a typed question).
        gold: the gold answer, or None.
        answer: the method's answer, or None when it found none.
        correct: answer matches gold; None without a gold answer.
        generated_tokens: tokens the policy sampled for this problem.
        prefill_tokens: prompt tokens the policy read to generate (not from cache).
        seconds: wall seconds spent on this problem (over all sessions).
        trajectories: whole solutions the method wrote (samples, beams, or the
            tree's finished nodes and rollouts), >= 0.
        answered: how many of them state an answer; the rest stopped first (at
            the token cap, or ended without one).
        from_store: True when a resumed evaluation found it already done.
    """

    tree_id: int
    index: int | None
    gold: str | None
    answer: str | None
    correct: bool | None
    generated_tokens: int
    prefill_tokens: int
    seconds: float
    trajectories: int = 0
    answered: int = 0
    from_store: bool = False


@dataclass(frozen=True)
class EvalResult:
    """A method's accuracy and cost on a problem set.

    Attributes:
        run_id: the ``Run(kind="eval")`` holding the trees.
        method: one of ``engine.baselines.METHODS``.
        model: the policy's name.
        task: the problems' task.
        n: problems evaluated.
        accuracy: correct / problems with a gold answer, in [0, 1] (None if none has one).
        generated_tokens: mean tokens sampled per problem.
        prefill_tokens: mean generation prefill tokens per problem.
        seconds: total wall seconds over the problems (earlier sessions included).
        answered_share: share of all trajectories that state an answer, in [0, 1]
            (None without trajectories): what the token caps let finish.
        records: one per problem, in the order given.
    """

    run_id: int
    method: str
    model: str
    task: str
    n: int
    accuracy: float | None
    generated_tokens: float
    prefill_tokens: float
    seconds: float
    records: list[ProblemRecord] = field(default_factory=list)

    @property
    def answered_share(self) -> float | None:
        trajectories = sum(record.trajectories for record in self.records)
        return sum(record.answered for record in self.records) / trajectories if trajectories else None

    @classmethod
    def from_records(
        cls, *, run_id: int, method: str, model: str, task: str, records: list[ProblemRecord]
    ) -> EvalResult:
        """The result whose accuracy and means are taken over ``records``."""
        graded = [record for record in records if record.correct is not None]
        return cls(
            run_id=run_id,
            method=method,
            model=model,
            task=task,
            n=len(records),
            accuracy=sum(bool(record.correct) for record in graded) / len(graded) if graded else None,
            generated_tokens=sum(record.generated_tokens for record in records) / len(records),
            prefill_tokens=sum(record.prefill_tokens for record in records) / len(records),
            seconds=round(sum(record.seconds for record in records), 3),
            records=records,
        )

    def to_dict(self) -> dict[str, Any]:
        data = {name: getattr(self, name) for name in self.__dataclass_fields__ if name != "records"}
        data["answered_share"] = self.answered_share
        data["records"] = [vars(record).copy() for record in self.records]
        return data


def evaluate(
    engine: Engine,
    *,
    method: str,
    problems: Sequence[Problem],
    components: Components,
    settings: EvalSettings,
    run_id: int | None = None,
    on_problem: Callable[[ProblemRecord, int, int], None] | None = None,
    meta: dict[str, Any] | None = None,
    on_run_created: Callable[[int], None] | None = None,
    iteration_id: int | None = None,
    samples_from: int | None = None,
) -> EvalResult:
    """Run ``method`` on every problem, storing each as a tree of one eval run.

    Args:
        run_id: an earlier eval run of the same method and settings to continue;
            None starts a new run.
        on_problem: called after each problem with (record, done, total).
        meta: JSON-able facts stored with the run (e.g. how the problems were
            chosen, so a resume can choose them again).
        on_run_created: called with the new run's id before any problem runs.
        iteration_id: the improve iteration this evaluation belongs to, if any.
        samples_from: for best-of-N, a self-consistency eval run with the same
            sampling settings whose samples it reranks instead of drawing its
            own (a problem that run has not finished is sampled anew).

    Raises:
        ConfigError: unknown method, no problems, or a method whose critic is off.
        RunNotResumable: ``run_id`` is unknown or is not this evaluation.
    """
    resumed = run_id is not None
    run_id = open_eval_run(
        engine,
        method=method,
        task=problems[0].task if problems else "",
        n_problems=len(problems),
        components=components,
        settings=settings,
        run_id=run_id,
        meta=meta,
        iteration_id=iteration_id,
    )
    if on_run_created is not None and not resumed:
        on_run_created(run_id)

    def work() -> list[ProblemRecord]:
        records = []
        for done, problem in enumerate(problems, start=1):
            record = solve_problem(
                engine,
                run_id=run_id,
                method=method,
                problem=problem,
                components=components,
                settings=settings,
                samples_from=samples_from,
            )
            records.append(record)
            if on_problem is not None:
                on_problem(record, done, len(problems))
        return records

    records = tracked_run(engine, run_id, work)
    return EvalResult.from_records(
        run_id=run_id, method=method, model=components.policy.name, task=problems[0].task, records=records
    )


def open_eval_run(
    engine: Engine,
    *,
    method: str,
    task: str,
    n_problems: int,
    components: Components,
    settings: EvalSettings,
    run_id: int | None = None,
    meta: dict[str, Any] | None = None,
    iteration_id: int | None = None,
) -> int:
    """Check the request and make its eval run (or, given ``run_id``, check that
    run may be continued and mark it running); the id of the run to fill.

    Apart from ``evaluate`` so that a fan-out opens the run where the
    components are (in a worker) while its driver holds no model.

    Raises:
        ConfigError: unknown method, no problems, or a method whose critic is off.
        RunNotResumable: ``run_id`` is unknown or is not this evaluation.
    """
    if method not in METHODS:
        raise ConfigError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    if n_problems < 1:
        raise ConfigError("no problems to evaluate")
    if method == "beam" and components.critics.prm is None:
        raise ConfigError("beam search is PRM-guided: set weight_prm > 0")
    if run_id is not None:
        check_resumable(engine, run_id, method=method, settings=settings, components=components)
        set_run_status(engine, run_id, "running")
        return run_id
    return create_run(
        engine,
        model=components.policy.name,
        task=task,
        seed=settings.seed,
        config={"settings": settings.to_dict(), "meta": dict(meta or {})},
        critics=components.critic_info(settings.search),
        rollout_model=getattr(components.rollout_policy, "name", None),
        backend=components.backend,
        kind="eval",
        method=method,
        iteration_id=iteration_id,
    )


def eval_run(engine: Engine, run_id: int) -> schema.Run:
    """The eval run ``run_id``, or ``RunNotResumable`` saying why it is not one."""
    with Session(engine) as session:
        run = session.get(schema.Run, run_id)
    if run is None:
        raise RunNotResumable(f"no run with id {run_id} in this database (see `canopy trees`)")
    if run.kind != "eval":
        raise RunNotResumable(
            f"run {run_id} is a {run.kind} run, not an evaluation; resume it with `canopy search --resume`"
        )
    return run


def check_resumable(
    engine: Engine, run_id: int, *, method: str, settings: EvalSettings, components: Components
) -> None:
    """Refuse to continue a run with another method, backend, other settings or
    other critic models, or one another process is still writing."""
    run = eval_run(engine, run_id)
    if writer_alive(run):
        raise RunNotResumable(f"run {run_id} is being written right now by process {run.pid}; stop it first")
    if run.method != method:
        raise RunNotResumable(f"run {run_id} evaluated {run.method}, not {method}")
    if not _same_backend(run, components):
        raise RunNotResumable(
            f"run {run_id} ran on the {run.backend} backend; resume it with --backend {run.backend}"
        )
    if stored_settings(run) != settings or stored_critic_models(run) != components.critic_models:
        raise RunNotResumable(f"run {run_id} was made with other settings; resume it with its own")


def _same_backend(run: schema.Run, components: Components) -> bool:
    """Whether ``components`` run on ``run``'s backend (either unknown counts as
    the same: runs made before schema 2, and policies outside ``load_policy``)."""
    return run.backend is None or components.backend is None or run.backend == components.backend


def stored_settings(run: schema.Run) -> EvalSettings | None:
    """The settings eval run ``run`` was made with (None if it holds none)."""
    stored = run.config.get("settings")
    return EvalSettings.from_dict(stored) if isinstance(stored, dict) else None


def matching_run(
    engine: Engine,
    *,
    method: str,
    components: Components,
    task: str,
    settings: EvalSettings,
    meta: dict[str, Any] | None = None,
) -> int | None:
    """The newest eval run (outside any improve iteration) that ``evaluate`` would
    make for exactly these arguments, or None: what a repeated comparison continues."""
    meta = dict(meta or {})
    with Session(engine) as session:
        runs = session.exec(
            select(schema.Run)
            .where(
                schema.Run.kind == "eval",
                schema.Run.method == method,
                schema.Run.model == components.policy.name,
                schema.Run.task == task,
                schema.Run.rollout_model == getattr(components.rollout_policy, "name", None),
                schema.Run.iteration_id.is_(None),
            )
            .order_by(schema.Run.id.desc())
        ).all()
    return next(
        (
            run.id
            for run in runs
            if run.config.get("meta") == meta
            and _same_backend(run, components)
            and stored_settings(run) == settings
            and stored_critic_models(run) == components.critic_models
        ),
        None,
    )


def solve_problem(
    engine: Engine,
    *,
    run_id: int,
    method: str,
    problem: Problem,
    components: Components,
    settings: EvalSettings,
    samples_from: int | None = None,
) -> ProblemRecord:
    """Solve one problem into eval run ``run_id``, or read it back when its tree
    is already completed; an unfinished tree (an interrupted session's, or a dead
    worker's) is continued: MCTS from its last committed step, a baseline anew.

    The caller must make sure no other process is solving the same problem of
    the same run at the same time (``evaluate`` solves one at a time; a fan-out
    hands each problem to one live worker)."""
    with Session(engine) as session:
        problem_id = find_or_add_problem(session, problem).id
        session.commit()
        tree_row = session.exec(
            select(schema.Tree)
            .where(schema.Tree.run_id == run_id, schema.Tree.problem_id == problem_id)
            .order_by(schema.Tree.id)
        ).first()
        if tree_row is not None and tree_row.status == "completed":
            return _record(session, tree_row, problem, from_store=True)
    samples = _stored_samples(engine, samples_from, problem_id) if samples_from is not None else None
    return _solve(engine, run_id, method, problem, components, settings, tree_row, samples)


def _solve(
    engine: Engine,
    run_id: int,
    method: str,
    problem: Problem,
    components: Components,
    settings: EvalSettings,
    tree_row: schema.Tree | None,
    samples: list[Option] | None = None,
) -> ProblemRecord:
    policy = components.policy
    components.reset_caches()
    if method == "mcts":
        tree = None
        if tree_row is None:
            tree_id = _new_tree(engine, run_id, problem, components, settings.search.simulations)
        else:
            tree_id = tree_row.id
            tree, _ = load_tree(engine, tree_id)
            tree = tree if tree.nodes else None
        search_tree(
            engine,
            tree_id=tree_id,
            tree=tree,
            problem=problem,
            components=components,
            config=settings.search,
            on_simulation=None,
        )
    else:
        if tree_row is None:
            tree_id = _new_tree(engine, run_id, problem, components, 0)
        else:
            tree_id = tree_row.id
            _clear_tree(engine, tree_id)
        sink = StoreSink(engine, tree_id, prefill_tokens=lambda: policy.stats().prefill_tokens)
        outcome = run_baseline(
            method,
            problem.question,
            policy=policy,
            critics=components.critics,
            settings=settings,
            samples=samples,
        )
        choices = {
            name: AnswerChoice(name, answer, outcome.chosen) for name, answer in outcome.answers.items()
        }
        choices[method] = AnswerChoice(method, outcome.answer, outcome.chosen)
        sink.finish(outcome.tree, choices, method=method, gold=problem.answer)
    with Session(engine) as session:
        return _record(session, session.get(schema.Tree, tree_id), problem)


def _stored_samples(engine: Engine, run_id: int, problem_id: int) -> list[Option] | None:
    """The completions a finished tree of sampling run ``run_id`` drew for the
    problem (its root's children), or None when it has none finished."""
    with Session(engine) as session:
        tree_row = session.exec(
            select(schema.Tree).where(
                schema.Tree.run_id == run_id,
                schema.Tree.problem_id == problem_id,
                schema.Tree.status == "completed",
            )
        ).first()
    if tree_row is None:
        return None
    tree, _ = load_tree(engine, tree_row.id)
    return [tree.nodes[index].option for index in tree.root.children] if tree.nodes else None


def _new_tree(engine: Engine, run_id: int, problem: Problem, components: Components, simulations: int) -> int:
    policy = components.policy
    prompt = policy.decode(policy.root_state(problem.question))
    return create_tree(engine, run_id=run_id, problem=problem, prompt=prompt, simulations=simulations)


def _clear_tree(engine: Engine, tree_id: int) -> None:
    """Forget what an interrupted baseline wrote, so the problem is redone whole."""
    with Session(engine) as session:
        for table in (schema.Node, schema.FilteredOption, schema.SearchEvent, schema.VerifierProgram):
            session.exec(delete(table).where(table.tree_id == tree_id))
        tree_row = session.get(schema.Tree, tree_id)
        tree_row.status = "running"
        tree_row.node_count = tree_row.filtered_count = 0
        tree_row.generated_tokens = tree_row.prefill_tokens = 0
        tree_row.seconds = 0.0
        session.add(tree_row)
        session.commit()


def _record(
    session: Session, tree_row: schema.Tree, problem: Problem, *, from_store: bool = False
) -> ProblemRecord:
    trajectories, answered = trajectory_counts(session, tree_row.id)
    return ProblemRecord(
        tree_id=tree_row.id,
        index=problem.index,
        gold=problem.answer,
        answer=tree_row.answer,
        correct=tree_row.correct,
        generated_tokens=tree_row.generated_tokens,
        prefill_tokens=tree_row.prefill_tokens,
        seconds=round(tree_row.seconds, 3),
        trajectories=trajectories,
        answered=answered,
        from_store=from_store,
    )


__all__ = [
    "EvalResult",
    "ProblemRecord",
    "check_resumable",
    "eval_run",
    "evaluate",
    "matching_run",
    "open_eval_run",
    "solve_problem",
    "stored_settings",
]
