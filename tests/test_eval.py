"""Evaluation on fakes: storage shape per method, resume, compare report, ablation, ``cmd_eval``."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest
from sqlmodel import Session, select

from engine.api import RunNotResumable, search_problem
from engine.baselines import EvalSettings
from engine.compare import ablation_configs, compare, run_ablation
from engine.config import ConfigError, CriticModels, SearchConfig
from engine.evaluate import check_resumable, evaluate, matching_run
from engine.types import Option, Problem
from store import schema
from store.db import make_engine
from tests.fakes import FakePolicy, fake_components

PROBLEMS = [
    Problem(
        question=f"Tom has 3 apples and buys 4 more ({i}). How many apples?",
        answer="7",
        task="arithmetic",
        index=i,
    )
    for i in range(4)
]


_components = fake_components


def _settings(**overrides) -> EvalSettings:
    search = SearchConfig(simulations=6, seed=3, similarity="edit", rollouts=1)
    return EvalSettings(**{"samples": 4, "beam_width": 2, "beam_k": 2, "search": search, **overrides})


@pytest.fixture
def engine(db_url):
    """A fresh store, on SQLite and on PostgreSQL (``tests/conftest.py``)."""
    return make_engine(db_url)


def _rows(engine, run_id: int):
    with Session(engine) as session:
        run = session.get(schema.Run, run_id)
        trees = session.exec(
            select(schema.Tree).where(schema.Tree.run_id == run_id).order_by(schema.Tree.id)
        ).all()
        nodes = {
            tree.id: session.exec(
                select(schema.Node).where(schema.Node.tree_id == tree.id).order_by(schema.Node.index)
            ).all()
            for tree in trees
        }
    return run, trees, nodes


@pytest.mark.parametrize("method", ["greedy", "self-consistency", "best-of-n", "beam", "mcts"])
def test_each_method_stores_one_eval_run_with_a_tree_per_problem(engine, method) -> None:
    result = evaluate(
        engine, method=method, problems=PROBLEMS[:2], components=_components(), settings=_settings()
    )
    run, trees, nodes = _rows(engine, result.run_id)
    assert (run.kind, run.method, run.status, run.model) == ("eval", method, "completed", "fake")
    assert run.config["settings"] == _settings().to_dict()
    assert len(trees) == 2 and all(tree.status == "completed" for tree in trees)
    assert run.generated_tokens == sum(tree.generated_tokens for tree in trees) > 0
    for tree, record in zip(trees, result.records, strict=True):
        rows = nodes[tree.id]
        assert record.tree_id == tree.id and record.answer == tree.answer
        assert tree.correct == (tree.answer == "7")
        assert tree.chosen_path[0] == 0 and tree.node_count == len(rows)
        assert [row.index for row in rows] == list(range(len(rows)))
        chosen = rows[tree.chosen_path[-1]]
        if tree.answer is not None:
            assert chosen.answer == tree.answer and chosen.terminal
        children = [row for row in rows if row.parent_index == 0]
        if method == "greedy":
            assert len(rows) == 2 and rows[1].terminal and rows[1].prior == 1.0
        if method in ("self-consistency", "best-of-n"):
            assert len(children) == 4 and len(rows) == 5
            assert all(row.terminal and row.option_text for row in children)
            assert sum(row.prior for row in children) == pytest.approx(1.0)
        if method == "best-of-n":
            assert all(row.orm_score in (0.0, 1.0) for row in children)
            assert tree.answers["orm"] == tree.answer and "vote" in tree.answers
        if method == "beam":
            assert all(row.prm_score is not None for row in rows[1:])
            assert len(rows) > 3
        if method == "mcts":
            assert tree.simulations_done == 6 and len(rows) > 3
    assert result.n == 2
    assert result.accuracy == sum(bool(tree.correct) for tree in trees) / 2
    assert result.generated_tokens == sum(tree.generated_tokens for tree in trees) / 2


def test_the_greedy_answer_is_scored_against_the_gold(engine) -> None:
    problems = [Problem("q1", "7", "arithmetic", 0), Problem("q2", "8", "arithmetic", 1)]

    class Sevens(FakePolicy):
        def complete(self, states, *, n, termination, max_tokens, temperature, seed):
            ids = self.tokenizer.encode("The answer is 7.\n")
            self._stats.generated_tokens += len(ids)
            return [[Option("The answer is 7.\n", ids, -1.0, -0.2, True, "eos")]]

    result = evaluate(
        engine, method="greedy", problems=problems, components=_components(Sevens()), settings=_settings()
    )
    assert [record.correct for record in result.records] == [True, False]
    assert result.accuracy == 0.5 and result.generated_tokens == 4.0


class _HistoryPolicy(FakePolicy):
    """Answers by how much its cache holds, as llama.cpp's quantized logits shift
    with what is cached: without a reset, a problem's answer would depend on the
    problems solved before it in the same process."""

    def __init__(self) -> None:
        super().__init__()
        self.cached: list[tuple[int, ...]] = []

    def reset_cache(self) -> None:
        self.cached.clear()

    def complete(self, states, *, n, termination, max_tokens, temperature, seed):
        self.cached.extend(states)
        text = f"The answer is {len(self.cached)}.\n"
        ids = self.tokenizer.encode(text)
        return [[Option(text, ids, -1.0, -0.2, True, "eos")] for _ in range(n)] * len(states)


def test_each_problem_starts_from_empty_model_caches(engine) -> None:
    """So a fan-out or a resumed run answers each problem as one process does."""
    together = evaluate(
        engine,
        method="greedy",
        problems=PROBLEMS[:3],
        components=_components(_HistoryPolicy()),
        settings=_settings(),
    )
    alone = evaluate(
        engine,
        method="greedy",
        problems=PROBLEMS[2:3],
        components=_components(_HistoryPolicy()),
        settings=_settings(),
    )
    assert [record.answer for record in together.records] == ["1"] * 3
    assert together.records[2].answer == alone.records[0].answer


def test_reset_caches_reaches_every_distinct_model_once() -> None:
    from dataclasses import replace

    policy, rollout = _HistoryPolicy(), _HistoryPolicy()
    resets: list[int] = []
    for model in (policy, rollout):
        model.reset_cache = lambda model=model: resets.append(id(model))
    shared = _components(policy)  # the rollouts run on the policy itself
    shared.reset_caches()
    assert resets == [id(policy)]
    resets.clear()
    replace(shared, rollout_policy=rollout).reset_caches()
    assert resets == [id(policy), id(rollout)]


class _Crash(Exception):
    pass


class _CrashingPolicy(FakePolicy):
    """Dies at the n-th call to the model (``complete`` or ``propose``)."""

    def __init__(self, crash_at: int) -> None:
        super().__init__()
        self.crash_at = crash_at

    def _maybe_crash(self) -> None:
        if len(self.calls) == self.crash_at:
            raise _Crash("killed")

    def propose(self, state, **kwargs):
        self._maybe_crash()
        return super().propose(state, **kwargs)

    def complete(self, states, **kwargs):
        self._maybe_crash()
        return super().complete(states, **kwargs)


@pytest.mark.parametrize("method", ["self-consistency", "mcts"])
def test_an_interrupted_eval_resumes_where_it_stopped(engine, method) -> None:
    settings = _settings()
    crash_at = 2 if method == "self-consistency" else 9
    with pytest.raises(_Crash):
        evaluate(
            engine,
            method=method,
            problems=PROBLEMS,
            components=_components(_CrashingPolicy(crash_at)),
            settings=settings,
        )
    with Session(engine) as session:
        run = session.exec(select(schema.Run)).one()
        trees = session.exec(select(schema.Tree)).all()
    assert run.status == "failed" and "killed" in run.error
    done_before = [tree.id for tree in trees if tree.status == "completed"]
    assert 0 < len(done_before) < len(PROBLEMS)
    if method == "mcts":
        partial = [tree for tree in trees if tree.status != "completed"]
        assert len(partial) == 1 and partial[0].simulations_done > 0, "the crash came mid-tree"

    seen = []
    resumed = evaluate(
        engine,
        method=method,
        problems=PROBLEMS,
        components=_components(),
        settings=settings,
        run_id=run.id,
        on_problem=lambda record, done, total: seen.append((record.from_store, done, total)),
    )
    whole = evaluate(engine, method=method, problems=PROBLEMS, components=_components(), settings=settings)
    _, trees, nodes = _rows(engine, run.id)
    assert len(trees) == len(PROBLEMS), "no problem is stored twice"
    assert [tree.id for tree in trees[: len(done_before)]] == done_before
    assert [from_store for from_store, _, _ in seen] == [True] * len(done_before) + [False] * (
        len(PROBLEMS) - len(done_before)
    )
    assert seen[-1][1:] == (len(PROBLEMS), len(PROBLEMS))
    assert resumed.accuracy == whole.accuracy and resumed.n == whole.n == len(PROBLEMS)
    assert [r.answer for r in resumed.records] == [r.answer for r in whole.records]
    assert resumed.generated_tokens == whole.generated_tokens, "a resumed tree draws what the whole one drew"
    _, whole_trees, whole_nodes = _rows(engine, whole.run_id)
    for tree, other in zip(trees, whole_trees, strict=True):
        assert [n.option_text for n in nodes[tree.id]] == [n.option_text for n in whole_nodes[other.id]]
    with Session(engine) as session:
        assert session.get(schema.Run, run.id).status == "completed"


def test_resume_refuses_another_method_other_settings_or_a_search_run(engine) -> None:
    result = evaluate(
        engine, method="greedy", problems=PROBLEMS[:1], components=_components(), settings=_settings()
    )
    with pytest.raises(RunNotResumable, match="evaluated greedy, not mcts"):
        check_resumable(engine, result.run_id, method="mcts", settings=_settings(), components=_components())
    with pytest.raises(RunNotResumable, match="other settings"):
        check_resumable(
            engine, result.run_id, method="greedy", settings=_settings(samples=9), components=_components()
        )
    with pytest.raises(RunNotResumable, match="other settings"):
        other_critics = _components(critic_models=CriticModels(prm="/trained/prm"))
        check_resumable(
            engine, result.run_id, method="greedy", settings=_settings(), components=other_critics
        )
    with pytest.raises(RunNotResumable, match="no run with id 77"):
        evaluate(
            engine,
            method="greedy",
            problems=PROBLEMS,
            components=_components(),
            settings=_settings(),
            run_id=77,
        )
    search = search_problem(
        engine,
        PROBLEMS[0],
        model="fake",
        config=SearchConfig(simulations=2, similarity="edit"),
        components=_components(),
    )
    with pytest.raises(RunNotResumable, match="not an evaluation"):
        check_resumable(engine, search.run_id, method="mcts", settings=_settings(), components=_components())


def _on_backend(name: str | None):
    policy = FakePolicy()
    policy.backend = name
    return fake_components(policy)


def test_a_run_continues_only_on_its_own_backend(engine) -> None:
    """The run records its policy's backend; resuming or continuing it on
    another is refused, while a run of unknown backend (made before schema 2)
    still continues."""
    result = evaluate(
        engine, method="greedy", problems=PROBLEMS[:1], components=_on_backend("hf"), settings=_settings()
    )
    with Session(engine) as session:
        assert session.get(schema.Run, result.run_id).backend == "hf"
    with pytest.raises(RunNotResumable, match="ran on the hf backend; resume it with --backend hf"):
        check_resumable(
            engine, result.run_id, method="greedy", settings=_settings(), components=_on_backend("llamacpp")
        )
    check_resumable(
        engine, result.run_id, method="greedy", settings=_settings(), components=_on_backend("hf")
    )
    find = dict(method="greedy", task="arithmetic", settings=_settings())
    assert matching_run(engine, components=_on_backend("llamacpp"), **find) is None
    assert matching_run(engine, components=_on_backend("hf"), **find) == result.run_id
    with Session(engine) as session:
        session.get(schema.Run, result.run_id).backend = None
        session.commit()
    assert matching_run(engine, components=_on_backend("llamacpp"), **find) == result.run_id


def test_resume_refuses_a_run_another_live_process_is_writing(engine) -> None:
    result = evaluate(
        engine, method="greedy", problems=PROBLEMS[:1], components=_components(), settings=_settings()
    )
    gone = subprocess.Popen([sys.executable, "-c", "pass"])  # a pid whose process has exited
    gone.wait()

    def writer(pid: int, beat_age: float) -> None:
        with Session(engine) as session:
            run = session.get(schema.Run, result.run_id)
            run.status, run.pid = "running", pid
            run.heartbeat_at = datetime.now(UTC) - timedelta(seconds=beat_age)
            session.add(run)
            session.commit()

    writer(os.getppid(), beat_age=5)  # pytest's parent: alive, heartbeat fresh
    components = _components()
    with pytest.raises(RunNotResumable, match="being written right now"):
        check_resumable(engine, result.run_id, method="greedy", settings=_settings(), components=components)
    writer(os.getppid(), beat_age=120)  # a stale heartbeat: its writer is gone
    check_resumable(engine, result.run_id, method="greedy", settings=_settings(), components=components)
    writer(gone.pid, beat_age=5)  # killed hard a moment ago: fresh heartbeat, no process
    check_resumable(engine, result.run_id, method="greedy", settings=_settings(), components=components)


def test_bad_requests_are_config_errors(engine) -> None:
    with pytest.raises(ConfigError, match="unknown method 'sampling'"):
        evaluate(engine, method="sampling", problems=PROBLEMS, components=_components(), settings=_settings())
    with pytest.raises(ConfigError, match="no problems"):
        evaluate(engine, method="greedy", problems=[], components=_components(), settings=_settings())
    no_prm = _components(config=SearchConfig(weight_prm=0))
    with pytest.raises(ConfigError, match="PRM-guided"):
        evaluate(engine, method="beam", problems=PROBLEMS, components=no_prm, settings=_settings())
    with Session(engine) as session:
        assert session.exec(select(schema.Run)).all() == [], "nothing is written for a bad request"


def test_compare_runs_every_method_on_the_same_problems_and_writes_the_report(engine, tmp_path) -> None:
    methods = ["greedy", "self-consistency", "best-of-n", "mcts"]
    report = compare(
        engine,
        methods=methods,
        problems=PROBLEMS[:2],
        components=_components(),
        settings=_settings(),
        out_dir=tmp_path / "report",
    )
    assert [result.method for result in report.results] == methods
    with Session(engine) as session:
        trees = session.exec(select(schema.Tree)).all()
    assert len({tree.problem_id for tree in trees}) == 2 and len(trees) == 8
    table = report.table.read_text()
    for method, result in zip(methods, report.results, strict=True):
        row = next(line for line in table.splitlines() if line.startswith(f"| {method} |"))
        assert f"| {result.generated_tokens:.1f} |" in row and f"| {result.run_id} |" in row
    html = report.html.read_text()
    assert "plotly" in html.lower() and "accuracy" in html and "mean generated tokens per problem" in html
    assert len(html) > 1_000_000, "plotly.js is inlined so the chart opens offline"
    try:
        import kaleido  # noqa: F401
    except ImportError:
        assert report.png is None and "no PNG: the image export needs kaleido" in report.png_note
    else:
        assert report.png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", report.png_note
    with pytest.raises(ConfigError, match="unknown method"):
        compare(
            engine,
            methods=["greedy", "nope"],
            problems=PROBLEMS,
            components=_components(),
            settings=_settings(),
            out_dir=tmp_path,
        )


def test_equal_tokens_sizes_the_sampling_methods_from_mcts(engine, tmp_path) -> None:
    methods = ["self-consistency", "greedy", "best-of-n", "mcts"]
    report = compare(
        engine,
        methods=methods,
        problems=PROBLEMS[:2],
        components=_components(),
        settings=_settings(samples=1),
        out_dir=tmp_path / "report",
        png=False,
        equal_tokens=True,
    )
    results = dict(zip(methods, report.results, strict=True))
    expected = max(1, round(results["mcts"].generated_tokens / results["greedy"].generated_tokens))
    assert expected > 1, "the fake search spends more than one greedy answer"
    for method in ("self-consistency", "best-of-n"):
        with Session(engine) as session:
            run = session.get(schema.Run, results[method].run_id)
        assert run.config["settings"]["samples"] == expected
        assert f"{method} (n={expected})" in report.labels
    assert report.labels[1] == "greedy" and f"| {method} (n={expected}) |" in report.table.read_text()
    with pytest.raises(ConfigError, match="compare both"):
        compare(
            engine,
            methods=["greedy", "self-consistency"],
            problems=PROBLEMS,
            components=_components(),
            settings=_settings(),
            out_dir=tmp_path,
            equal_tokens=True,
        )


def test_a_repeated_compare_continues_its_own_runs_and_only_those(engine, tmp_path) -> None:
    first = compare(
        engine,
        methods=["greedy", "mcts"],
        problems=PROBLEMS[:2],
        components=_components(),
        settings=_settings(),
        out_dir=tmp_path / "a",
        png=False,
        meta={"problems": "first two"},
    )
    greedy_run = first.results[0].run_id
    with Session(engine) as session:  # as if the search was stopped before its last tree
        tree = session.exec(
            select(schema.Tree).where(schema.Tree.run_id == first.results[1].run_id).order_by(schema.Tree.id)
        ).all()[-1]
        tree.status = "interrupted"
        session.add(tree)
        session.commit()
    continued = []
    again = compare(
        engine,
        methods=["greedy", "mcts", "self-consistency"],
        problems=PROBLEMS[:2],
        components=_components(),
        settings=_settings(),
        out_dir=tmp_path / "b",
        png=False,
        meta={"problems": "first two"},
        on_run_continued=continued.append,
    )
    assert continued == [greedy_run, first.results[1].run_id]
    greedy, mcts, sampled = again.results
    assert all(record.from_store for record in greedy.records)
    assert [record.from_store for record in mcts.records] == [True, False], "only the unfinished tree reruns"
    assert sampled.run_id not in continued
    other = compare(  # other settings or other problems are other runs
        engine,
        methods=["greedy", "mcts"],
        problems=PROBLEMS[:2],
        components=_components(),
        settings=_settings(samples=2),
        out_dir=tmp_path / "c",
        png=False,
        meta={"problems": "first two"},
    )
    assert other.results[0].run_id not in continued and other.results[1].run_id not in continued
    with pytest.raises(ConfigError, match="no problems"):
        compare(
            engine,
            methods=["greedy", "mcts"],
            problems=[],
            components=_components(),
            settings=_settings(),
            out_dir=tmp_path,
        )


def test_ablation_configs_add_one_component_per_row() -> None:
    base = SearchConfig(similarity="edit", rollouts=2)
    rows = ablation_configs(base)
    names = [name for name, _ in rows]
    assert names == [
        "MCTS, all components off",
        "+ adaptive branching",
        "+ similarity filter",
        "+ rollouts",
        "+ PRM",
        "+ ORM",
        "+ arithmetic checker",
    ]
    plain = rows[0][1]
    assert (plain.root_max_children, plain.max_children, plain.branching_alpha) == (3, 2, 0.0)
    assert plain.similarity == "off" and plain.rollouts == 0
    assert (plain.weight_prm, plain.weight_orm, plain.weight_value, plain.weight_tool) == (0, 0, 0, 0)
    configs = dict(rows)
    assert (
        configs["+ adaptive branching"].max_children == 4
        and configs["+ adaptive branching"].similarity == "off"
    )
    assert (
        configs["+ similarity filter"].similarity == "edit" and configs["+ similarity filter"].rollouts == 0
    )
    assert configs["+ rollouts"].rollouts == 2 and configs["+ rollouts"].weight_prm == 0
    assert configs["+ PRM"].weight_prm == 1.0 and configs["+ PRM"].weight_orm == 0
    assert configs["+ ORM"].weight_orm == 1.0 and configs["+ ORM"].weight_tool == 0
    assert rows[-1][1] == base.with_overrides(weight_value=0.0), "the last row is the base (no value head)"
    with_value = ablation_configs(base, value_head=True)
    assert [name for name, _ in with_value][6] == "+ value head"
    assert with_value[5][1].weight_value == 0 and with_value[6][1].weight_value == 1.0
    assert with_value[-1][1] == base
    assert all(
        config.seed == base.seed and config.simulations == base.simulations for _, config in with_value
    )
    verified = SearchConfig(similarity="off", weight_prm=0, weight_orm=0, tool="program", program_votes=2)
    assert [name for name, _ in ablation_configs(verified)] == [
        "MCTS, all components off",
        "+ adaptive branching",
        "+ rollouts",
        "+ program checker",
        "+ programs vote",
    ], "components the base turns off are left out"
    assert ablation_configs(verified)[-1][1] == verified.with_overrides(weight_value=0.0)


def test_run_ablation_evaluates_each_row_and_writes_the_table(engine, tmp_path) -> None:
    settings = _settings()
    everything_on = ablation_configs(settings.search)[-1][1]
    components = _components(config=everything_on)
    report = run_ablation(
        engine, problems=PROBLEMS[:2], settings=settings, components=components, out_dir=tmp_path, png=False
    )
    assert len(report.results) == 7
    with Session(engine) as session:
        runs = session.exec(select(schema.Run).order_by(schema.Run.id)).all()
        filtered = {
            run.id: session.exec(
                select(schema.FilteredOption)
                .join(schema.Tree, schema.Tree.id == schema.FilteredOption.tree_id)
                .where(schema.Tree.run_id == run.id)
            ).all()
            for run in runs
        }
    assert [run.config["meta"]["ablation"] for run in runs] == report.labels
    assert runs[0].config["settings"]["search"]["rollouts"] == 0
    assert all(run.method == "mcts" and run.kind == "eval" for run in runs)
    # One set of components serves every row; each row's weights decide which critics count.
    assert [run.config["meta"]["ablation"] for run in runs][3:5] == ["+ rollouts", "+ PRM"]
    assert [run.critics["prm"]["active"] for run in runs] == [False] * 4 + [True] * 3
    assert [run.critics["orm"]["active"] for run in runs] == [False] * 5 + [True] * 2
    assert not filtered[runs[0].id] and not filtered[runs[1].id], "the filter is off until its row"
    table = (tmp_path / "ablation.md").read_text()
    assert all(f"| {label} |" in table for label in report.labels)
    assert (
        (tmp_path / "ablation.html").exists()
        and report.png is None
        and not (tmp_path / "ablation.png").exists()
    )
    again = run_ablation(
        engine, problems=PROBLEMS[:2], settings=settings, components=components, out_dir=tmp_path, png=False
    )
    assert [result.run_id for result in again.results] == [run.id for run in runs]
    assert all(record.from_store for result in again.results for record in result.records)


def test_runs_stored_with_checkpoints_in_their_search_config_still_resume(engine) -> None:
    """Before ``CriticModels``, a run kept the critics' checkpoints as search settings."""
    result = evaluate(
        engine, method="greedy", problems=PROBLEMS[:1], components=_components(), settings=_settings()
    )
    with Session(engine) as session:
        run = session.get(schema.Run, result.run_id)
        legacy = {**run.config["settings"]["search"], "value_checkpoint": None, "prm_checkpoint": "/old/prm"}
        run.config = {**run.config, "settings": {**run.config["settings"], "search": legacy}}
        run.critics = {name: {"active": True} for name in ("value", "prm", "orm", "tool")}
        session.add(run)
        session.commit()
    old = _components(critic_models=CriticModels(prm="/old/prm"))
    check_resumable(engine, result.run_id, method="greedy", settings=_settings(), components=old)
    assert (
        matching_run(engine, method="greedy", components=old, task="arithmetic", settings=_settings())
        == result.run_id
    )
    assert (
        matching_run(
            engine, method="greedy", components=_components(), task="arithmetic", settings=_settings()
        )
        is None
    )


# -- the command ------------------------------------------------------------------


def _args(*argv: str) -> argparse.Namespace:
    from canopy.eval_cmd import add_eval_parser

    parser = argparse.ArgumentParser(prog="canopy")
    add_eval_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["eval", *argv])


@pytest.fixture
def fake_model(monkeypatch):
    """``cmd_eval`` with the fake policy and critics in place of a loaded model."""
    import engine.api
    import engine.policies

    loaded: list[tuple[str, str]] = []

    def load(model, *, backend="hf", base_url=None):
        loaded.append((model, backend))
        return FakePolicy(name=model)

    def build(config, *, model, critic_models=None, rollout_model=None, policy=None, rollout_policy=None):
        return _components(policy, config, critic_models)

    monkeypatch.setattr(engine.policies, "load_policy", load)
    monkeypatch.setattr(engine.api, "build_components", build)
    return loaded


def test_cmd_eval_json_and_resume(tmp_path, capsys, fake_model) -> None:
    from canopy.eval_cmd import cmd_eval

    db = str(tmp_path / "cli.db")
    common = ["--model", "smollm2-135m", "--n-problems", "3", "--offset", "2", "--db", db, "--json"]
    assert cmd_eval(_args("--method", "self-consistency", "--samples", "3", "--seed", "5", *common)) == 0
    out = json.loads(capsys.readouterr().out)
    assert {"method", "accuracy", "n", "generated_tokens", "seconds", "run_id", "records"} <= out.keys()
    assert out["method"] == "self-consistency" and out["n"] == 3
    assert [record["index"] for record in out["records"]] == [2, 3, 4]
    assert [(r["trajectories"], r["answered"]) for r in out["records"]] == [(3, 3)] * 3
    assert out["answered_share"] == 1.0
    engine = make_engine(db)
    with Session(engine) as session:
        run = session.get(schema.Run, out["run_id"])
        nodes = session.exec(select(schema.Node)).all()
    assert run.config["settings"]["samples"] == 3 and run.config["settings"]["search"]["seed"] == 5
    assert run.config["meta"]["problems"]["offset"] == 2
    assert len(nodes) == 3 * 4

    assert fake_model == [("smollm2-135m", "hf")]
    assert run.config["meta"]["backend"] == {"name": "hf", "base_url": None}
    assert cmd_eval(_args("--resume", str(out["run_id"]), "--db", db, "--json", "--backend", "llamacpp")) == 0
    assert fake_model[-1] == ("smollm2-135m", "hf"), "a resumed run keeps its own backend"
    again = json.loads(capsys.readouterr().out)
    assert again["run_id"] == out["run_id"] and again["accuracy"] == out["accuracy"]
    assert all(record["from_store"] for record in again["records"])


def test_cmd_eval_compare_writes_the_report(tmp_path, capsys, fake_model) -> None:
    from canopy.eval_cmd import cmd_eval

    out_dir = tmp_path / "report"
    argv = [
        "--compare",
        "greedy,best-of-n",
        "--n-problems",
        "2",
        "--db",
        str(tmp_path / "c.db"),
        "--out",
        str(out_dir),
        "--no-png",
    ]
    assert cmd_eval(_args(*argv, "--model", "smollm2-135m")) == 0
    printed = capsys.readouterr().out
    assert "| greedy |" in printed and "| best-of-n |" in printed
    assert (out_dir / "compare.md").exists() and (out_dir / "compare.html").exists()
    assert cmd_eval(_args(*argv, "--model", "smollm2-135m")) == 0
    again = capsys.readouterr()
    assert again.err.count("continuing eval run") == 2, "the same command re-reports the stored runs"
    assert again.out == printed


@pytest.mark.parametrize(
    ("argv", "error", "message"),
    [
        (["--method", "greedy", "--n-problems", "0"], "UsageError", "--n-problems must be >= 1"),
        (["--method", "greedy", "--offset", "-1"], "UsageError", "--offset must be >= 0"),
        (["--compare", "greedy,sampling"], "UsageError", "unknown method"),
        (["--compare", "greedy"], "UsageError", "at least two different methods"),
        (["--method", "greedy", "--samples", "0"], "ConfigError", "samples must be >= 1"),
        (["--method", "mcts", "--simulations", "0"], "ConfigError", "simulations must be >= 1"),
        (["--method", "greedy", "--model", "no-such-model"], "ModelError", "unknown model"),
        (
            ["--method", "greedy", "--task", "arithmetic", "--data", "x.jsonl"],
            "TaskError",
            "takes no data path",
        ),
        (["--resume", "42"], "RunNotResumable", "no run with id 42"),
    ],
)
def test_cmd_eval_bad_input_raises_the_project_errors(tmp_path, fake_model, argv, error, message) -> None:
    from canopy.eval_cmd import cmd_eval

    with pytest.raises(Exception, match=message) as caught:
        cmd_eval(_args(*argv, "--db", str(tmp_path / "bad.db")))
    assert type(caught.value).__name__ == error
    assert "\n" not in str(caught.value)


@pytest.mark.slow
def test_smollm2_greedy_and_self_consistency_smoke(tmp_path) -> None:
    from engine.api import build_components
    from engine.tasks import load_problems

    config = SearchConfig(similarity="off", weight_prm=0, weight_orm=0, weight_tool=0)
    components = build_components(config, model="smollm2-135m")
    engine = make_engine(f"sqlite:///{tmp_path / 'smoke.db'}")
    problems = load_problems("arithmetic", count=2)
    settings = EvalSettings(samples=2, max_tokens=8, search=config)
    first = evaluate(engine, method="greedy", problems=problems, components=components, settings=settings)
    again = evaluate(engine, method="greedy", problems=problems[:1], components=components, settings=settings)
    sampled = evaluate(
        engine, method="self-consistency", problems=problems, components=components, settings=settings
    )
    assert first.n == sampled.n == 2
    assert 0 < first.generated_tokens <= 8 and 0 < sampled.generated_tokens <= 16
    assert first.prefill_tokens > 0
    _, first_trees, first_nodes = _rows(engine, first.run_id)
    _, _, again_nodes = _rows(engine, again.run_id)
    [first_texts, *_] = [[node.option_text for node in rows] for rows in first_nodes.values()]
    [again_texts] = [[node.option_text for node in rows] for rows in again_nodes.values()]
    assert first_texts == again_texts and first_texts[1], "greedy is deterministic"
    _, sampled_trees, sampled_nodes = _rows(engine, sampled.run_id)
    assert all(len(rows) == 3 for rows in sampled_nodes.values())
    assert all(tree.status == "completed" for tree in first_trees + sampled_trees)


def test_cmd_eval_ablation_and_mcts(tmp_path, capsys, fake_model) -> None:
    from canopy.eval_cmd import cmd_eval

    db = str(tmp_path / "a.db")
    common = ["--model", "smollm2-135m", "--n-problems", "1", "--simulations", "3", "--db", db, "--json"]
    assert (
        cmd_eval(_args("--ablation", "--out", str(tmp_path), "--no-png", "--similarity", "edit", *common))
        == 0
    )
    report = json.loads(capsys.readouterr().out)
    assert [row["label"] for row in report["results"]][:2] == [
        "MCTS, all components off",
        "+ adaptive branching",
    ]
    assert all(row["method"] == "mcts" and row["n"] == 1 for row in report["results"])
    assert report["png"] is None and report["table"].endswith("ablation.md")
    assert cmd_eval(_args("--method", "mcts", *common)) == 0
    result = json.loads(capsys.readouterr().out)
    with Session(make_engine(db)) as session:
        tree = session.get(schema.Tree, result["records"][0]["tree_id"])
    assert tree.simulations_done == 3 and tree.node_count > 1


def test_canopy_eval_bad_input_through_the_real_command(tmp_path) -> None:
    import subprocess
    import sys

    db = tmp_path / "cli.db"
    for argv, message in (
        (["--method", "greedy", "--n-problems", "0"], "canopy: error: --n-problems must be >= 1, got 0\n"),
        (["--resume", "5"], "canopy: error: no run with id 5 in this database (see `canopy trees`)\n"),
    ):
        done = subprocess.run(
            [sys.executable, "-m", "canopy", "eval", *argv, "--db", str(db)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert (done.returncode, done.stderr, done.stdout) == (2, message, "")


def test_eval_cmd_imports_on_its_own() -> None:
    import subprocess
    import sys

    code = "import canopy.eval_cmd, canopy.cli; assert 'eval' in canopy.cli.make_parser().format_help()"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_best_of_n_after_self_consistency_reranks_its_samples(engine, tmp_path) -> None:
    policy = FakePolicy()
    components = _components(policy, _settings().search)
    report = compare(
        engine,
        methods=["self-consistency", "best-of-n"],
        problems=PROBLEMS[:2],
        components=components,
        settings=_settings(),
        out_dir=tmp_path,
        png=False,
    )
    sampled, reranked = report.results
    assert [call for call in policy.calls if call[0] == "complete"] == [("complete", 4)] * 2, (
        "only self-consistency drew samples"
    )
    _, _, sc_nodes = _rows(engine, sampled.run_id)
    _, _, bon_nodes = _rows(engine, reranked.run_id)
    assert [[n.option_text for n in rows] for rows in sc_nodes.values()] == [
        [n.option_text for n in rows] for rows in bon_nodes.values()
    ]
    assert [r.generated_tokens for r in reranked.records] == [r.generated_tokens for r in sampled.records]
    assert all(n.orm_score is not None for rows in bon_nodes.values() for n in rows if n.parent_index >= 0)
    with Session(engine) as session:
        assert session.get(schema.Run, reranked.run_id).config["meta"]["samples_from_run"] == sampled.run_id


def test_best_of_n_keeps_its_orm_when_the_search_turns_the_orm_off(tmp_path, capsys, fake_model) -> None:
    from canopy.eval_cmd import cmd_eval

    db = str(tmp_path / "orm.db")
    argv = ["--compare", "greedy,best-of-n,mcts", "--n-problems", "1", "--simulations", "3", "--db", db]
    argv += ["--weight-orm", "0", "--out", str(tmp_path / "report"), "--no-png", "--json"]
    assert cmd_eval(_args(*argv)) == 0
    report = json.loads(capsys.readouterr().out)
    best, search = report["results"][1], report["results"][2]
    with Session(make_engine(db)) as session:
        best_tree = session.get(schema.Tree, best["records"][0]["tree_id"])
        search_run = session.get(schema.Run, search["run_id"])
    assert "orm" in best_tree.answers, "best-of-N reranked with the ORM"
    assert (
        search_run.critics["orm"]["active"] is False
        and search_run.config["settings"]["search"]["weight_orm"] == 0
    )


def test_eval_starts_from_the_tasks_settings(tmp_path, capsys, fake_model) -> None:
    from canopy.eval_cmd import cmd_eval
    from engine.defaults import eval_defaults, search_defaults

    db = str(tmp_path / "defaults.db")
    assert cmd_eval(_args("--method", "greedy", "--n-problems", "1", "--db", db, "--json")) == 0
    run_id = json.loads(capsys.readouterr().out)["run_id"]
    assert (
        cmd_eval(_args("--method", "greedy", "--n-problems", "1", "--db", db, "--json", "--programs", "3"))
        == 0
    )
    flagged = json.loads(capsys.readouterr().out)["run_id"]
    with Session(make_engine(db)) as session:
        stored = session.get(schema.Run, run_id).config["settings"]
        overridden = session.get(schema.Run, flagged).config["settings"]["search"]
    expected = SearchConfig.from_dict(search_defaults("arithmetic")).to_dict()
    assert stored["search"] == expected and stored["max_tokens"] == eval_defaults("arithmetic")["max_tokens"]
    assert overridden["programs"] == 3 and overridden["tool"] == expected["tool"], "flags win over the task's"
