"""The stages of one improve round. A ``Stage`` is a name and a function of the
round's ``IterationContext``; it records what it did in the iteration's
``IterationMetrics`` (``store/iterations.py``), and the loop
(``training/improve.py``) records that it finished."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy.engine import Engine

from engine.baselines import EvalSettings
from engine.calibration import classification, verified_outcome
from engine.config import ConfigError, CriticModels
from engine.types import Problem
from store.iterations import Checkpoints, IterationMetrics, TrainSearch
from store.queries import critic_nodes, load_iteration, update_iteration
from training.base_config import TrainConfig
from training.checkpoints import TrainResult
from training.dpo_trainer import train_dpo
from training.improve_config import ImproveConfig, train_set
from training.mine import load_examples, mine_trees, trees_of_run
from training.rubric_trainer import train_orm, train_prm
from training.sft_trainer import train_sft
from training.value_trainer import train_value

if TYPE_CHECKING:
    from engine.api import Components
    from engine.config import SearchConfig
    from engine.evaluate import EvalResult

Log = Callable[[str], None]

TrainFn = Callable[..., TrainResult]
"""A trainer (``train_sft``, ``train_dpo``, ``train_value``, ``train_prm``, ``train_orm``):
``(examples, *, base_model, output_dir, config, progress) -> TrainResult``."""

CRITIC_COLUMNS = {"value": "value_score", "prm": "prm_score", "orm": "orm_score"}
"""The critics whose quality the ``critics`` stage measures, and their node columns."""


@dataclass(frozen=True)
class IterationContext:
    """What every stage of a round works with.

    Attributes:
        engine: the store.
        config: the loop's settings.
        iteration_id: the round's ``Iteration`` row.
        round_number: 0 for the base evaluation, then 1, 2, ...
        held_out: the held-out problems, the same every round.
        log: takes one line per event.
        workers: Ray actors that solve the search's and evaluations' problems
            (>= 1; 1 without ``ray_address``: in this process, no Ray). How the
            loop runs, not what it computes: not in ``config``, so a resumed
            loop may use another count and get the same results.
        ray_address: a Ray cluster to run the workers on ("auto" or
            HOST:PORT); None starts Ray here when ``workers`` > 1.
    """

    engine: Engine
    config: ImproveConfig
    iteration_id: int
    round_number: int
    held_out: list[Problem]
    log: Log
    workers: int = 1
    ray_address: str | None = None

    def metrics(self) -> IterationMetrics:
        """The iteration's metrics as stored now."""
        return IterationMetrics.from_dict(load_iteration(self.engine, self.iteration_id).metrics)

    def checkpoints(self) -> Checkpoints:
        """The models the round has so far."""
        checkpoints = self.metrics().checkpoints
        if checkpoints is None:
            raise ConfigError(
                f"iteration {self.iteration_id} has no checkpoints; canopy improve did not write it"
            )
        return checkpoints

    @contextmanager
    def recording(self) -> Iterator[IterationMetrics]:
        """The stored metrics, to change in place; written back when the block ends."""
        metrics = self.metrics()
        yield metrics
        update_iteration(self.engine, self.iteration_id, metrics=metrics)

    def show(self, stage: str) -> None:
        """Say what the round is doing now (the app shows ``Iteration.stage``)."""
        update_iteration(self.engine, self.iteration_id, stage=stage)


@dataclass(frozen=True)
class Stage:
    """One step of a round: ``name`` goes into ``IterationMetrics.done`` once ``run`` returns."""

    name: str
    run: Callable[[IterationContext], None]


def round_stages(config: ImproveConfig, round_number: int) -> list[Stage]:
    """The stages of a round in order; round 0 (the base) only evaluates."""
    evaluation = [
        Stage("eval_greedy", partial(evaluate_held_out, method="greedy")),
        Stage("eval_mcts", partial(evaluate_held_out, method="mcts")),
        Stage("critics", measure_critics),
    ]
    if round_number == 0:
        return evaluation
    policy = [_trained("sft", train_sft, config.sft)]
    if config.dpo:
        policy.append(_trained("dpo", train_dpo, config.dpo_train))
    return [
        Stage("search", search_training_problems),
        Stage("mine", mine_search_trees),
        *policy,
        # The head is trained on the hidden states of the backend it will score on.
        _trained("value", partial(train_value, backend=_hidden_state_backend(config)), config.value),
        _trained("prm", train_prm, config.prm),
        _trained("orm", train_orm, config.orm),
        *evaluation,
    ]


def _hidden_state_backend(config: ImproveConfig) -> str:
    """Where the searches read hidden states: ``llamacpp`` from its own context,
    otherwise (``hf``, and ``vllm``, which gives none) a transformers model."""
    return "llamacpp" if config.backend == "llamacpp" else "hf"


def _trained(kind: str, train: TrainFn, settings: TrainConfig) -> Stage:
    return Stage(kind, partial(train_checkpoint, kind=kind, train=train, settings=settings))


def search_training_problems(context: IterationContext) -> None:
    """MCTS on the round's training problems (an eval run of the store)."""
    problems = train_set(context.config, context.round_number)
    result = _evaluate(context, run_key="search", method="mcts", problems=problems)
    with context.recording() as metrics:
        metrics.train_search = TrainSearch(solved=result.accuracy, tokens=result.generated_tokens)


def mine_search_trees(context: IterationContext) -> None:
    """The search's trees become ``TrainingExample`` rows of every kind."""
    trees = trees_of_run(context.engine, context.metrics().runs["search"])
    result = mine_trees(context.engine, trees, context.config.mine, iteration_id=context.iteration_id)
    mined = ", ".join(f"{count} {kind}" for kind, count in result.counts.items())
    people = f"; {result.human_labels} labelled steps took precedence" if result.human_labels else ""
    context.log(f"  mined {len(trees)} trees: {mined}{people}")
    with context.recording() as metrics:
        metrics.data = {f"{kind}_examples": count for kind, count in result.counts.items()}
        metrics.data["tree_count"] = len(trees)
        metrics.data["human_labels"] = result.human_labels


def train_checkpoint(context: IterationContext, *, kind: str, train: TrainFn, settings: TrainConfig) -> None:
    """Train the ``kind`` checkpoint (sft, dpo, value, prm, orm) on the round's
    mined examples of that kind, into the round's folder. On nothing to learn
    from, keep the previous checkpoint and record why in ``skipped``."""
    checkpoints = context.checkpoints()
    if kind in ("sft", "dpo"):  # the policy trains from the last policy
        slot, base = "policy", checkpoints.policy
    elif kind == "value":  # a fresh head on the new policy's hidden states
        slot, base = "value", checkpoints.policy
    else:  # a critic from its last checkpoint, else the starting model (the policy asked a rubric)
        slot, base = kind, getattr(checkpoints, kind) or context.config.model
    directory = Path(context.config.checkpoints) / f"iteration-{context.iteration_id}" / kind
    examples = load_examples(context.engine, kind=kind, iteration_id=context.iteration_id)

    def progress(message: str) -> None:
        context.show(f"{kind}: {message}")

    def skip(reason: str) -> None:
        context.log(f"  {kind}: skipped, {reason}")
        with context.recording() as metrics:
            metrics.skipped[kind] = reason

    if not examples:
        skip(f"no {kind} examples were mined")
        return
    context.log(f"  {kind}: training on {len(examples)} examples from {base}")
    try:
        result = train(examples, base_model=base, output_dir=directory, config=settings, progress=progress)
    except ConfigError as error:  # e.g. only one class of labels: nothing to learn
        skip(str(error))
        return
    context.log(f"  {kind}: loss {result.train_loss:.4f} after {result.steps} steps, saved {directory}")
    with context.recording() as metrics:
        metrics.checkpoints = replace(checkpoints, **{slot: str(directory)})
        metrics.loss[kind] = result.train_loss
        if result.eval_loss is not None:
            metrics.loss[f"{kind}_eval"] = result.eval_loss


def evaluate_held_out(context: IterationContext, *, method: str) -> None:
    """Accuracy and tokens of ``method`` (greedy or mcts) on the held-out problems."""
    result = _evaluate(context, run_key=f"eval_{method}", method=method, problems=context.held_out)
    with context.recording() as metrics:
        metrics.accuracy[method] = result.accuracy
        metrics.tokens[method] = result.generated_tokens


def measure_critics(context: IterationContext) -> None:
    """Each active critic's precision, recall and ECE over the held-out MCTS
    trees' nodes that have a verified outcome."""
    nodes = critic_nodes(context.engine, [context.metrics().runs["eval_mcts"]], outcome=verified_outcome)
    report: dict[str, dict[str, float | None]] = {}
    for name, column in CRITIC_COLUMNS.items():
        scored = nodes.dropna(subset=[column, "outcome"])
        if scored.empty:
            continue
        stats = classification(scored[column], scored["outcome"], threshold=0.5)
        report[name] = {key: stats[key] for key in ("precision", "recall", "ece")}
        numbers = ", ".join(f"{key} {value}" for key, value in report[name].items())
        context.log(f"  {name} over {stats['nodes']} nodes: {numbers}")
    with context.recording() as metrics:
        metrics.critics = report


def round_components(search: SearchConfig, checkpoints: Checkpoints, backend: str) -> Components:
    """The policy and critics of a round's ``checkpoints`` on ``backend``: what
    its searches and evaluations load (in this process, or once in each worker)."""
    from engine.api import build_components
    from engine.policies import load_policy

    return build_components(
        search,
        model=checkpoints.policy,
        critic_models=CriticModels(value=checkpoints.value, prm=checkpoints.prm, orm=checkpoints.orm),
        policy=load_policy(checkpoints.policy, backend=backend),
    )


def _evaluate(context: IterationContext, *, run_key: str, method: str, problems: list[Problem]) -> EvalResult:
    """Evaluate the round's checkpoints with ``method``, continuing the stored
    run of ``run_key`` if one was begun (on ``context.workers`` Ray actors when
    there are several)."""
    from engine.evaluate import evaluate

    search = context.config.search
    build = partial(round_components, search, context.checkpoints(), context.config.backend)

    def remember(run_id: int) -> None:
        with context.recording() as metrics:
            metrics.runs[run_key] = run_id

    def progress(record, done: int, total: int) -> None:
        context.show(f"{run_key} {done}/{total}")
        context.log(
            f"  {run_key} {done}/{total}: answer {record.answer!r}"
            f" (gold {record.gold}, {record.generated_tokens} tokens)"
        )

    request = {
        "method": method,
        "problems": problems,
        "settings": EvalSettings(max_tokens=context.config.max_tokens, search=search),
        "run_id": context.metrics().runs.get(run_key),
        "on_problem": progress,
        "on_run_created": remember,
        "meta": {"improve_iteration": context.iteration_id, "stage": run_key},
        "iteration_id": context.iteration_id,
    }
    if context.workers > 1 or context.ray_address is not None:
        from engine.fanout import WorkerPool, evaluate_on_workers

        with WorkerPool(
            database_url=context.engine.url.render_as_string(hide_password=False),
            build_components=build,
            workers=context.workers,
            address=context.ray_address,
        ) as pool:
            result = evaluate_on_workers(pool, **request)
    else:
        result = evaluate(context.engine, components=build(), **request)
    context.log(f"  {run_key}: accuracy {result.accuracy}, {result.generated_tokens:.0f} tokens per problem")
    return result
