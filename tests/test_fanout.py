"""``--workers N``: ``canopy eval``'s and the improve loop's problems fanned out
to Ray actors (``engine/fanout.py``).

The actors run the fake policy and critics (``tests/fakes.py``), built in each
actor's own process (Ray's worker setup hook stands them in for the models a
command loads); one slow test runs smollm2-135m behind a real OpenAI-compatible
server that two workers share. The tests that need Ray skip when the optional
``[cluster]`` extra is not installed; the command-line checks that need no Ray
(``--workers 0``, Ray missing) run everywhere.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
from dataclasses import replace
from functools import partial

import pytest
from sqlmodel import Session, select

from engine.baselines import EvalSettings
from engine.config import SearchConfig
from engine.evaluate import evaluate
from engine.types import Problem
from store import schema
from store.db import make_engine
from tests.fakes import FakePolicy, fake_components
from tests.test_backend_openai import needs_server, server  # noqa: F401 (the server fixture)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PROBLEMS = [
    Problem(
        question=f"Tom has 3 apples and buys 4 more ({i}). How many apples?",
        answer="7",
        task="arithmetic",
        index=i,
    )
    for i in range(5)
]
NO_RAY = "Ray is optional (the [cluster] extra): pip install -e '.[cluster]'"
SETTINGS = EvalSettings(samples=3, search=SearchConfig(simulations=5, seed=3, similarity="edit", rollouts=1))


class DyingPolicy(FakePolicy):
    """A ``FakePolicy`` whose process kills itself (SIGKILL, as ``kill -9``) at its
    second proposal, mid-problem, once over all processes: the first to create
    ``marker`` dies, so exactly one worker is lost."""

    def __init__(self, marker: str) -> None:
        super().__init__()
        self.marker = marker
        self.proposals = 0

    def propose(self, state, **kwargs):
        self.proposals += 1
        if self.proposals == 2:
            try:
                os.close(os.open(self.marker, os.O_CREAT | os.O_EXCL))
            except FileExistsError:
                pass
            else:
                os.kill(os.getpid(), signal.SIGKILL)
        return super().propose(state, **kwargs)


def dying_components(marker: str):
    """What a worker loads: the fake components around a ``DyingPolicy``."""
    return fake_components(DyingPolicy(marker), SETTINGS.search)


def use_fake_models() -> None:
    """The fake policy and critics in place of loaded models, in this process:
    what the ``fake_models`` fixture does here and Ray's setup hook in every worker."""
    import engine.api
    import engine.policies

    def load(model, *, backend="hf", base_url=None):
        return FakePolicy(name=model)

    def build(config, *, model, critic_models=None, rollout_model=None, policy=None, rollout_policy=None):
        return fake_components(policy, config, critic_models)

    engine.policies.load_policy = load
    engine.api.build_components = build


@pytest.fixture
def fake_models(monkeypatch):
    import engine.api
    import engine.policies

    monkeypatch.setattr(engine.policies, "load_policy", engine.policies.load_policy)
    monkeypatch.setattr(engine.api, "build_components", engine.api.build_components)
    use_fake_models()


@pytest.fixture(scope="module")
def local_ray():
    """Ray started once for the module (a pool reuses a connection it finds);
    its workers load the fake models where a command would load real ones."""
    ray = pytest.importorskip("ray", reason=NO_RAY)
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        logging_level="ERROR",
        # The hook is pickled by reference to this module, so the workers
        # must find `tests` on their path wherever the checkout lies.
        runtime_env={
            "worker_process_setup_hook": use_fake_models,
            "env_vars": {"PYTHONPATH": os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")]))},
        },
    )
    yield ray
    ray.shutdown()


def _answers(result) -> list[tuple]:
    return [
        (record.index, record.answer, record.correct, record.generated_tokens, record.trajectories)
        for record in result.records
    ]


def _tree_texts(engine, run_id: int) -> dict[int, list[str]]:
    """Each problem's stored option texts, in node order, by problem index."""
    with Session(engine) as session:
        trees = session.exec(select(schema.Tree).where(schema.Tree.run_id == run_id)).all()
        out = {}
        for tree in trees:
            problem = session.get(schema.Problem, tree.problem_id)
            nodes = session.exec(
                select(schema.Node).where(schema.Node.tree_id == tree.id).order_by(schema.Node.index)
            ).all()
            assert problem.index not in out, "one tree per problem"
            out[problem.index] = [node.option_text for node in nodes]
    return out


@pytest.mark.parametrize("method", ["mcts", "self-consistency"])
def test_two_workers_give_the_sequential_results(db_url, local_ray, method) -> None:
    from engine.fanout import WorkerPool, evaluate_on_workers

    engine = make_engine(db_url)
    alone = evaluate(
        engine,
        method=method,
        problems=PROBLEMS,
        components=fake_components(None, SETTINGS.search),
        settings=SETTINGS,
    )
    seen = []
    build = partial(fake_components, None, SETTINGS.search)
    with WorkerPool(database_url=db_url, build_components=build, workers=2) as pool:
        fanned = evaluate_on_workers(
            pool,
            method=method,
            problems=PROBLEMS,
            settings=SETTINGS,
            on_problem=lambda record, done, total: seen.append((done, total)),
        )
    assert _answers(fanned) == _answers(alone)
    assert _tree_texts(engine, fanned.run_id) == _tree_texts(engine, alone.run_id)
    assert sorted(seen) == [(done, len(PROBLEMS)) for done in range(1, len(PROBLEMS) + 1)]
    assert (fanned.accuracy, fanned.model, fanned.n) == (alone.accuracy, alone.model, alone.n)
    with Session(engine) as session:
        run = session.get(schema.Run, fanned.run_id)
    assert (run.status, run.pid, run.method) == ("completed", os.getpid(), method)


def test_a_killed_workers_problem_is_finished_by_another_exactly_once(db_url, local_ray, tmp_path) -> None:
    from engine.fanout import WorkerPool, evaluate_on_workers

    engine = make_engine(db_url)
    alone = evaluate(
        engine,
        method="mcts",
        problems=PROBLEMS,
        components=fake_components(None, SETTINGS.search),
        settings=SETTINGS,
    )
    marker = tmp_path / "died"
    build = partial(dying_components, str(marker))
    with WorkerPool(database_url=db_url, build_components=build, workers=2) as pool:
        fanned = evaluate_on_workers(pool, method="mcts", problems=PROBLEMS, settings=SETTINGS)
    assert marker.exists(), "a worker was killed mid-problem"
    assert _answers(fanned) == _answers(alone)
    assert _tree_texts(engine, fanned.run_id) == _tree_texts(engine, alone.run_id)
    with Session(engine) as session:
        trees = session.exec(select(schema.Tree).where(schema.Tree.run_id == fanned.run_id)).all()
    assert len(trees) == len(PROBLEMS) and {tree.status for tree in trees} == {"completed"}
    assert all(tree.simulations_done == SETTINGS.search.simulations for tree in trees)


def test_a_request_the_workers_refuse_raises_their_error_here(local_ray, tmp_path) -> None:
    from engine.config import ConfigError
    from engine.fanout import WorkerPool, evaluate_on_workers

    search = replace(SETTINGS.search, weight_prm=0.0)
    settings = replace(SETTINGS, search=search)
    build = partial(fake_components, None, search)
    database_url = f"sqlite:///{tmp_path / 'refused.db'}"
    with WorkerPool(database_url=database_url, build_components=build, workers=1) as pool:
        with pytest.raises(ConfigError, match="beam search is PRM-guided"):
            evaluate_on_workers(pool, method="beam", problems=PROBLEMS, settings=settings)
    with Session(make_engine(database_url)) as session:
        assert session.exec(select(schema.Run)).all() == []


def test_a_worker_that_cannot_load_its_model_is_one_line(local_ray, tmp_path) -> None:
    from engine.errors import WorkerError
    from engine.fanout import WorkerPool

    build = partial(fake_components, None, "not a config")
    with pytest.raises(WorkerError, match="a worker could not start: AttributeError") as caught:
        with WorkerPool(database_url=f"sqlite:///{tmp_path / 'w.db'}", build_components=build, workers=1):
            pass
    assert "\n" not in str(caught.value)


def test_cmd_eval_on_two_workers_and_its_resume(local_ray, fake_models, tmp_path, capsys) -> None:
    from canopy.eval_cmd import cmd_eval

    db = str(tmp_path / "cli.db")
    flags = ["--method", "mcts", "--model", "smollm2-135m", "--n-problems", "3", "--simulations", "3"]
    flags += ["--similarity", "edit", "--db", db, "--json"]
    assert cmd_eval(_args(*flags)) == 0
    alone = json.loads(capsys.readouterr().out)
    assert cmd_eval(_args(*flags, "--workers", "2")) == 0
    fanned = json.loads(capsys.readouterr().out)
    assert fanned["run_id"] != alone["run_id"]
    assert [(r["answer"], r["generated_tokens"]) for r in fanned["records"]] == [
        (r["answer"], r["generated_tokens"]) for r in alone["records"]
    ]
    engine = make_engine(db)
    assert _tree_texts(engine, fanned["run_id"]) == _tree_texts(engine, alone["run_id"])
    assert cmd_eval(_args("--resume", str(fanned["run_id"]), "--db", db, "--json", "--workers", "2")) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["run_id"] == fanned["run_id"] and all(r["from_store"] for r in again["records"])


def test_compare_and_ablation_on_two_workers_equal_one_process(local_ray, fake_models, tmp_path, capsys):
    from canopy.eval_cmd import cmd_eval

    flags = ["--model", "smollm2-135m", "--n-problems", "2", "--simulations", "2", "--similarity", "edit"]
    flags += ["--no-png", "--json"]
    reports = {}
    for what in (["--compare", "greedy,self-consistency,best-of-n,mcts", "--samples", "3"], ["--ablation"]):
        for workers in ("1", "2"):
            db = str(tmp_path / f"{what[0]}-{workers}.db")
            out = str(tmp_path / f"{what[0]}-{workers}")
            assert cmd_eval(_args(*what, *flags, "--workers", workers, "--db", db, "--out", out)) == 0
            report = json.loads(capsys.readouterr().out)
            reports[what[0], workers] = [
                (row["label"], [(r["answer"], r["generated_tokens"]) for r in row["records"]])
                for row in report["results"]
            ]
    assert reports["--compare", "1"] == reports["--compare", "2"]
    assert reports["--ablation", "1"] == reports["--ablation", "2"]
    assert len(reports["--ablation", "2"]) > 2


def test_improve_search_and_evaluation_on_two_workers(local_ray, fake_models, tmp_path) -> None:
    from store.iterations import Checkpoints, IterationMetrics
    from store.queries import create_iteration
    from training.improve_config import ImproveConfig, eval_set
    from training.improve_stages import IterationContext, evaluate_held_out, search_training_problems

    engine = make_engine(f"sqlite:///{tmp_path / 'improve.db'}")
    config = ImproveConfig(
        model="smollm2-135m",
        checkpoints=str(tmp_path),
        train_problems=3,
        eval_problems=3,
        search=SearchConfig(simulations=3, seed=2, similarity="edit"),
    )
    outcomes = []
    for workers in (1, 2):
        metrics = IterationMetrics(config=config.to_dict(), round=1, checkpoints=Checkpoints(policy="p"))
        iteration = create_iteration(engine, name=f"w{workers}", model="p", parent_id=None, metrics=metrics)
        context = IterationContext(
            engine=engine,
            config=config,
            iteration_id=iteration,
            round_number=1,
            held_out=eval_set(config),
            log=lambda line: None,
            workers=workers,
        )
        search_training_problems(context)
        evaluate_held_out(context, method="mcts")
        metrics = context.metrics()
        runs = {key: _tree_texts(engine, run_id) for key, run_id in metrics.runs.items()}
        outcomes.append((metrics.train_search, metrics.accuracy, metrics.tokens, runs))
    assert outcomes[0] == outcomes[1]
    assert set(outcomes[1][3]) == {"search", "eval_mcts"} and len(outcomes[1][3]["search"]) == 3


def _canopy(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "canopy", *argv], capture_output=True, text=True, timeout=120, check=False
    )


def test_an_unreachable_ray_address_is_one_line_and_nothing_is_written(local_ray, tmp_path) -> None:
    db = tmp_path / "cli.db"
    model = ["--model", "smollm2-135m", "--db", str(db)]
    for command in (
        ["eval", "--method", "greedy", "--n-problems", "2", "--workers", "2"],
        ["improve", "--iterations", "1"],
    ):
        done = _canopy(*command, *model, "--ray-address", "127.0.0.1:1")
        assert done.returncode == 2 and done.stdout == ""
        assert done.stderr.startswith("canopy: error: unreachable Ray address 127.0.0.1:1 (")
        assert "ray start --head --port 1" in done.stderr and done.stderr.count("\n") == 1
        assert not db.exists()
    done = _canopy("eval", "--method", "greedy", *model, "--ray-address", "nowhere")
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == "canopy: error: --ray-address must be auto or HOST:PORT, got 'nowhere'\n"
    done = _canopy("improve", *model, "--workers", "0")
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == "canopy: error: --workers must be >= 1, got 0\n"
    assert not db.exists()


def _args(*argv: str) -> argparse.Namespace:
    from canopy.eval_cmd import add_eval_parser

    parser = argparse.ArgumentParser(prog="canopy")
    add_eval_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["eval", *argv])


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--method", "greedy", "--workers", "0"], "--workers must be >= 1, got 0"),
    ],
)
def test_bad_worker_flags_are_refused_before_anything_is_written(tmp_path, argv, message) -> None:
    from canopy.errors import CanopyError
    from canopy.eval_cmd import cmd_eval

    db = tmp_path / "bad.db"
    with pytest.raises(CanopyError, match=message):
        cmd_eval(_args(*argv, "--model", "smollm2-135m", "--n-problems", "1", "--db", str(db)))
    assert not db.exists()


def test_workers_without_ray_name_the_extra(tmp_path, monkeypatch) -> None:
    from canopy.eval_cmd import cmd_eval
    from engine.errors import WorkerError

    monkeypatch.setitem(sys.modules, "ray", None)
    db = tmp_path / "no-ray.db"
    with pytest.raises(WorkerError, match=r"need Ray: pip install -e '\.\[cluster\]'"):
        cmd_eval(_args("--method", "greedy", "--model", "smollm2-135m", "--workers", "2", "--db", str(db)))
    assert not db.exists()


def test_one_worker_never_imports_ray() -> None:
    code = (
        "import sys, canopy.eval_cmd, engine.evaluate; "
        "assert 'ray' not in sys.modules and 'engine.fanout' not in sys.modules"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


@pytest.mark.slow
@needs_server
def test_two_workers_share_one_openai_server_as_one_process_does(server, tmp_path) -> None:  # noqa: F811
    """smollm2-135m served once by llama.cpp's OpenAI-compatible server; two
    workers (each with its own client and tokenizer) send it their problems."""
    pytest.importorskip("ray", reason=NO_RAY)
    flags = ["--method", "greedy", "--model", "smollm2-135m", "--n-problems", "3", "--max-tokens", "24"]
    flags += ["--backend", "openai", "--base-url", server, "--json"]
    alone = _canopy("eval", *flags, "--db", f"{tmp_path / 'one.db'}")
    fanned = _canopy("eval", *flags, "--workers", "2", "--db", f"{tmp_path / 'two.db'}")
    assert alone.returncode == fanned.returncode == 0, fanned.stderr[-2000:]
    runs = [json.loads(done.stdout) for done in (alone, fanned)]
    answers = [[(r["index"], r["answer"], r["generated_tokens"]) for r in run["records"]] for run in runs]
    assert answers[0] == answers[1]
    texts = [_tree_texts(make_engine(f"sqlite:///{tmp_path / name}"), 1) for name in ("one.db", "two.db")]
    assert texts[0] == texts[1] and all(nodes[1] for nodes in texts[1].values())
