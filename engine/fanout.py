"""An evaluation's problems fanned out to Ray actors (``canopy eval --workers N``).

One process solves one problem at a time. ``WorkerPool`` starts N Ray actors,
each loading its own policy and critics once; ``evaluate_on_workers`` hands
them problems and each actor writes its trees to the shared store, step by
step, exactly as ``engine.evaluate.evaluate`` does in one process (so the
results equal the sequential run's: every seed derives from the settings and
the problem, never from the order problems are solved in).

Exactly once: the driver is the only dispatcher, and a problem is in the
hands of one live actor at a time. When Ray reports an actor dead (its process
is gone, e.g. ``kill -9``), the driver kills what may be left of it, puts its
problem back at the head of the queue and starts a fresh actor; whoever takes
the problem next finds its unfinished tree in the store and continues it
(``engine.evaluate.solve_problem``) instead of starting another. The run's
heartbeat and pid are the driver's, so the run is live while its workers
write, and a killed driver takes its actors with it.

Ray is optional (the ``[cluster]`` extra) and imported only here: ``--workers 1``
without ``--ray-address`` never imports this module.
"""

from __future__ import annotations

import os
import re
import socket
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import Session

from engine.api import Components
from engine.baselines import EvalSettings
from engine.errors import WorkerError
from engine.evaluate import EvalResult, ProblemRecord, matching_run, open_eval_run, solve_problem
from engine.persist import set_run_status, tracked_run
from engine.types import Problem
from store import schema

#: How many times one problem may lose its worker before the run fails: a
#: problem that kills every process it runs in (out of memory) must not
#: consume actors forever.
MAX_DEATHS_PER_PROBLEM = 3

#: Seconds to wait for a TCP connection to a ``--ray-address`` before calling
#: it unreachable (Ray itself retries an unreachable address for minutes).
CONNECT_TIMEOUT = 5.0


class _Worker:
    """One Ray actor: its own store engine and components, loaded once."""

    def __init__(self, database_url: str, build_components: Callable[[], Components]) -> None:
        from store.db import make_engine

        self.engine = make_engine(database_url)
        self.components = build_components()

    def pid(self) -> int:
        """This actor's process id; answered once ``__init__`` has loaded the model,
        so the pool calls it to wait for every actor (and to see one that failed)."""
        return os.getpid()

    def open_run(self, **request: Any) -> int:
        return open_eval_run(self.engine, components=self.components, **request)

    def matching_run(self, **request: Any) -> int | None:
        return matching_run(self.engine, components=self.components, **request)

    def has_value_head(self) -> bool:
        return self.components.critics.value is not None

    def solve(
        self, *, run_id: int, method: str, problem: Problem, settings: EvalSettings, samples_from: int | None
    ) -> ProblemRecord:
        return solve_problem(
            self.engine,
            run_id=run_id,
            method=method,
            problem=problem,
            components=self.components,
            settings=settings,
            samples_from=samples_from,
        )


def import_ray():
    """The ``ray`` module, or ``WorkerError`` saying how to install it."""
    try:
        import ray
    except ImportError:
        raise WorkerError("--workers > 1 and --ray-address need Ray: pip install -e '.[cluster]'") from None
    return ray


def connect(*, workers: int, address: str | None) -> bool:
    """Make sure this process is connected to Ray: joins ``address`` ("auto" or
    HOST:PORT) or, without one, starts Ray here with ``workers`` CPUs. Returns
    whether this call connected (and so must disconnect); an existing
    connection is kept. Raises ``WorkerError`` before anything is written."""
    ray = import_ray()
    if ray.is_initialized():
        return False
    quiet = {"include_dashboard": False, "log_to_driver": False, "logging_level": "ERROR"}
    if address is None:
        ray.init(num_cpus=workers, **quiet)
        return True
    if address != "auto":
        _check_reachable(address)
    try:
        ray.init(address=address, **quiet)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WorkerError(
            f"cannot join the Ray cluster at {address} ({first_line}); start one with `ray start --head` "
            "there, or drop --ray-address to run Ray on this machine"
        ) from None
    return True


def _check_reachable(address: str) -> None:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise WorkerError(f"--ray-address must be auto or HOST:PORT, got {address!r}")
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT).close()
    except OSError as exc:
        raise WorkerError(
            f"unreachable Ray address {address} ({exc.strerror or exc}); start the head there with "
            f"`ray start --head --port {port}`, or drop --ray-address to run Ray on this machine"
        ) from None


class WorkerPool:
    """N Ray actors over one store; use it as a context manager.

    Entering it connects to Ray, then opens the store (``engine``: the driver's
    connection, made before any actor so that a fresh store's tables are made
    once), then starts the actors and waits until each has loaded its model.

    Args:
        database_url: the store every actor opens (an absolute path or a URL).
        build_components: called once in each actor to load its policy and
            critics; must pickle (a module-level function or a ``partial``).
        workers: how many actors, >= 1.
        address: a Ray cluster to join ("auto" or HOST:PORT); None starts Ray here.
    """

    def __init__(
        self,
        *,
        database_url: str,
        build_components: Callable[[], Components],
        workers: int,
        address: str | None = None,
    ) -> None:
        if workers < 1:
            raise WorkerError(f"--workers must be >= 1, got {workers}")
        self.database_url = database_url
        self.build_components = build_components
        self.workers = workers
        self.address = address
        self.actors: list[Any] = []
        self.engine: Engine | None = None
        self._owns_ray = False

    def __enter__(self) -> WorkerPool:
        from store.db import make_engine

        self._owns_ray = connect(workers=self.workers, address=self.address)
        try:
            self.engine = make_engine(self.database_url)
            self.actors = [self._start() for _ in range(self.workers)]
            self._ray.get([actor.pid.remote() for actor in self.actors])
        except self._ray.exceptions.RayActorError as exc:
            self.close()
            raise WorkerError(f"a worker could not start: {_last_line(exc)}") from None
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    @property
    def _ray(self):
        import ray

        return ray

    def _start(self):
        # max_restarts=0: a dead actor is replaced by the driver, which knows
        # which problem it held; Ray restarting it would not.
        remote = self._ray.remote(num_cpus=1, max_restarts=0, max_task_retries=0)(_Worker)
        return remote.remote(self.database_url, self.build_components)

    def close(self) -> None:
        """Stop the actors (and Ray, where this pool started or joined it)."""
        for actor in self.actors:
            self._ray.kill(actor, no_restart=True)
        self.actors = []
        if self._owns_ray:
            self._ray.shutdown()
            self._owns_ray = False

    def open_run(self, **request: Any) -> int:
        """``engine.evaluate.open_eval_run`` on the first actor (which holds the
        components it checks the request against); its errors raised here as they are."""
        return self._get(self.actors[0].open_run.remote(**request))

    def matching_run(self, **request: Any) -> int | None:
        """``engine.evaluate.matching_run`` against the first actor's components."""
        return self._get(self.actors[0].matching_run.remote(**request))

    def has_value_head(self) -> bool:
        """Whether the actors loaded a value head (the ablation's last row needs one)."""
        return self._get(self.actors[0].has_value_head.remote())

    def _get(self, ref) -> Any:
        try:
            return self._ray.get(ref)
        except self._ray.exceptions.RayTaskError as exc:
            raise exc.cause from None

    def solve_all(
        self,
        problems: Sequence[Problem],
        *,
        on_problem: Callable[[ProblemRecord, int, int], None] | None = None,
        **request: Any,
    ) -> list[ProblemRecord]:
        """Every problem solved by some actor (see the module docstring), its
        record in the order given; ``on_problem`` as each one finishes."""
        ray = self._ray
        pending = deque(range(len(problems)))
        idle = deque(self.actors)
        in_flight: dict[Any, tuple[Any, int]] = {}
        deaths = [0] * len(problems)
        records: list[ProblemRecord | None] = [None] * len(problems)
        done = 0
        while pending or in_flight:
            while pending and idle:
                actor, position = idle.popleft(), pending.popleft()
                in_flight[actor.solve.remote(problem=problems[position], **request)] = (actor, position)
            (ref,), _ = ray.wait(list(in_flight), num_returns=1)
            actor, position = in_flight.pop(ref)
            try:
                record = self._get(ref)
            except ray.exceptions.RayActorError as exc:
                deaths[position] += 1
                if deaths[position] >= MAX_DEATHS_PER_PROBLEM:
                    raise WorkerError(
                        f"problem {problems[position].index} lost its worker {deaths[position]} times "
                        f"(last: {_last_line(exc)}); see the Ray logs"
                    ) from None
                ray.kill(actor, no_restart=True)
                self.actors.remove(actor)
                replacement = self._start()
                self.actors.append(replacement)
                idle.append(replacement)
                pending.appendleft(position)
                continue
            records[position] = record
            idle.append(actor)
            done += 1
            if on_problem is not None:
                on_problem(record, done, len(problems))
        return [record for record in records if record is not None]


def _last_line(exc: BaseException) -> str:
    """The line of a Ray error that names the cause (Ray puts it after the traceback)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip()
    return text.splitlines()[-1].strip() if text else type(exc).__name__


def evaluate_on_workers(
    pool: WorkerPool,
    *,
    method: str,
    problems: Sequence[Problem],
    settings: EvalSettings,
    run_id: int | None = None,
    on_problem: Callable[[ProblemRecord, int, int], None] | None = None,
    meta: dict[str, Any] | None = None,
    on_run_created: Callable[[int], None] | None = None,
    iteration_id: int | None = None,
    samples_from: int | None = None,
) -> EvalResult:
    """``engine.evaluate.evaluate`` with the problems solved by ``pool``'s actors
    (same arguments, but the components live in the actors); the driver keeps
    the run's heartbeat and status through ``pool.engine``."""
    engine = pool.engine
    resumed = run_id is not None
    run_id = pool.open_run(
        method=method,
        task=problems[0].task if problems else "",
        n_problems=len(problems),
        settings=settings,
        run_id=run_id,
        meta=meta,
        iteration_id=iteration_id,
    )
    # The run is the driver's (its pid and heartbeat), not the actor's that made
    # it: the run stays live while any worker writes, and only as long as this
    # process, which dispatches its problems, is alive.
    set_run_status(engine, run_id, "running")
    if on_run_created is not None and not resumed:
        on_run_created(run_id)

    def work() -> list[ProblemRecord]:
        return pool.solve_all(
            problems,
            on_problem=on_problem,
            run_id=run_id,
            method=method,
            settings=settings,
            samples_from=samples_from,
        )

    records = tracked_run(engine, run_id, work)
    with Session(engine) as session:
        model = session.get(schema.Run, run_id).model
    return EvalResult.from_records(
        run_id=run_id, method=method, model=model, task=problems[0].task, records=records
    )


__all__ = ["MAX_DEATHS_PER_PROBLEM", "WorkerError", "WorkerPool", "connect", "evaluate_on_workers"]
