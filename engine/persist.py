"""Between the engine and the store: write a growing tree, read one back.

``StoreSink`` commits each completed step of the search (one simulation, or
``parallel_simulations`` of them) in one transaction (its new and changed
nodes, filtered options and events, and the tree's counters), so a killed
search loses at most the step in flight and resumes from a step boundary.
``load_tree`` rebuilds the in-memory ``Tree`` to resume it.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from engine.answer_selection import AnswerChoice
from engine.answers import answers_match
from engine.tree import FilteredRecord, Node, Tree
from engine.types import NO_PARENT, CriticScores, Option, Problem, ProgramCheck, Rollout, SearchEvent
from store import schema
from store.schema import utcnow

T = TypeVar("T")


def _node_fields(node: Node, root_state: tuple[int, ...]) -> dict[str, Any]:
    option = node.option
    return {
        "index": node.index,
        "parent_index": node.parent,
        "depth": node.depth,
        "option_text": option.text if option else "",
        "token_ids": list(option.token_ids) if option else list(root_state),
        "token_logprobs": list(option.token_logprobs) if option else [],
        "token_count": len(option.token_ids) if option else 0,
        "logprob_sum": option.logprob_sum if option else 0.0,
        "logprob_mean": option.logprob_mean if option else 0.0,
        "stop_reason": option.stop_reason if option else "",
        "prior": node.prior,
        "visits": node.visits,
        "value_sum": node.value_sum,
        "q": node.value_sum / node.visits if node.visits else 0.0,
        "value_score": node.scores.value,
        "prm_score": node.scores.prm,
        "orm_score": node.scores.orm,
        "tool_score": node.scores.tool,
        "combined_score": node.scores.combined if node.option or node.children else None,
        "rollouts": [vars(rollout).copy() for rollout in node.rollouts],
        "terminal": node.terminal,
        "answer": node.answer,
        "created_simulation": node.created_simulation,
        "expansions": node.expansions,
        "target_width": node.target_width,
        "exhausted": node.exhausted,
    }


def find_or_add_problem(session: Session, problem: Problem) -> schema.Problem:
    row = session.exec(
        select(schema.Problem).where(
            schema.Problem.task == problem.task,
            schema.Problem.index == problem.index,
            schema.Problem.question == problem.question,
            schema.Problem.answer == problem.answer,
        )
    ).first()
    if row is None:
        row = schema.Problem(
            task=problem.task,
            index=problem.index,
            question=problem.question,
            answer=problem.answer,
            meta=dict(problem.meta),
        )
        session.add(row)
        session.flush()
    return row


class StoreSink:
    """Persists a search as it grows (see the module docstring).

    Args:
        engine: the store.
        tree_id: the ``tree`` row to fill (made by ``create_tree``).
        prefill_tokens: reports the policy's prefill counter, for the tree's stats.
        on_simulation: called after each commit (each step) with the tree (progress bars).
    """

    def __init__(
        self,
        engine: Engine,
        tree_id: int,
        *,
        prefill_tokens: Callable[[], int] = lambda: 0,
        on_simulation: Callable[[Tree], None] | None = None,
    ) -> None:
        self.engine = engine
        self.tree_id = tree_id
        self.prefill_tokens = prefill_tokens
        self.on_simulation = on_simulation
        self.started = time.monotonic()
        with Session(engine) as session:
            tree_row = session.get(schema.Tree, tree_id)
            self.run_id = tree_row.run_id
            self.seconds_before = tree_row.seconds
            self.prefill_before = tree_row.prefill_tokens
            self.prefill_at_start = prefill_tokens()
            rows = session.exec(
                select(schema.Node.index, schema.Node.id).where(schema.Node.tree_id == tree_id)
            )
            self.node_ids: dict[int, int] = dict(rows.all())
            self.programs_written = len(
                session.exec(
                    select(schema.VerifierProgram.id).where(schema.VerifierProgram.tree_id == tree_id)
                ).all()
            )
            self.next_seq = len(
                session.exec(select(schema.SearchEvent.id).where(schema.SearchEvent.tree_id == tree_id)).all()
            )

    def start(self, tree: Tree) -> None:
        """Write the root at once, so readers see the tree before the first simulation ends."""
        with Session(self.engine) as session:
            self.write_nodes(session, tree, {0})
            self._update_counters(session, tree)
            session.commit()

    def write_nodes(self, session: Session, tree: Tree, indices: set[int]) -> None:
        added = {}
        for index in sorted(indices):
            fields = _node_fields(tree.nodes[index], tree.root_state)
            if index in self.node_ids:
                row = session.get(schema.Node, self.node_ids[index])
                for key, value in fields.items():
                    setattr(row, key, value)
            else:
                row = added[index] = schema.Node(tree_id=self.tree_id, **fields)
            session.add(row)
        session.flush()
        self.node_ids.update({index: row.id for index, row in added.items()})

    def _update_counters(self, session: Session, tree: Tree, status: str | None = None) -> schema.Tree:
        tree_row = session.get(schema.Tree, self.tree_id)
        tree_row.simulations_done = tree.simulations_done
        tree_row.node_count = len(tree.nodes)
        tree_row.filtered_count = len(tree.filtered)
        tree_row.generated_tokens = tree.generated_tokens
        tree_row.prefill_tokens = self.prefill_before + self.prefill_tokens() - self.prefill_at_start
        tree_row.seconds = self.seconds_before + time.monotonic() - self.started
        tree_row.updated_at = utcnow()
        if status:
            tree_row.status = status
        session.add(tree_row)
        run = session.get(schema.Run, self.run_id)
        run.heartbeat_at = utcnow()
        session.add(run)
        return tree_row

    def step_done(
        self,
        tree: Tree,
        *,
        simulations: range,
        events: Sequence[SearchEvent],
        changed: set[int],
        filtered: Sequence[FilteredRecord],
    ) -> None:
        with Session(self.engine) as session:
            self.write_nodes(session, tree, changed | {0})
            for record in filtered:
                session.add(
                    schema.FilteredOption(
                        tree_id=self.tree_id,
                        parent_index=record.parent,
                        text=record.option.text,
                        token_count=len(record.option.token_ids),
                        similarity=record.similarity,
                        measure=record.measure,
                        collided_with_index=record.collided_with,
                        simulation=record.simulation,
                    )
                )
            for index, program in enumerate(tree.programs[self.programs_written :], self.programs_written):
                session.add(schema.VerifierProgram(tree_id=self.tree_id, index=index, **vars(program)))
            self.programs_written = len(tree.programs)
            for event in events:
                session.add(
                    schema.SearchEvent(
                        tree_id=self.tree_id,
                        simulation=event.simulation,
                        seq=self.next_seq,
                        phase=event.phase,
                        node_index=event.node,
                        data=event.data,
                    )
                )
                self.next_seq += 1
            self._update_counters(session, tree)
            session.commit()
        if self.on_simulation is not None:
            self.on_simulation(tree)

    def finish(
        self, tree: Tree, choices: dict[str, AnswerChoice], *, method: str, gold: str | None
    ) -> schema.Tree:
        """Record the answers and mark the tree completed."""
        chosen = choices[method]
        with Session(self.engine) as session:
            self.write_nodes(session, tree, set(range(len(tree.nodes))))
            tree_row = self._update_counters(session, tree, status="completed")
            tree_row.answers = {name: choice.answer for name, choice in choices.items()}
            tree_row.answer = chosen.answer
            tree_row.chosen_path = tree.path(chosen.node)
            tree_row.correct = answers_match(chosen.answer, gold) if gold is not None else None
            session.add(tree_row)
            session.commit()
            session.refresh(tree_row)
            return tree_row


def create_run(
    engine: Engine,
    *,
    model: str,
    task: str,
    seed: int,
    config: dict[str, Any],
    critics: dict[str, Any],
    rollout_model: str | None = None,
    backend: str | None = None,
    kind: str = "search",
    method: str = "mcts",
    iteration_id: int | None = None,
) -> int:
    with Session(engine) as session:
        run = schema.Run(
            kind=kind,
            iteration_id=iteration_id,
            method=method,
            model=model,
            rollout_model=rollout_model,
            backend=backend,
            task=task,
            seed=seed,
            config=config,
            critics=critics,
            pid=os.getpid(),
        )
        session.add(run)
        session.commit()
        return run.id


def create_tree(engine: Engine, *, run_id: int, problem: Problem, prompt: str, simulations: int) -> int:
    with Session(engine) as session:
        problem_row = find_or_add_problem(session, problem)
        tree = schema.Tree(
            run_id=run_id, problem_id=problem_row.id, prompt=prompt, simulations_target=simulations
        )
        session.add(tree)
        session.commit()
        return tree.id


def set_run_status(engine: Engine, run_id: int, status: str, *, error: str | None = None) -> None:
    with Session(engine) as session:
        run = session.get(schema.Run, run_id)
        run.status = status
        run.error = error
        run.pid = os.getpid()
        run.heartbeat_at = utcnow()
        if status != "running":
            run.finished_at = utcnow()
            trees = session.exec(select(schema.Tree).where(schema.Tree.run_id == run_id)).all()
            run.generated_tokens = sum(tree.generated_tokens for tree in trees)
            run.seconds = sum(tree.seconds for tree in trees)
            for tree in trees:
                if tree.status == "running":
                    tree.status = status
                    session.add(tree)
        session.add(run)
        session.commit()


def writer_alive(run: schema.Run) -> bool:
    """Whether another process is writing ``run`` right now (``schema.run_is_live``)."""
    return run.pid != os.getpid() and schema.run_is_live(run.status, run.heartbeat_at, run.pid)


class Heartbeat:
    """Stamps ``run.heartbeat_at`` every ``interval`` seconds from a daemon thread
    while a run works, so readers can tell a slow run from a dead one."""

    def __init__(self, engine: Engine, run_id: int, interval: float = 10.0) -> None:
        self.engine = engine
        self.run_id = run_id
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-run-{run_id}", daemon=True)

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            with Session(self.engine) as session:
                run = session.get(schema.Run, self.run_id)
                run.heartbeat_at = utcnow()
                session.add(run)
                session.commit()

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join()


def tracked_run(engine: Engine, run_id: int, work: Callable[[], T]) -> T:
    """``work()`` under run ``run_id``'s heartbeat; the run ends "completed",
    "interrupted" (Ctrl-C, SIGTERM) or "failed" (any other exception, which
    propagates), so the store never shows a dead run as running."""
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


def load_tree(engine: Engine, tree_id: int) -> tuple[Tree, Problem]:
    """Rebuild the in-memory tree (and its problem) from the store."""
    with Session(engine) as session:
        tree_row = session.get(schema.Tree, tree_id)
        problem_row = session.get(schema.Problem, tree_row.problem_id)
        rows = session.exec(
            select(schema.Node).where(schema.Node.tree_id == tree_id).order_by(schema.Node.index)
        ).all()
        filtered_rows = session.exec(
            select(schema.FilteredOption)
            .where(schema.FilteredOption.tree_id == tree_id)
            .order_by(schema.FilteredOption.id)
        ).all()
        program_rows = session.exec(
            select(schema.VerifierProgram)
            .where(schema.VerifierProgram.tree_id == tree_id)
            .order_by(schema.VerifierProgram.index)
        ).all()
    problem = Problem(
        question=problem_row.question,
        answer=problem_row.answer,
        task=problem_row.task,
        index=problem_row.index,
        meta=problem_row.meta,
    )
    if not rows:
        return Tree(question=problem.question, root_state=()), problem
    nodes = []
    for row in rows:
        option = None
        if row.parent_index != NO_PARENT:
            option = Option(
                text=row.option_text,
                token_ids=tuple(row.token_ids),
                logprob_sum=row.logprob_sum,
                logprob_mean=row.logprob_mean,
                finished=row.stop_reason == "eos",
                stop_reason=row.stop_reason,
                token_logprobs=tuple(row.token_logprobs),
            )
        nodes.append(
            Node(
                index=row.index,
                parent=row.parent_index,
                depth=row.depth,
                option=option,
                prior=row.prior,
                visits=row.visits,
                value_sum=row.value_sum,
                scores=CriticScores(
                    value=row.value_score,
                    prm=row.prm_score,
                    orm=row.orm_score,
                    tool=row.tool_score,
                    combined=row.combined_score if row.combined_score is not None else 0.0,
                ),
                rollouts=[Rollout(**rollout) for rollout in row.rollouts],
                terminal=row.terminal,
                answer=row.answer,
                created_simulation=row.created_simulation,
                expansions=row.expansions,
                target_width=row.target_width,
                exhausted=row.exhausted,
            )
        )
    for node in nodes[1:]:
        nodes[node.parent].children.append(node.index)
    by_index = {node.index: node for node in nodes}
    filtered = [
        FilteredRecord(
            parent=row.parent_index,
            option=Option(row.text, (), 0.0, 0.0, False, ""),
            similarity=row.similarity,
            collided_with=row.collided_with_index,
            simulation=row.simulation,
            measure=row.measure,
        )
        for row in filtered_rows
    ]
    tree = Tree(
        question=problem.question,
        root_state=tuple(rows[0].token_ids),
        nodes=[by_index[i] for i in range(len(nodes))],
        filtered=filtered,
        simulations_done=tree_row.simulations_done,
        generated_tokens=tree_row.generated_tokens,
        programs=[
            ProgramCheck(row.text, row.tokens, row.status, row.output, row.error, row.verdict)
            for row in program_rows
        ],
    )
    return tree, problem
