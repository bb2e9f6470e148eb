"""Evaluate a method on a problem set, compare methods, and ablate MCTS.

``evaluate`` runs one method over problems into one ``Run(kind="eval")`` with a
tree per problem (baselines: their samples or beam tree; MCTS: the usual search
tree) and is resumable: given the run id again it skips problems whose tree is
completed and finishes the rest (an unfinished MCTS tree resumes from its last
committed simulation; an unfinished baseline tree is redone). ``compare`` runs
several methods on the same problems and writes a Markdown table and an
accuracy-vs-generated-tokens chart; run again with the same settings on the same
database it continues (or just re-reports) the runs it made before.
``run_ablation`` adds MCTS's components one at a time, after AlphaLLM's Table 3.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from sqlalchemy import delete
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from engine.answer_selection import AnswerChoice
from engine.api import Components, RunNotResumable, _finish_run, _search_tree
from engine.baselines import METHODS, EvalSettings, run_baseline
from engine.config import ConfigError, SearchConfig
from engine.persist import (
    StoreSink,
    create_run,
    create_tree,
    find_or_add_problem,
    load_tree,
    set_run_status,
    writer_alive,
)
from engine.types import Problem
from store import schema


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

    def to_dict(self) -> dict[str, Any]:
        data = {name: getattr(self, name) for name in self.__dataclass_fields__ if name != "records"}
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

    Raises:
        ConfigError: unknown method, no problems, or a method whose critic is off.
        RunNotResumable: ``run_id`` is unknown or is not this evaluation.
    """
    if method not in METHODS:
        raise ConfigError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    if not problems:
        raise ConfigError("no problems to evaluate")
    if method == "beam" and components.critics.prm is None:
        raise ConfigError("beam search is PRM-guided: set weight_prm > 0")
    policy = components.policy
    if run_id is None:
        run_id = create_run(
            engine,
            model=policy.name,
            task=problems[0].task,
            seed=settings.seed,
            config={"settings": settings.to_dict(), "meta": dict(meta or {})},
            critics=components.critic_info,
            rollout_model=getattr(components.rollout_policy, "name", None),
            kind="eval",
            method=method,
            iteration_id=iteration_id,
        )
        if on_run_created is not None:
            on_run_created(run_id)
    else:
        check_resumable(engine, run_id, method=method, settings=settings)
        set_run_status(engine, run_id, "running")

    def work() -> list[ProblemRecord]:
        return _evaluate_problems(engine, run_id, method, problems, components, settings, on_problem)

    records = _finish_run(engine, run_id, work)
    graded = [record for record in records if record.correct is not None]
    return EvalResult(
        run_id=run_id,
        method=method,
        model=policy.name,
        task=problems[0].task,
        n=len(records),
        accuracy=sum(bool(record.correct) for record in graded) / len(graded) if graded else None,
        generated_tokens=sum(record.generated_tokens for record in records) / len(records),
        prefill_tokens=sum(record.prefill_tokens for record in records) / len(records),
        seconds=round(sum(record.seconds for record in records), 3),
        records=records,
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


def check_resumable(engine: Engine, run_id: int, *, method: str, settings: EvalSettings) -> None:
    """Refuse to continue a run with another method or other settings, or one
    another process is still writing."""
    run = eval_run(engine, run_id)
    if writer_alive(run):
        raise RunNotResumable(f"run {run_id} is being written right now by process {run.pid}; stop it first")
    if run.method != method:
        raise RunNotResumable(f"run {run_id} evaluated {run.method}, not {method}")
    if run.config.get("settings") != settings.to_dict():
        raise RunNotResumable(f"run {run_id} was made with other settings; resume it with its own")


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
    config = {"settings": settings.to_dict(), "meta": dict(meta or {})}
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
    return next((run.id for run in runs if run.config == config), None)


def _evaluate_problems(
    engine: Engine,
    run_id: int,
    method: str,
    problems: Sequence[Problem],
    components: Components,
    settings: EvalSettings,
    on_problem: Callable[[ProblemRecord, int, int], None] | None,
) -> list[ProblemRecord]:
    with Session(engine) as session:
        stored = session.exec(select(schema.Tree).where(schema.Tree.run_id == run_id)).all()
    trees_by_problem = {row.problem_id: row for row in stored}
    records = []
    for done, problem in enumerate(problems, start=1):
        with Session(engine) as session:
            problem_id = find_or_add_problem(session, problem).id
            session.commit()
        tree_row = trees_by_problem.get(problem_id)
        if tree_row is not None and tree_row.status == "completed":
            record = _record(tree_row, problem, from_store=True)
        else:
            record = _solve(engine, run_id, method, problem, components, settings, tree_row)
            with Session(engine) as session:
                trees_by_problem[problem_id] = session.get(schema.Tree, record.tree_id)
        records.append(record)
        if on_problem is not None:
            on_problem(record, done, len(problems))
    return records


def _solve(
    engine: Engine,
    run_id: int,
    method: str,
    problem: Problem,
    components: Components,
    settings: EvalSettings,
    tree_row: schema.Tree | None,
) -> ProblemRecord:
    policy = components.policy
    if method == "mcts":
        tree = None
        if tree_row is None:
            tree_id = _new_tree(engine, run_id, problem, components, settings.search.simulations)
        else:
            tree_id = tree_row.id
            tree, _ = load_tree(engine, tree_id)
            tree = tree if tree.nodes else None
        _search_tree(
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
            method, problem.question, policy=policy, critics=components.critics, settings=settings
        )
        choices = {
            name: AnswerChoice(name, answer, outcome.chosen) for name, answer in outcome.answers.items()
        }
        choices[method] = AnswerChoice(method, outcome.answer, outcome.chosen)
        sink.finish(outcome.tree, choices, method=method, gold=problem.answer)
    with Session(engine) as session:
        return _record(session.get(schema.Tree, tree_id), problem)


def _new_tree(engine: Engine, run_id: int, problem: Problem, components: Components, simulations: int) -> int:
    policy = components.policy
    prompt = policy.decode(policy.root_state(problem.question))
    return create_tree(engine, run_id=run_id, problem=problem, prompt=prompt, simulations=simulations)


def _clear_tree(engine: Engine, tree_id: int) -> None:
    """Forget what an interrupted baseline wrote, so the problem is redone whole."""
    with Session(engine) as session:
        for table in (schema.Node, schema.FilteredOption, schema.SearchEvent):
            session.exec(delete(table).where(table.tree_id == tree_id))
        tree_row = session.get(schema.Tree, tree_id)
        tree_row.status = "running"
        tree_row.node_count = tree_row.filtered_count = 0
        tree_row.generated_tokens = tree_row.prefill_tokens = 0
        tree_row.seconds = 0.0
        session.add(tree_row)
        session.commit()


def _record(tree_row: schema.Tree, problem: Problem, *, from_store: bool = False) -> ProblemRecord:
    return ProblemRecord(
        tree_id=tree_row.id,
        index=problem.index,
        gold=problem.answer,
        answer=tree_row.answer,
        correct=tree_row.correct,
        generated_tokens=tree_row.generated_tokens,
        prefill_tokens=tree_row.prefill_tokens,
        seconds=round(tree_row.seconds, 3),
        from_store=from_store,
    )


SAMPLING_METHODS = ("self-consistency", "best-of-n")
"""The methods whose compute is set by their sample count."""


# -- reports --------------------------------------------------------------------


def _accuracy(result: EvalResult) -> str:
    return "n/a" if result.accuracy is None else f"{result.accuracy:.1%}"


def results_table(results: Sequence[EvalResult], *, labels: Sequence[str] | None = None) -> str:
    """A Markdown table: one row per result (``labels`` name the rows; default: method)."""
    labels = labels or [result.method for result in results]
    lines = [
        "| method | accuracy | n | mean generated tokens | mean prefill tokens | seconds | run |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for label, result in zip(labels, results, strict=True):
        lines.append(
            f"| {label} | {_accuracy(result)} | {result.n} | {result.generated_tokens:.1f} | "
            f"{result.prefill_tokens:.1f} | {result.seconds:.1f} | {result.run_id} |"
        )
    return "\n".join(lines) + "\n"


def accuracy_chart(results: Sequence[EvalResult], *, labels: Sequence[str] | None = None, title: str):
    """Plotly figure: accuracy against mean generated tokens per problem, one point per row."""
    import plotly.graph_objects as go

    labels = labels or [result.method for result in results]
    figure = go.Figure(
        go.Scatter(
            x=[result.generated_tokens for result in results],
            y=[result.accuracy for result in results],
            mode="markers+text",
            text=list(labels),
            textposition="top center",
            marker={"size": 12},
            cliponaxis=False,
            customdata=[result.run_id for result in results],
            hovertemplate=(
                "%{text}<br>%{x:.0f} tokens<br>accuracy %{y:.1%}<br>run %{customdata}<extra></extra>"
            ),
        )
    )
    figure.update_layout(
        title=title,
        xaxis_title="mean generated tokens per problem",
        yaxis_title="accuracy",
        yaxis={"range": [-0.05, 1.15], "tickformat": ".0%"},
        template="plotly_white",
    )
    return figure


@dataclass(frozen=True)
class Report:
    """Files a comparison or an ablation wrote.

    ``png`` is None when no offline image exporter works here; ``png_note`` says why.
    """

    results: list[EvalResult]
    labels: list[str]
    table: Path
    html: Path
    png: Path | None
    png_note: str


def write_report(
    results: Sequence[EvalResult],
    *,
    labels: Sequence[str],
    out_dir: str | Path,
    name: str,
    title: str,
    png: bool = True,
) -> Report:
    """Write ``<name>.md``, ``<name>.html`` (Plotly inlined, so it opens offline) and,
    where kaleido and a Chrome work, ``<name>.png``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    problems = results[0].n if results else 0
    model = results[0].model if results else ""
    header = (
        f"# {title}\n\nModel `{model}`, task `{results[0].task if results else ''}`, {problems} problems.\n\n"
    )
    table = out / f"{name}.md"
    table.write_text(header + results_table(results, labels=labels))
    figure = accuracy_chart(results, labels=labels, title=title)
    html = out / f"{name}.html"
    figure.write_html(html, include_plotlyjs=True)
    if not png:
        return Report(list(results), list(labels), table, html, None, "no PNG: not asked for")
    image: Path | None = out / f"{name}.png"
    note = f"wrote {image}"
    try:
        figure.write_image(image)
    except Exception as exc:  # noqa: BLE001 - any exporter failure means "no PNG", said plainly
        image = None
        reason = f"{type(exc).__name__}: {exc}".splitlines()[0]
        note = f"no PNG: the image export needs kaleido (pip install kaleido) and a Chrome ({reason})"
    return Report(list(results), list(labels), table, html, image, note)


def compare(
    engine: Engine,
    *,
    methods: Sequence[str],
    problems: Sequence[Problem],
    components: Components,
    settings: EvalSettings,
    out_dir: str | Path,
    on_problem: Callable[[str, ProblemRecord, int, int], None] | None = None,
    meta: dict[str, Any] | None = None,
    on_run_created: Callable[[int], None] | None = None,
    on_run_continued: Callable[[int], None] | None = None,
    png: bool = True,
    equal_tokens: bool = False,
) -> Report:
    """Evaluate each method on the same problems (one run each) and write the report
    (``png=False`` skips the image export, which starts a headless Chrome).

    A method that already has a run with these exact settings, problems and
    models in ``engine`` (``matching_run``) continues that run instead of
    starting anew (``on_run_continued`` gets its id): an interrupted comparison
    is resumed by running the same command again, and a finished one re-reported.

    With ``equal_tokens`` greedy and MCTS run first, and the sampling methods
    (self-consistency, best-of-N) then draw ``round(MCTS tokens / greedy
    tokens)`` samples per problem, so they spend about what the search spent.
    """
    unknown = [method for method in methods if method not in METHODS]
    if unknown or not methods:
        raise ConfigError(
            f"unknown method(s) {', '.join(unknown) or '(none)'}; choose from {', '.join(METHODS)}"
        )
    if not problems:
        raise ConfigError("no problems to evaluate")
    if equal_tokens and not {"greedy", "mcts"} <= set(methods):
        raise ConfigError("equal tokens sets the sample count from greedy and mcts: compare both")
    order = (
        sorted(methods, key=lambda m: (m not in ("greedy", "mcts"), methods.index(m)))
        if equal_tokens
        else methods
    )
    results: dict[str, EvalResult] = {}
    labels: dict[str, str] = {}
    for method in order:
        callback = None
        if on_problem is not None:
            callback = _tagged(on_problem, method)
        method_settings = settings
        labels[method] = method
        if equal_tokens and method in SAMPLING_METHODS:
            greedy_tokens = max(results["greedy"].generated_tokens, 1.0)
            samples = max(1, round(results["mcts"].generated_tokens / greedy_tokens))
            method_settings = replace(settings, samples=samples)
            labels[method] = f"{method} (n={samples})"
        run_id = matching_run(
            engine,
            method=method,
            components=components,
            task=problems[0].task,
            settings=method_settings,
            meta=meta,
        )
        if run_id is not None and on_run_continued is not None:
            on_run_continued(run_id)
        results[method] = evaluate(
            engine,
            method=method,
            problems=problems,
            components=components,
            settings=method_settings,
            run_id=run_id,
            on_problem=callback,
            meta=meta,
            on_run_created=on_run_created,
        )
    return write_report(
        [results[method] for method in methods],
        labels=[labels[method] for method in methods],
        out_dir=out_dir,
        name="compare",
        title="Accuracy vs generated tokens",
        png=png,
    )


def _tagged(callback: Callable[[str, ProblemRecord, int, int], None], tag: str):
    return lambda record, done, total: callback(tag, record, done, total)


# -- ablation -------------------------------------------------------------------


def ablation_configs(
    base: SearchConfig, *, value_checkpoint: str | None = None
) -> list[tuple[str, SearchConfig]]:
    """AlphaLLM Table 3's rows: plain MCTS, then each component added in turn.

    The first row has a fixed width (``c_max = c_min``, alpha 0), no similarity
    filter, no critics and no rollouts (every value is the uninformed 0.5, so
    the policy's priors alone steer PUCT). Then, cumulatively: adaptive
    branching, the similarity filter, the PRM, rollouts with the ORM, the value
    head (only with a checkpoint: ``value_checkpoint`` or the base's), and the
    arithmetic checker. Each component takes the base config's setting, or its
    default where the base turned it off.
    """
    defaults = SearchConfig()
    checkpoint = value_checkpoint or base.value_checkpoint
    plain = base.with_overrides(
        root_max_children=base.root_min_children,
        max_children=base.min_children,
        branching_alpha=0.0,
        similarity="off",
        weight_prm=0.0,
        rollouts=0,
        weight_orm=0.0,
        weight_value=0.0,
        value_checkpoint=None,
        weight_tool=0.0,
    )
    steps: list[tuple[str, dict[str, Any]]] = [
        (
            "+ adaptive branching",
            {
                "root_max_children": base.root_max_children,
                "max_children": base.max_children,
                "branching_alpha": base.branching_alpha or defaults.branching_alpha,
            },
        ),
        (
            "+ similarity filter",
            {"similarity": base.similarity if base.similarity != "off" else defaults.similarity},
        ),
        ("+ PRM", {"weight_prm": base.weight_prm or defaults.weight_prm}),
        (
            "+ rollouts + ORM",
            {"rollouts": base.rollouts or defaults.rollouts or 1, "weight_orm": base.weight_orm or 1.0},
        ),
    ]
    if checkpoint:
        steps.append(
            ("+ value head", {"weight_value": base.weight_value or 1.0, "value_checkpoint": checkpoint})
        )
    steps.append(("+ tool checker", {"weight_tool": base.weight_tool or 1.0}))
    rows = [("MCTS, all components off", plain)]
    for name, overrides in steps:
        rows.append((name, rows[-1][1].with_overrides(**overrides)))
    return rows


def run_ablation(
    engine: Engine,
    *,
    problems: Sequence[Problem],
    settings: EvalSettings,
    make_components: Callable[[SearchConfig], Components],
    out_dir: str | Path,
    value_checkpoint: str | None = None,
    on_problem: Callable[[str, ProblemRecord, int, int], None] | None = None,
    meta: dict[str, Any] | None = None,
    on_run_created: Callable[[int], None] | None = None,
    png: bool = True,
) -> Report:
    """Evaluate MCTS under each of ``ablation_configs`` (one run per row) and write
    ``ablation.md`` / ``ablation.html``: component added -> accuracy, tokens."""
    results, labels = [], []
    for label, config in ablation_configs(settings.search, value_checkpoint=value_checkpoint):
        row_settings = EvalSettings.from_dict({**settings.to_dict(), "search": config.to_dict()})
        callback = _tagged(on_problem, label) if on_problem is not None else None
        results.append(
            evaluate(
                engine,
                method="mcts",
                problems=problems,
                components=make_components(config),
                settings=row_settings,
                on_problem=callback,
                meta={**(meta or {}), "ablation": label},
                on_run_created=on_run_created,
            )
        )
        labels.append(label)
    return write_report(
        results,
        labels=labels,
        out_dir=out_dir,
        name="ablation",
        title="MCTS ablation (AlphaLLM Table 3 style)",
        png=png,
    )


__all__ = [
    "EvalResult",
    "ProblemRecord",
    "Report",
    "ablation_configs",
    "accuracy_chart",
    "check_resumable",
    "compare",
    "eval_run",
    "evaluate",
    "results_table",
    "run_ablation",
    "write_report",
]
