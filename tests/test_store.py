"""The store on fake searches: round trip, incremental commits, resume, concurrent readers, bad databases."""

from __future__ import annotations

import os
import shutil
import sqlite3
import threading
import time
from pathlib import Path

import pytest
from sqlmodel import Session, select

from engine.api import Components, RunNotResumable, resume_search, run_to_resume, search_problem
from engine.config import SearchConfig
from engine.persist import load_tree
from engine.types import Problem
from store import schema
from store.db import StoreError, make_engine
from store.queries import list_trees
from tests.fakes import FakePolicy, fake_components
from tests.test_search import QUESTION, _snapshot

PROBLEM = Problem(question=QUESTION, answer="7", task="custom")


def _components() -> Components:
    return fake_components(config=_config())


def _config(simulations: int = 10) -> SearchConfig:
    return SearchConfig(simulations=simulations, seed=3, similarity="edit", rollouts=1)


@pytest.fixture
def engine(db_url):
    """A fresh store, on SQLite and on PostgreSQL (``tests/conftest.py``)."""
    return make_engine(db_url)


def test_search_round_trips_through_the_store(engine) -> None:
    result = search_problem(engine, PROBLEM, model="fake", config=_config(), components=_components())
    tree, problem = load_tree(engine, result.tree_id)
    assert problem.answer == "7"
    fresh = _components()
    again = search_problem(engine, PROBLEM, model="fake", config=_config(), components=fresh)
    reloaded_again, _ = load_tree(engine, again.tree_id)
    assert _snapshot(tree) == _snapshot(reloaded_again)
    assert result.nodes == len(tree.nodes) and result.filtered == len(tree.filtered)
    assert result.correct is (result.answer == "7")
    with Session(engine) as session:
        tree_row = session.get(schema.Tree, result.tree_id)
        run = session.get(schema.Run, result.run_id)
        events = session.exec(
            select(schema.SearchEvent).where(schema.SearchEvent.tree_id == result.tree_id)
        ).all()
    assert tree_row.status == "completed" and run.status == "completed"
    assert tree_row.chosen_path[0] == 0 and tree_row.answers["vote"] == result.answers["vote"]
    assert {event.phase for event in events} >= {"select", "expand", "filter", "evaluate", "backpropagate"}
    assert sorted(event.seq for event in events) == list(range(len(events)))
    backups = [event for event in events if event.phase == "backpropagate"]
    assert [event.simulation for event in backups] == list(range(10))
    assert all(event.data["path"][0] == 0 for event in backups)


def test_each_options_token_logprobs_are_stored_and_read_back(engine) -> None:
    """What the studio colours a step's tokens by, and what a resumed search keeps."""
    result = search_problem(engine, PROBLEM, model="fake", config=_config(4), components=_components())
    tree, _ = load_tree(engine, result.tree_id)
    with Session(engine) as session:
        rows = session.exec(
            select(schema.Node).where(schema.Node.tree_id == result.tree_id).order_by(schema.Node.index)
        ).all()
    assert rows[0].token_logprobs == [], "the root is the prompt: nothing was sampled"
    assert len(rows) == len(tree.nodes) > 1
    for row, node in zip(rows[1:], tree.nodes[1:], strict=True):
        assert len(row.token_logprobs) == len(row.token_ids) == len(node.option.token_ids)
        assert tuple(row.token_logprobs) == node.option.token_logprobs
        assert sum(row.token_logprobs) == pytest.approx(row.logprob_sum)


def test_stored_config_says_which_critics_ran(engine) -> None:
    result = search_problem(engine, PROBLEM, model="fake", config=_config(3), components=_components())
    with Session(engine) as session:
        run = session.get(schema.Run, result.run_id)
    assert run.config["weight_value"] == 0.0, "no value head: its weight must be stored as 0"
    assert run.config["weight_prm"] == 1.0
    assert run.config["weight_tool"] == 0.0


class _Crash(Exception):
    pass


class _CrashingPolicy(FakePolicy):
    """Dies on the n-th proposal, like a process killed mid-simulation."""

    def __init__(self, crash_at: int) -> None:
        super().__init__()
        self.crash_at = crash_at

    def propose(self, state, **kwargs):
        if len([call for call in self.calls if call[0] == "propose"]) == self.crash_at:
            raise _Crash("killed")
        return super().propose(state, **kwargs)


def test_crash_loses_only_the_simulation_in_flight_and_resume_completes(engine) -> None:
    components = _components()
    components.policy = components.rollout_policy = _CrashingPolicy(crash_at=2)
    with pytest.raises(_Crash):
        search_problem(engine, PROBLEM, model="fake", config=_config(), components=components)
    with Session(engine) as session:
        run = session.exec(select(schema.Run)).one()
        tree_row = session.exec(select(schema.Tree)).one()
        node_rows = session.exec(select(schema.Node)).all()
    assert run.status == "failed" and "killed" in run.error
    assert 0 < tree_row.simulations_done < 10
    assert len(node_rows) == tree_row.node_count
    partial, _ = load_tree(engine, tree_row.id)
    assert partial.root.visits == tree_row.simulations_done

    result = resume_search(engine, run.id, components=_components(), config=_config())
    assert result.simulations == 10
    resumed, _ = load_tree(engine, tree_row.id)
    uninterrupted = search_problem(engine, PROBLEM, model="fake", config=_config(), components=_components())
    whole, _ = load_tree(engine, uninterrupted.tree_id)
    assert _snapshot(resumed) == _snapshot(whole)
    with pytest.raises(RunNotResumable, match="already complete"):
        run_to_resume(engine, run.id)


def test_unknown_run_cannot_be_resumed(engine) -> None:
    with pytest.raises(RunNotResumable, match="no run with id 99"):
        run_to_resume(engine, 99)


def test_reader_polls_while_a_search_writes(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'live.db'}"
    writer = make_engine(url)
    errors: list[Exception] = []
    counts: list[int] = []
    done = threading.Event()

    def read() -> None:
        reader = make_engine(url, create=False)
        while not done.is_set():
            try:
                with Session(reader) as session:
                    counts.append(len(session.exec(select(schema.Node.id)).all()))
            except Exception as exc:  # noqa: BLE001 - any error is the failure under test
                errors.append(exc)
            time.sleep(0.001)

    thread = threading.Thread(target=read)
    thread.start()
    try:
        search_problem(writer, PROBLEM, model="fake", config=_config(30), components=_components())
    finally:
        done.set()
        thread.join()
    assert not errors
    assert len(counts) > 5 and counts == sorted(counts), "the reader sees the tree only grow"
    with sqlite3.connect(tmp_path / "live.db") as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_list_trees(engine) -> None:
    result = search_problem(engine, PROBLEM, model="fake", config=_config(3), components=_components())
    rows = list_trees(engine)
    assert (
        rows[0]["tree_id"] == result.tree_id and rows[0]["gold"] == "7" and rows[0]["nodes"] == result.nodes
    )


def _open_store(url: str, barrier, results) -> None:
    """A process that opens ``url`` the moment the others do (spawned by the test below)."""
    barrier.wait()
    try:
        make_engine(url).dispose()
        results.put("ok")
    except StoreError as exc:
        results.put(str(exc))


def test_processes_opening_a_new_store_together_all_get_it(db_url) -> None:
    """Several commands started at once on a new shared store: one makes the
    schema, the others wait for it and use it (before, all but one failed with
    "table schemainfo already exists" or a duplicate-key error)."""
    import multiprocessing

    spawn = multiprocessing.get_context("spawn")
    barrier, results = spawn.Barrier(4), spawn.Queue()
    processes = [spawn.Process(target=_open_store, args=(db_url, barrier, results)) for _ in range(4)]
    for process in processes:
        process.start()
    outcomes = [results.get(timeout=120) for _ in processes]
    for process in processes:
        process.join(timeout=30)
    assert outcomes == ["ok"] * 4
    engine = make_engine(db_url)
    with Session(engine) as session:
        assert session.exec(select(schema.SchemaInfo)).all()[0].key == "schema_version"
        assert len(session.exec(select(schema.SchemaInfo)).all()) == 1


def test_missing_database_is_an_error_for_readers(tmp_path) -> None:
    with pytest.raises(StoreError, match="no database at"):
        make_engine(str(tmp_path / "absent.db"), create=False)


def test_read_only_database_is_refused(tmp_path) -> None:
    path = tmp_path / "ro.db"
    make_engine(str(path)).dispose()
    os.chmod(path, 0o444)
    if os.access(path, os.W_OK):
        pytest.skip("running as a user who can write read-only files")
    with pytest.raises(StoreError, match="read-only"):
        make_engine(str(path))


def test_read_only_folder_is_refused(tmp_path) -> None:
    folder = tmp_path / "locked"
    folder.mkdir()
    make_engine(str(folder / "c.db")).dispose()
    os.chmod(folder, 0o555)
    try:
        if os.access(folder, os.W_OK):
            pytest.skip("running as a user who can write read-only folders")
        with pytest.raises(StoreError, match="read-only"):
            make_engine(str(folder / "c.db"))
    finally:
        os.chmod(folder, 0o755)


def test_foreign_database_is_refused(tmp_path) -> None:
    path = tmp_path / "other.db"
    with sqlite3.connect(path) as raw:
        raw.execute("CREATE TABLE something (x INTEGER)")
    with pytest.raises(StoreError, match=r"holds other tables \(something\), not Canopy's"):
        make_engine(str(path))


def test_a_canopy_database_without_a_schema_version_is_called_older(tmp_path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as raw:
        for table in ("run", "tree", "node"):
            raw.execute(f"CREATE TABLE {table} (id INTEGER PRIMARY KEY)")
    with pytest.raises(StoreError, match="made by an older Canopy"):
        make_engine(str(path))


def test_not_a_database_file_is_refused(tmp_path) -> None:
    path = tmp_path / "junk.db"
    path.write_text("this is not sqlite" * 100)
    with pytest.raises(StoreError, match="cannot use database"):
        make_engine(str(path))


def test_database_opened_read_only_is_refused(tmp_path) -> None:
    path = tmp_path / "ro.db"
    make_engine(str(path)).dispose()
    with pytest.raises(StoreError, match="readonly|read-only"):
        make_engine(f"sqlite:///file:{path}?mode=ro&uri=true")


SCHEMA_1 = Path(__file__).parent / "data" / "store_schema_1.db"
"""A store written by schema version 1 (``tests.app_fixtures.seed_database`` at the
commit that added it), before Alembic: runs, trees, nodes, examples, iterations."""

KEPT_TABLES = (
    "run",
    "problem",
    "tree",
    "node",
    "trainingexample",
    "iteration",
    "searchevent",
    "verifierprogram",
)


def _contents(path: Path, tables=KEPT_TABLES) -> dict[str, list[tuple]]:
    with sqlite3.connect(path) as raw:
        names = {row[0] for row in raw.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        return {
            table: sorted(raw.execute(f"SELECT * FROM {table}").fetchall(), key=repr)
            for table in tables
            if table in names
        }


def _old_columns(path: Path) -> dict[str, list[tuple]]:
    """The upgraded tables without the columns later schemas added (run.backend
    in 2, node.token_logprobs in 4), like schema 1's."""
    contents = _contents(path)
    for table, added in (("run", "backend"), ("node", "token_logprobs")):
        with sqlite3.connect(path) as raw:
            columns = [row[1] for row in raw.execute(f"PRAGMA table_info({table})")]
        keep = [i for i, name in enumerate(columns) if name != added]
        contents[table] = sorted((tuple(row[i] for i in keep) for row in contents[table]), key=repr)
    return contents


@pytest.mark.parametrize("without_programs", [False, True])
def test_a_schema_1_store_is_upgraded_in_place_with_everything_kept(tmp_path, without_programs) -> None:
    from store.db import HEAD_REVISION, schema_revision, upgrade

    path = tmp_path / "old.db"
    shutil.copy(SCHEMA_1, path)
    if without_programs:  # a version-1 store not opened since the program table was added
        with sqlite3.connect(path) as raw:
            raw.execute("DROP TABLE verifierprogram")
    before = _contents(path)
    assert before["run"] and before["tree"] and before["node"] and before["trainingexample"]
    with pytest.raises(
        StoreError, match=r"schema revision 0001, this Canopy needs 0004; .*canopy db upgrade --db"
    ):
        make_engine(str(path))
    engine = make_engine(str(path), create=False, check=False)
    assert upgrade(engine) == ("0001", HEAD_REVISION)
    assert upgrade(engine) == (HEAD_REVISION, HEAD_REVISION)  # a second upgrade changes nothing
    engine.dispose()
    after = _old_columns(path)
    if without_programs:
        assert after.pop("verifierprogram") == []
    assert after == before
    with sqlite3.connect(path) as raw:  # no migration copied ``node`` and lost the text index's triggers
        triggers = {row[0] for row in raw.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")}
    assert triggers == {"node_fts_insert", "node_fts_update", "node_fts_delete"}
    engine = make_engine(str(path))  # opens now, and writes
    assert schema_revision(engine) == HEAD_REVISION
    with Session(engine) as session:
        runs = session.exec(select(schema.Run)).all()
        assert runs and all(run.backend is None for run in runs)  # unknown for old runs
        session.add(schema.Run(model="m", task="arithmetic", backend="llamacpp"))
        session.commit()


def test_a_store_from_a_newer_canopy_is_refused(tmp_path) -> None:
    path = tmp_path / "new.db"
    make_engine(str(path)).dispose()
    with sqlite3.connect(path) as raw:
        raw.execute("UPDATE alembic_version SET version_num = '0099'")
    with pytest.raises(StoreError, match="revision 0099, newer or other than this Canopy's 0004"):
        make_engine(str(path))


def test_canopy_db_status_and_upgrade(tmp_path, capsys) -> None:
    from canopy.cli import main

    path = tmp_path / "old.db"
    shutil.copy(SCHEMA_1, path)
    assert main(["db", "status", "--db", str(path)]) == 0
    assert "schema revision 0001; this Canopy needs 0004 (run `canopy db upgrade`)" in capsys.readouterr().out
    assert main(["trees", "--db", str(path)]) == 2
    assert "canopy db upgrade --db" in capsys.readouterr().err
    assert main(["db", "upgrade", "--db", str(path)]) == 0
    assert capsys.readouterr().out.strip() == "upgraded from 0001 to 0004"
    assert main(["trees", "--db", str(path)]) == 0
    assert main(["db", "upgrade", "--db", str(tmp_path / "none.db")]) == 2
    assert "no database at" in capsys.readouterr().err


def test_a_schema_1_postgresql_store_is_upgraded_in_place(postgres) -> None:
    """The same upgrade on PostgreSQL: a store brought back to schema 1 (the
    migration's downgrade, and no Alembic table, as before Alembic) refuses to
    open, upgrades, and keeps its run, tree and nodes."""
    from alembic import command
    from sqlalchemy import text

    from store.db import _alembic_config, upgrade

    url = postgres.database()
    engine = make_engine(url)
    result = search_problem(engine, PROBLEM, model="fake", config=_config(), components=_components())
    tree, _ = load_tree(engine, result.tree_id)
    with engine.begin() as connection:
        command.downgrade(_alembic_config(connection), "0001")
        connection.exec_driver_sql("DROP TABLE alembic_version")

    def contents():
        with engine.connect() as connection:
            return {
                table: sorted(connection.execute(text(f"SELECT id, {columns} FROM {table}")).all())
                for table, columns in (
                    ("run", "model, status, config"),
                    ("tree", "answer, node_count"),
                    ("node", "option_text, visits"),
                )
            }

    before = contents()
    engine.dispose()
    with pytest.raises(StoreError, match="schema revision 0001, .*canopy db upgrade --db postgresql"):
        make_engine(url)
    assert upgrade(make_engine(url, create=False, check=False)) == ("0001", "0004")
    engine = make_engine(url)
    assert contents() == before
    reloaded, _ = load_tree(engine, result.tree_id)
    assert _snapshot(reloaded) == _snapshot(tree)
