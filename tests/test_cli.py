"""Bad input through the real ``canopy`` command: one line, exit 2, nothing written."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest


def canopy(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "canopy", *args], capture_output=True, text=True, timeout=300, cwd=cwd
    )


def _runs(db: Path) -> int:
    if not db.exists():
        return 0
    with sqlite3.connect(db) as raw:
        tables = {row[0] for row in raw.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        return raw.execute("SELECT COUNT(*) FROM run").fetchone()[0] if "run" in tables else 0


@pytest.fixture
def gsm8k_files(tmp_path: Path) -> dict[str, Path]:
    files = {
        "good": '{"question": "What is 2 + 3?", "answer": "2 + 3 = 5\\n#### 5"}\n',
        "empty": "",
        "malformed": '{"question": "What is 2 + 3?", "answer": \n',
        "no_marker": '{"question": "What is 2 + 3?", "answer": "5"}\n',
    }
    paths = {}
    for name, text in files.items():
        paths[name] = tmp_path / f"{name}.jsonl"
        paths[name].write_text(text)
    return paths


BAD_INPUTS = [
    (["--model", "no-such-model", "--index", "0"], "unknown model"),
    (["--model", "/no/such/dir", "--index", "0"], "no model at"),
    (["--index", "0", "--simulations", "0"], "simulations must be >= 1"),
    (["--index", "0", "--simulations", "-3"], "simulations must be >= 1"),
    (["--index", "0", "--weight-prm", "1.5"], "weight_prm must be in [0, 1]"),
    (["--index", "0", "--similarity-threshold", "0"], "similarity_threshold must be in (0, 1]"),
    (
        ["--index", "0", "--min-children", "3", "--max-children", "2"],
        "max_children (2) must be >= min_children",
    ),
    (["--index", "-1"], "out of range"),
    (["--question", "   "], "--question is empty"),
    (["--question", "What is 2+2?", "--answer", "four"], "is not a number"),
    ([], "pick a problem with --index"),
    (["--resume", "42"], "no run with id 42"),
]


@pytest.mark.parametrize(("args", "message"), BAD_INPUTS)
def test_bad_search_input_is_one_line_and_writes_nothing(
    tmp_path: Path, args: list[str], message: str
) -> None:
    db = tmp_path / "c.db"
    done = canopy("search", "--model", "smollm2-135m", "--db", str(db), *args)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("canopy: error:"), done.stderr
    assert message in lines[0]
    assert _runs(db) == 0


@pytest.mark.parametrize(
    ("name", "message"),
    [("empty", "no problems"), ("malformed", "not JSON"), ("no_marker", "####")],
)
def test_bad_gsm8k_files(tmp_path: Path, gsm8k_files: dict[str, Path], name: str, message: str) -> None:
    db = tmp_path / "c.db"
    done = canopy(
        "search",
        "--model",
        "smollm2-135m",
        "--task",
        "gsm8k",
        "--data",
        str(gsm8k_files[name]),
        "--index",
        "0",
        "--db",
        str(db),
    )
    assert done.returncode == 2 and message in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert _runs(db) == 0


def test_gsm8k_index_out_of_range(tmp_path: Path, gsm8k_files: dict[str, Path]) -> None:
    done = canopy(
        "search",
        "--task",
        "gsm8k",
        "--data",
        str(gsm8k_files["good"]),
        "--index",
        "5",
        "--db",
        str(tmp_path / "c.db"),
    )
    assert done.returncode == 2 and "index 5 is out of range" in done.stderr


def test_read_only_database(tmp_path: Path) -> None:
    db = tmp_path / "ro.db"
    canopy("trees", "--db", str(db))  # a reader must not create it
    assert not db.exists()
    sqlite3.connect(db).close()
    done = canopy("search", "--index", "0", "--db", f"sqlite:///file:{db}?mode=ro&uri=true")
    assert done.returncode == 2 and "readonly" in done.stderr, done.stderr


def test_config_file_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("simulatoins = 3\n")
    done = canopy("search", "--index", "0", "--config", str(bad), "--db", str(tmp_path / "c.db"))
    assert done.returncode == 2 and "unknown search setting(s): simulatoins" in done.stderr
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    done = canopy("search", "--index", "0", "--config", str(broken), "--db", str(tmp_path / "c.db"))
    assert done.returncode == 2 and "not valid JSON" in done.stderr


def test_trees_on_missing_database(tmp_path: Path) -> None:
    done = canopy("trees", "--db", str(tmp_path / "absent.db"))
    assert done.returncode == 2 and "no database at" in done.stderr


def test_models_lists_presets() -> None:
    done = canopy("models", "--json")
    assert done.returncode == 0, done.stderr
    names = {row["name"] for row in json.loads(done.stdout)}
    assert names == {"smollm2-135m", "qwen2.5-coder-0.5b", "minilm"}
    done = canopy("models", "prepare", "nope")
    assert done.returncode == 2 and "nope" in done.stderr


# -- what a new user runs into --------------------------------------------------


def _short_error(done: subprocess.CompletedProcess, message: str) -> None:
    """A one-line error (plus at most a pointer to --help), exit 2, no traceback."""
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) <= 2 and message in lines[0], done.stderr
    assert "Traceback" not in done.stderr


def test_a_database_url_of_an_unknown_kind_is_one_line(tmp_path: Path) -> None:
    _short_error(canopy("search", "--index", "0", "--db", "notaurl://x"), "unknown database kind 'notaurl'")
    _short_error(canopy("trees", "--db", "notaurl://x"), "unknown database kind 'notaurl'")


def test_a_port_out_of_range_is_an_argument_error() -> None:
    done = canopy("app", "--port", "99999")
    _short_error(done, "argument --port: 99999 is not a port (1 to 65535)")
    assert done.stderr.strip().splitlines()[-1] == "see `canopy app --help` for the options"


def test_argparse_errors_are_short_and_point_to_help() -> None:
    done = canopy("search", "--simulations", "many")
    _short_error(done, "canopy search: error: argument --simulations: invalid int value: 'many'")
    assert "usage:" not in done.stderr
    _short_error(canopy("serch"), "canopy: error: argument command: invalid choice: 'serch'")


def test_a_sqlite_file_of_another_program_is_not_called_an_older_canopy(tmp_path: Path) -> None:
    db = tmp_path / "other.db"
    with sqlite3.connect(db) as raw:
        raw.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
    done = canopy("search", "--index", "0", "--db", str(db))
    _short_error(done, "holds other tables (customers), not Canopy's; pass another --db")
    with sqlite3.connect(db) as raw:
        tables = {row[0] for row in raw.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert tables == {"customers"}, "nothing was added to the other program's file"


def test_sigterm_names_the_run_to_resume(tmp_path: Path, monkeypatch, capsys) -> None:
    """SIGTERM mid-search: the run is marked interrupted and the message names its id and database."""
    import os
    import signal

    import canopy.search_cmd
    from canopy.cli import EXIT_INTERRUPTED, main
    from store import schema
    from store.db import make_engine
    from tests.fakes import FakePolicy
    from tests.test_eval import _components

    class TerminatedPolicy(FakePolicy):
        def propose(self, state, **kwargs):
            if self.calls:
                os.kill(os.getpid(), signal.SIGTERM)  # main's handler turns it into KeyboardInterrupt
            return super().propose(state, **kwargs)

    monkeypatch.setattr(canopy.search_cmd, "load_components", lambda *a, **k: _components(TerminatedPolicy()))
    monkeypatch.setattr(canopy.search_cmd, "check_models", lambda *names: None)
    previous = signal.getsignal(signal.SIGTERM)
    db = tmp_path / "term.db"
    try:
        code = main(["search", "--index", "0", "--simulations", "8", "--similarity", "edit", "--db", str(db)])
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert code == EXIT_INTERRUPTED
    from sqlmodel import Session, select

    with Session(make_engine(str(db), create=False)) as session:
        run = session.exec(select(schema.Run)).one()
    assert run.status == "interrupted"
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last == f"canopy: interrupted; resume with `canopy search --resume {run.id} --db {db}`"
