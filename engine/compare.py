"""Several evaluations side by side on the same problems: ``compare`` (methods
at equal compute) and ``run_ablation`` (MCTS's components added one at a time,
after AlphaLLM's Table 3). Both write a report (``engine.reports``) and, run
again with the same arguments on the same database, continue their runs."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy.engine import Engine

from engine.api import Components
from engine.baselines import METHODS, EvalSettings
from engine.config import ConfigError, SearchConfig
from engine.evaluate import EvalResult, ProblemRecord, evaluate, matching_run
from engine.reports import Report, write_report
from engine.types import Problem

if TYPE_CHECKING:
    from engine.fanout import WorkerPool

SAMPLING_METHODS = ("self-consistency", "best-of-n")
"""The methods whose compute is set by their sample count."""


def compare(
    engine: Engine,
    *,
    methods: Sequence[str],
    problems: Sequence[Problem],
    components: Components | None = None,
    settings: EvalSettings,
    out_dir: str | Path,
    on_problem: Callable[[str, ProblemRecord, int, int], None] | None = None,
    meta: dict[str, Any] | None = None,
    on_run_created: Callable[[int], None] | None = None,
    on_run_continued: Callable[[int], None] | None = None,
    png: bool = True,
    equal_tokens: bool = False,
    pool: WorkerPool | None = None,
) -> Report:
    """Evaluate each method on the same problems (one run each) and write the report
    (``png=False`` skips the image export, which starts a headless Chrome).

    A method that already has a run with these exact settings, problems and
    models in ``engine`` (``matching_run``) continues that run instead of
    starting anew (``on_run_continued`` gets its id): an interrupted comparison
    is resumed by running the same command again, and a finished one re-reported.

    Best-of-N run after self-consistency reranks self-consistency's stored
    samples (the same ones it would draw: same settings and seed) instead of
    drawing them again; its records still count those samples' tokens.

    With ``equal_tokens`` greedy and MCTS run first, and the sampling methods
    (self-consistency, best-of-N) then draw ``round(MCTS tokens / greedy
    tokens)`` samples per problem, so they spend about what the search spent.

    The problems run on ``components`` in this process, or on ``pool``'s Ray
    actors (``engine.fanout``; pass exactly one).
    """
    _one_place(components, pool)
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
        samples_from = None
        if method == "best-of-n" and "self-consistency" in results:
            # The very samples self-consistency drew (same settings and seed): rerank, don't redraw.
            samples_from = results["self-consistency"].run_id
        results[method] = _evaluate_or_continue(
            engine,
            method=method,
            problems=problems,
            components=components,
            pool=pool,
            settings=method_settings,
            on_problem=callback,
            meta=meta if samples_from is None else {**(meta or {}), "samples_from_run": samples_from},
            on_run_created=on_run_created,
            on_run_continued=on_run_continued,
            samples_from=samples_from,
        )
    return write_report(
        [results[method] for method in methods],
        labels=[labels[method] for method in methods],
        out_dir=out_dir,
        name="compare",
        title="Accuracy vs generated tokens",
        png=png,
    )


def _one_place(components: Components | None, pool: WorkerPool | None) -> None:
    if (components is None) == (pool is None):
        raise ConfigError("pass components (run here) or pool (run on Ray actors), not both or neither")


def _tagged(callback: Callable[[str, ProblemRecord, int, int], None], tag: str):
    return lambda record, done, total: callback(tag, record, done, total)


def ablation_configs(base: SearchConfig, *, value_head: bool = False) -> list[tuple[str, SearchConfig]]:
    """AlphaLLM Table 3's rows: plain MCTS, then each of ``base``'s components
    added in turn, so the last row is ``base`` itself.

    The first row has a fixed width (``c_max = c_min``, alpha 0), no similarity
    filter, no rollouts and no critics (every value is the uninformed 0.5, so
    the policy's priors alone steer PUCT), and votes without the programs.
    Then, cumulatively and only where ``base`` has them: adaptive branching,
    the similarity filter, rollouts, the PRM, the ORM, the value head (with
    ``value_head``: a value-head checkpoint is loaded), the checker
    (``base.tool``), and the programs' votes in the answer vote.
    """
    plain = base.with_overrides(
        root_max_children=base.root_min_children,
        max_children=base.min_children,
        branching_alpha=0.0,
        similarity="off",
        rollouts=0,
        weight_prm=0.0,
        weight_orm=0.0,
        weight_value=0.0,
        weight_tool=0.0,
        program_votes=0.0 if base.tool == "program" else base.program_votes,
    )
    candidates: list[tuple[str, bool, dict[str, Any]]] = [
        (
            "+ adaptive branching",
            (base.root_max_children, base.max_children, base.branching_alpha)
            != (plain.root_max_children, plain.max_children, plain.branching_alpha),
            {
                "root_max_children": base.root_max_children,
                "max_children": base.max_children,
                "branching_alpha": base.branching_alpha,
            },
        ),
        ("+ similarity filter", base.similarity != "off", {"similarity": base.similarity}),
        ("+ rollouts", base.rollouts > 0, {"rollouts": base.rollouts}),
        ("+ PRM", base.weight_prm > 0, {"weight_prm": base.weight_prm}),
        ("+ ORM", base.weight_orm > 0, {"weight_orm": base.weight_orm}),
        ("+ value head", value_head and base.weight_value > 0, {"weight_value": base.weight_value}),
        (f"+ {base.tool} checker", base.weight_tool > 0, {"weight_tool": base.weight_tool}),
        (
            "+ programs vote",
            base.tool == "program" and base.weight_tool > 0 and base.program_votes > 0,
            {"program_votes": base.program_votes},
        ),
    ]
    rows = [("MCTS, all components off", plain)]
    for name, present, overrides in candidates:
        if present:
            rows.append((name, rows[-1][1].with_overrides(**overrides)))
    return rows


def run_ablation(
    engine: Engine,
    *,
    problems: Sequence[Problem],
    settings: EvalSettings,
    components: Components | None = None,
    out_dir: str | Path,
    on_problem: Callable[[str, ProblemRecord, int, int], None] | None = None,
    meta: dict[str, Any] | None = None,
    on_run_created: Callable[[int], None] | None = None,
    on_run_continued: Callable[[int], None] | None = None,
    png: bool = True,
    pool: WorkerPool | None = None,
) -> Report:
    """Evaluate MCTS under each of ``ablation_configs`` (one run per row) and write
    ``ablation.md`` / ``ablation.html``: component added -> accuracy, tokens.

    ``components`` must hold every critic the last row turns on (build them
    from ``ablation_configs(...)[-1][1]``); each row's weights turn the rest off.
    A row that already has a run with these arguments continues it. The rows
    run on ``components`` here or on ``pool``'s actors, as in ``compare``."""
    _one_place(components, pool)
    value_head = pool.has_value_head() if pool is not None else components.critics.value is not None
    results, labels = [], []
    for label, config in ablation_configs(settings.search, value_head=value_head):
        row_settings = replace(settings, search=config)
        results.append(
            _evaluate_or_continue(
                engine,
                method="mcts",
                problems=problems,
                components=components,
                pool=pool,
                settings=row_settings,
                on_problem=_tagged(on_problem, label) if on_problem is not None else None,
                meta={**(meta or {}), "ablation": label},
                on_run_created=on_run_created,
                on_run_continued=on_run_continued,
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


def _evaluate_or_continue(
    engine: Engine,
    *,
    method: str,
    problems: Sequence[Problem],
    components: Components | None,
    pool: WorkerPool | None,
    settings: EvalSettings,
    on_problem: Callable[[ProblemRecord, int, int], None] | None,
    meta: dict[str, Any] | None,
    on_run_created: Callable[[int], None] | None,
    on_run_continued: Callable[[int], None] | None,
    samples_from: int | None = None,
) -> EvalResult:
    """``evaluate`` (here or on ``pool``), continuing the run these arguments made before if there is one."""
    request = {"method": method, "task": problems[0].task, "settings": settings, "meta": meta}
    if pool is not None:
        run_id = pool.matching_run(**request)
    else:
        run_id = matching_run(engine, components=components, **request)
    if run_id is not None and on_run_continued is not None:
        on_run_continued(run_id)
    arguments = {
        "method": method,
        "problems": problems,
        "settings": settings,
        "run_id": run_id,
        "on_problem": on_problem,
        "meta": meta,
        "on_run_created": on_run_created,
        "samples_from": samples_from,
    }
    if pool is not None:
        from engine.fanout import evaluate_on_workers

        return evaluate_on_workers(pool, **arguments)
    return evaluate(engine, components=components, **arguments)


__all__ = ["SAMPLING_METHODS", "ablation_configs", "compare", "run_ablation"]
