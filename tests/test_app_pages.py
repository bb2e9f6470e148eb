"""Every page of the app under ``streamlit.testing.v1.AppTest`` on a seeded store,
plus the bad-input cases: missing, empty and older-schema databases, a failed run,
a one-node tree, long/Unicode/Markdown/HTML model text."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from dataclasses import fields
from pathlib import Path

import pytest
from sqlmodel import Session, select
from streamlit.testing.v1 import AppTest

from app.jobs import Job
from store.db import make_engine
from store.schema import Node, Problem, Run, Tree
from tests.app_fixtures import (
    LONG_OPTION,
    MARKDOWN_OPTION,
    SCRIPT_OPTION,
    SeedInfo,
    grow_tree,
    make_old_schema_db,
    seed_database,
    utcnow,
)

ROOT = Path(__file__).resolve().parent.parent
MAIN = str(ROOT / "app" / "main.py")
PAGES = [
    "views/home.py",
    "views/search.py",
    "views/trees.py",
    "views/find.py",
    "views/critics.py",
    "views/labels.py",
    "views/improve.py",
    "views/rounds.py",
    "views/data.py",
]


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> SeedInfo:
    return seed_database(tmp_path_factory.mktemp("store") / "seeded.db")


@pytest.fixture
def use_db(monkeypatch: pytest.MonkeyPatch):
    def use(url: str) -> None:
        monkeypatch.setenv("CANOPY_DB", url)

    return use


def open_page(page: str, *, state: dict | None = None, query: dict | None = None) -> AppTest:
    app = AppTest.from_file(MAIN, default_timeout=60)
    for key, value in (state or {}).items():
        app.session_state[key] = value
    for name, value in (query or {}).items():
        app.query_params[name] = value
    app.run()
    if page != "views/home.py":
        app.switch_page(page)
        app.run()
    return app


def texts(app: AppTest, kind: str) -> list[str]:
    return [str(element.value) for element in getattr(app, kind)]


def assert_clean(app: AppTest) -> None:
    assert not app.exception, [e.value for e in app.exception]
    assert not any("problem it could not handle" in t for t in texts(app, "error")), texts(app, "code")


@pytest.mark.parametrize("page", PAGES)
def test_every_page_renders_on_seeded_store(seeded: SeedInfo, use_db, page: str) -> None:
    use_db(seeded.url)
    app = open_page(page)
    assert_clean(app)
    assert app.title, "each page has a title"


@pytest.fixture(scope="module")
def seeded_postgres(postgres) -> SeedInfo:
    return seed_database(url=postgres.database())


@pytest.mark.parametrize("page", PAGES)
def test_every_page_renders_on_a_postgresql_store(seeded_postgres: SeedInfo, use_db, page: str) -> None:
    use_db(seeded_postgres.url)
    app = open_page(page)
    assert_clean(app)
    assert app.title and not texts(app, "error"), page
    if page == "views/home.py":
        metrics = {m.label: m.value for m in app.metric}
        assert (metrics["Runs"], metrics["Trees"]) == ("4", "5")
    if page == "views/trees.py":
        assert max(len(frame.value) for frame in app.dataframe) >= 2


def test_home_shows_runs_and_demo_button(seeded: SeedInfo, use_db) -> None:
    use_db(seeded.url)
    app = open_page("views/home.py")
    metrics = {m.label: m.value for m in app.metric}
    assert metrics["Runs"] == "4"
    assert metrics["Trees"] == "5"
    assert any(b.label == "Run a demo search" for b in app.button)
    runs = app.dataframe[0].value
    states = set(runs["shown_state"])
    assert "⚠ stopped (no heartbeat)" in states and "✗ failed" in states


@pytest.mark.parametrize("page", PAGES)
def test_missing_database_gives_a_message(tmp_path: Path, use_db, page: str) -> None:
    use_db(f"sqlite:///{tmp_path / 'nothing.db'}")
    app = open_page(page)
    assert_clean(app)
    shown = " ".join(texts(app, "error") + texts(app, "info") + texts(app, "warning"))
    if page in ("views/search.py", "views/improve.py"):
        return  # these pages still offer to start work, which creates the database
    assert "no database at" in shown


@pytest.mark.parametrize("kind", ["empty", "old"])
def test_unusable_database_gives_the_store_message(tmp_path: Path, use_db, kind: str) -> None:
    path = tmp_path / f"{kind}.db"
    if kind == "empty":
        path.touch()
        expected = "the database is empty"
    else:
        make_old_schema_db(path)
        expected = "older Canopy"
    use_db(f"sqlite:///{path}")
    for page in ("views/home.py", "views/trees.py", "views/critics.py", "views/data.py"):
        app = open_page(page)
        assert_clean(app)
        assert any(expected in t for t in texts(app, "error") + texts(app, "info")), page


def test_a_schema_1_store_is_named_for_upgrade_then_read_whole(tmp_path: Path, use_db) -> None:
    """Before ``canopy db upgrade`` the pages say how to upgrade; after it they
    show the old store's runs and trees."""
    import shutil

    from store.db import upgrade

    path = tmp_path / "schema1.db"
    shutil.copy(ROOT / "tests" / "data" / "store_schema_1.db", path)
    use_db(f"sqlite:///{path}")
    app = open_page("views/trees.py")
    assert_clean(app)
    assert any("canopy db upgrade --db" in t for t in texts(app, "error") + texts(app, "info"))
    upgrade(make_engine(str(path), create=False, check=False))
    with Session(make_engine(str(path), create=False)) as session:
        tree_count = len(session.exec(select(Tree)).all())
    for page in ("views/home.py", "views/trees.py", "views/critics.py", "views/data.py"):
        app = open_page(page)
        assert_clean(app)
        assert not texts(app, "error"), page
    app = open_page("views/trees.py")  # the newest tree of the old store, node by node
    assert tree_count == 5 and "#### Node 0" in texts(app, "markdown")
    assert max(len(frame.value) for frame in app.dataframe) >= 9


def node_with_text(url: str, tree_id: int, text: str) -> int:
    with Session(make_engine(url, create=False)) as session:
        return session.exec(
            select(Node.index).where(Node.tree_id == tree_id, Node.option_text == text)
        ).first()


def test_trees_node_detail_shows_everything(seeded: SeedInfo, use_db) -> None:
    use_db(seeded.url)
    tree_id = seeded.tree_ids["a1"]
    index = node_with_text(seeded.url, tree_id, LONG_OPTION)
    assert index is not None
    app = open_page("views/trees.py", state={"focus": {"tree_id": tree_id, "node": index}})
    assert_clean(app)
    codes = texts(app, "code")
    assert LONG_OPTION in codes, "the 200-character option is shown whole"
    assert any(c.startswith("Q: A farmer has 12 apples") and LONG_OPTION.rstrip() in c for c in codes), (
        "whole path"
    )
    labels = {m.label for m in app.metric}
    assert {"Visits", "Q", "Prior", "Children"} <= labels
    frames = [d.value for d in app.dataframe]
    critics = next(f for f in frames if "critic" in f.columns)
    assert [name.split(":")[0] for name in critics["critic"]] == ["Value", "PRM", "ORM", "Tool", "Combined"]
    assert any("completion" in f.columns for f in frames), "rollouts table"
    checks = next(f for f in frames if "result" in f.columns)
    assert list(checks["result"].fillna("none")) == ["15", "23", "none"]
    assert list(checks["status"]) == ["ok", "ok", "error"]
    assert "Import not supported" in checks["error"].iloc[2], "the interpreter's message is shown"
    assert any(c.startswith("Program checker: 3 programs") for c in texts(app, "caption"))
    assert any(c.startswith("apples = 12 + 7 - 4") for c in texts(app, "code")), "each program's code"


def test_filtered_siblings_listed_with_similarity(seeded: SeedInfo, use_db) -> None:
    use_db(seeded.url)
    tree_id = seeded.tree_ids["a1"]
    with Session(make_engine(seeded.url, create=False)) as session:
        from store.schema import FilteredOption

        option = session.exec(select(FilteredOption).where(FilteredOption.tree_id == tree_id)).first()
    app = open_page("views/trees.py", state={"focus": {"tree_id": tree_id, "node": option.parent_index}})
    assert_clean(app)
    tables = [d.value for d in app.dataframe if "filtered text" in d.value.columns]
    assert tables, "filtered siblings table"
    table = tables[0]
    assert option.text in set(table["filtered text"])
    assert option.collided_with_index in set(table["collided with node"])


def test_model_text_is_never_markdown(seeded: SeedInfo, use_db) -> None:
    use_db(seeded.url)
    tree_id = seeded.tree_ids["stale"]
    for text in (SCRIPT_OPTION, MARKDOWN_OPTION):
        index = node_with_text(seeded.url, tree_id, text)
        if index is None:
            continue
        app = open_page("views/trees.py", state={"focus": {"tree_id": tree_id, "node": index}})
        assert_clean(app)
        assert text in texts(app, "code")
        rendered = texts(app, "markdown") + texts(app, "caption") + texts(app, "error") + texts(app, "info")
        assert not any(text in r for r in rendered)
        assert not any("<script>" in r for r in rendered)


def test_one_node_tree_and_failed_run(seeded: SeedInfo, use_db) -> None:
    use_db(seeded.url)
    app = open_page("views/trees.py", state={"focus": {"tree_id": seeded.tree_ids["failed"], "node": 0}})
    assert_clean(app)
    assert any("only its root" in t for t in texts(app, "info"))
    assert any("This run failed" in t for t in texts(app, "error"))
    assert any("policy crashed at simulation 3" in c for c in texts(app, "code"))


def test_trees_replay_plays_to_the_end_and_stops(seeded: SeedInfo, use_db) -> None:
    use_db(seeded.url)
    tree_id = seeded.tree_ids["a1"]
    app = open_page("views/trees.py", state={"focus": {"tree_id": tree_id, "node": 0}})
    app.toggle(key=f"trees.replay.{tree_id}").set_value(True).run()
    slider = app.slider(key=f"trees.sim.{tree_id}")
    last = slider.max
    assert slider.value == last > 2, "the replay opens on the finished tree"
    slider.set_value(last - 2).run()
    assert_clean(app)
    assert app.slider(key=f"trees.sim.{tree_id}").value == last - 2
    app.button(key=f"trees.playing.{tree_id}.button").click().run()  # AppTest follows the reruns
    assert_clean(app)
    assert app.slider(key=f"trees.sim.{tree_id}").value == last, "played on to the last simulation"
    assert app.session_state[f"trees.playing.{tree_id}"] is False, "and stopped there"
    assert [b.label for b in app.button if b.key == f"trees.playing.{tree_id}.button"] == ["Play"]


def test_trees_filters_and_compare(seeded: SeedInfo, use_db) -> None:
    use_db(seeded.url)
    app = open_page("views/trees.py")
    app.multiselect(key="trees.f.result").set_value(["wrong"]).run()
    assert_clean(app)
    options = app.selectbox(key="trees.tree").options
    assert options and all("wrong" in o for o in options)
    problem = app.selectbox(key="trees.cmp.problem")
    assert problem.options[0].startswith("2 tree(s)") or "wrong" in options[0]


def test_critics_page_disagreement_and_calibration(seeded: SeedInfo, use_db) -> None:
    use_db(seeded.url)
    app = open_page("views/critics.py")
    assert_clean(app)
    table = next(d.value for d in app.dataframe if "gap" in d.value.columns)
    assert list(table["gap"]) == sorted(table["gap"], reverse=True)
    calibration = next(d.value for d in app.dataframe if "critic" in d.value.columns)
    assert {"precision", "recall", "brier"} <= set(calibration.columns)
    app.selectbox(key="critics.x").set_value("orm").run()
    assert_clean(app)


def test_critics_row_opens_node_in_trees(seeded: SeedInfo, use_db) -> None:
    use_db(seeded.url)
    app = open_page("views/critics.py", state={"critics.open": (seeded.tree_ids["b1"], 3)})
    assert_clean(app)
    assert app.title[0].value == "Trees"
    assert app.session_state["selected_nodes"][seeded.tree_ids["b1"]] == 3


def test_a_link_opens_the_same_tree_node_colouring_and_filters(seeded: SeedInfo, use_db) -> None:
    use_db(seeded.url)
    tree_id = seeded.tree_ids["b1"]
    app = open_page("views/trees.py", query={"tree": str(tree_id), "node": "3", "color": "q", "run": ""})
    assert_clean(app)
    assert app.selectbox(key="trees.tree").value == tree_id
    assert app.session_state["selected_nodes"][tree_id] == 3
    assert app.session_state["trees.color"] == "q"
    assert "#### Node 3" in texts(app, "markdown")
    shown = dict(app.query_params)  # the page writes its state back: this is the link to copy
    assert {
        k: shown[k][0] if isinstance(shown[k], list) else shown[k] for k in ("tree", "node", "color")
    } == {
        "tree": str(tree_id),
        "node": "3",
        "color": "q",
    }
    app.selectbox(key="trees.tree").select(seeded.tree_ids["a1"]).run()  # a new selection, a new link
    now = app.query_params["tree"]
    assert (now[0] if isinstance(now, list) else now) == str(seeded.tree_ids["a1"])


def test_a_bad_link_is_ignored_not_an_error(seeded: SeedInfo, use_db) -> None:
    use_db(seeded.url)
    app = open_page(
        "views/trees.py", query={"tree": "abc", "node": "-", "color": "<script>", "tab": "x", "run": "1,z"}
    )
    assert_clean(app)
    assert not texts(app, "error") and app.session_state["trees.color"] == "combined"
    app = open_page("views/find.py", query={"q": "fruits remain"})
    assert_clean(app)
    assert app.text_input(key="find.query").value == "fruits remain"
    assert any("**fruits** **remain**" in line for line in texts(app, "markdown"))


def test_critics_and_data_views_have_links(seeded: SeedInfo, use_db) -> None:
    use_db(seeded.url)
    run = seeded.run_ids["b"]
    app = open_page("views/critics.py", query={"run": str(run), "x": "prm", "y": "orm", "threshold": "0.7"})
    assert_clean(app)
    assert not app.warning, [w.value for w in app.warning]  # no "default and Session State" clash
    assert app.session_state["critics.runs"] == [run] and app.session_state["critics.threshold"] == 0.7
    assert (app.session_state["critics.x"], app.session_state["critics.y"]) == ("prm", "orm")
    bad = open_page("views/critics.py", query={"run": "999,x", "x": "bogus", "threshold": "high"})
    assert_clean(bad)
    assert not bad.warning and bad.session_state["critics.x"] != "bogus"
    wanted = ",".join(str(i) for i in seeded.iteration_ids)
    app = open_page("views/data.py", query={"kind": "sft", "iteration": f"{wanted},none"})
    assert_clean(app)
    chosen = app.session_state["data.iterations"]  # the ones the store's examples have
    assert app.session_state["data.kinds"] == ["sft"] and chosen and set(chosen) <= set(seeded.iteration_ids)


def test_trees_page_offers_the_tree_as_json_and_svg(seeded: SeedInfo, use_db) -> None:
    use_db(seeded.url)
    app = open_page("views/trees.py")
    assert_clean(app)
    labels = {element.proto.label for element in app.get("download_button")}
    assert {"Tree as JSON", "Tree as SVG"} <= labels, labels


def test_find_ranks_groups_escapes_and_opens_the_node(seeded: SeedInfo, use_db) -> None:
    use_db(seeded.url)
    app = open_page("views/find.py")
    assert_clean(app)
    app.text_input(key="find.query").input("fruits remain").run()
    assert_clean(app)
    lines = texts(app, "markdown")
    assert any("**fruits** **remain**" in line for line in lines), lines
    assert any("matching node" in line for line in lines)
    app.text_input(key="find.query").input("heading bold").run()
    shown = [line for line in texts(app, "markdown") if "**Heading** \\*\\***bold**" in line]
    assert shown, texts(app, "markdown")  # the option's own Markdown is shown as literal text
    tree_id, node = next(
        (int(key.split(".")[2]), int(key.split(".")[3]))
        for key in (button.key for button in app.button)
        if key and key.startswith("find.open.")
    )
    next(b for b in app.button if b.key == f"find.open.{tree_id}.{node}").click().run()
    assert_clean(app)
    assert app.title[0].value == "Trees"
    assert app.session_state["selected_nodes"][tree_id] == node
    app = open_page("views/find.py")
    app.text_input(key="find.query").input("zzzqqq").run()
    assert any("Nothing matches" in t for t in texts(app, "info"))


def test_search_form_is_built_from_search_config(seeded: SeedInfo, use_db) -> None:
    from engine.config import CriticModels, SearchConfig

    use_db(seeded.url)
    app = open_page("views/search.py")
    assert_clean(app)
    for spec in fields(SearchConfig):
        assert f"search.cfg.{spec.name}" in app.session_state, spec.name
    for spec in fields(CriticModels):
        assert f"search.critic_models.{spec.name}" in app.session_state, spec.name
    simulations = app.number_input(key="search.cfg.simulations")
    assert simulations.help == SearchConfig.__dataclass_fields__["simulations"].metadata["help"]


def test_search_start_runs_the_cli(seeded: SeedInfo, use_db, monkeypatch: pytest.MonkeyPatch) -> None:
    use_db(seeded.url)
    started: list[list[str]] = []

    def fake_start(kind: str, arguments: list[str], *, db_url: str) -> Job:
        started.append(arguments)
        process = subprocess.Popen([sys.executable, "-c", "pass"])
        process.wait()
        return Job(kind=kind, command=arguments, process=process, log_path=Path(os.devnull))

    monkeypatch.setattr("app.jobs.start_job", fake_start)
    app = open_page("views/search.py")
    app.number_input(key="search.cfg.simulations").set_value(6)
    app.number_input(key="search.cfg.c").set_value(1.5)
    app.selectbox(key="search.model").set_value("smollm2-135m")
    app.text_input(key="search.critic_models.value").set_value("/trained/value")
    app.run()
    start = next(b for b in app.button if b.label == "Start search")
    assert not start.disabled, texts(app, "warning")
    start.click().run()
    assert_clean(app)
    assert started, "the CLI was started"
    arguments = started[0]
    assert arguments[:2] == ["search", "--model"] and "smollm2-135m" in arguments
    assert arguments[arguments.index("--simulations") + 1] == "6"
    assert arguments[arguments.index("--c") + 1] == "1.5"
    assert "--similarity-threshold" not in arguments, "defaults are left to the CLI"
    assert arguments[arguments.index("--value-checkpoint") + 1] == "/trained/value"
    assert "--prm-checkpoint" not in arguments, "an empty critic folder means: ask the policy"


def test_bad_setting_disables_start(seeded: SeedInfo, use_db) -> None:
    use_db(seeded.url)
    app = open_page("views/search.py")
    app.number_input(key="search.cfg.root_min_children").set_value(9).run()
    assert_clean(app)
    assert any("root_max_children" in w for w in texts(app, "warning"))
    assert next(b for b in app.button if b.label == "Start search").disabled


def test_live_view_follows_a_growing_tree(tmp_path: Path, use_db) -> None:
    """A fake writer grows a tree while the Search page polls it."""
    url = f"sqlite:///{tmp_path / 'live.db'}"
    engine = make_engine(url)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        with Session(engine) as session:
            problem = Problem(task="arithmetic", index=0, question="What is 2 + 3?", answer="5")
            session.add(problem)
            session.commit()
            run = Run(
                model="fake", task="arithmetic", pid=sleeper.pid, created_at=utcnow(), heartbeat_at=utcnow()
            )
            session.add(run)
            session.commit()
            tree = Tree(
                run_id=run.id,
                problem_id=problem.id,
                simulations_target=20,
                created_at=utcnow(),
                updated_at=utcnow(),
            )
            session.add(tree)
            session.commit()
            tree_id = tree.id
        writer = threading.Thread(
            target=grow_tree, args=(engine, tree_id), kwargs={"seed": 7, "simulations": 20, "delay_s": 0.1}
        )
        job = Job(kind="search", command=["canopy", "search"], process=sleeper, log_path=Path(os.devnull))
        use_db(url)
        app = open_page("views/search.py", state={"search.job": job})
        writer.start()
        counts = []
        for _ in range(6):
            time.sleep(0.4)
            app.run()
            assert_clean(app)
            metric = {m.label: m.value for m in app.metric}.get("Nodes in tree")
            if metric is not None:
                counts.append(int(metric))
        writer.join()
        assert len(counts) >= 2 and counts[-1] > counts[0], counts
        assert any(b.label == "Stop search" for b in app.button)
    finally:
        sleeper.kill()
        sleeper.wait()


def test_improve_page_history_and_availability(seeded: SeedInfo, use_db) -> None:
    use_db(seeded.url)
    app = open_page("views/improve.py")
    assert_clean(app)
    shown = " ".join(texts(app, "info") + texts(app, "markdown"))
    assert "`canopy improve` is not available yet" not in shown
    assert [b.label for b in app.button if b.label == "Start iteration"], "the launch form"
    assert app.number_input(key="improve.train").value == 20
    assert len(app.get("plotly_chart")) == 3, "accuracy, data size and loss charts"
    assert "Iteration 2" in shown, "the running iteration's progress"


def test_data_page_counts_and_export(seeded: SeedInfo, use_db) -> None:
    use_db(seeded.url)
    app = open_page("views/data.py")
    assert_clean(app)
    metrics = {m.label: m.value for m in app.metric}
    assert metrics == {"DPO": "1", "ORM": "1", "PRM": "1", "SFT": "2", "VALUE": "2"}
    app.multiselect(key="data.kinds").set_value(["sft"]).run()
    assert_clean(app)


def test_app_never_imports_torch(seeded: SeedInfo) -> None:
    script = f"""
import sys
sys.path.insert(0, {str(ROOT)!r})
from streamlit.testing.v1 import AppTest
for page in {PAGES!r}:
    app = AppTest.from_file({MAIN!r}, default_timeout=60)
    app.run()
    app.switch_page(page)
    app.run()
    assert not app.exception, page
heavy = [m for m in ("torch", "transformers", "sentence_transformers", "vllm") if m in sys.modules]
assert not heavy, heavy
print("ok")
"""
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "CANOPY_DB": seeded.url},
        cwd=ROOT,
    )
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-2000:]
