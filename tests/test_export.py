"""``canopy export``: mined examples to JSONL and to a Hugging Face dataset, and its one-line errors;
the app's Data page downloads the very same lines."""

from __future__ import annotations

import json

import pytest

from app import data
from canopy.cli import main, make_parser
from store.db import make_engine
from store.examples import PROVENANCE_KEYS
from tests.test_mine import QUESTION, add_iteration, add_tree
from training import mine
from training.mine import MineConfig, load_examples, mine_trees


@pytest.fixture
def db(tmp_path):
    """A store with one tree mined twice: without an iteration, and for iteration 1."""
    url = f"sqlite:///{tmp_path / 'canopy.db'}"
    engine = make_engine(url)
    tree_id = add_tree(engine)
    iteration = add_iteration(engine)
    mine_trees(engine, [tree_id], MineConfig(use_gold=True))
    mine_trees(engine, [tree_id], MineConfig(use_gold=True, kinds=("dpo", "prm")), iteration_id=iteration)
    return url


def _error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    return err


def test_export_offers_the_miners_kinds(capsys) -> None:
    for kind in mine.KINDS:
        assert make_parser().parse_args(["export", "--kind", kind, "--out", "x"]).kind == kind
    with pytest.raises(SystemExit):
        make_parser().parse_args(["export", "--kind", "rlhf", "--out", "x"])
    err = capsys.readouterr().err
    assert "invalid choice" in err and all(kind in err.split("choose from")[1] for kind in mine.KINDS)


def test_jsonl_writes_payloads_with_their_provenance(db, tmp_path, capsys) -> None:
    out = tmp_path / "out" / "dpo.jsonl"
    assert main(["export", "--kind", "dpo", "--format", "jsonl", "--db", db, "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == f"wrote 4 dpo examples to {out}"
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [record["source_nodes"] for record in records] == [[1, 2], [3, 4], [1, 2], [3, 4]]
    assert [record["iteration_id"] for record in records] == [None, None, 1, 1]
    assert records[0]["question"] == QUESTION and records[0]["source_tree_id"] == 1
    payload_keys = ["question", "prefix", "chosen", "rejected", "chosen_q", "rejected_q"]
    assert list(records[0]) == [*payload_keys, "id", "kind", "iteration_id", "source_tree_id", "source_nodes"]
    assert {record["kind"] for record in records} == {"dpo"}
    ids = [record["id"] for record in records]
    assert ids == sorted(ids)
    engine = make_engine(db, create=False)
    assert [{k: r[k] for k in payload_keys} for r in records] == load_examples(engine, kind="dpo")


def test_iteration_filter(db, tmp_path, capsys) -> None:
    out = tmp_path / "prm.jsonl"
    assert main(["export", "--kind", "prm", "--iteration", "1", "--db", db, "--out", str(out)]) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 4 and {record["iteration_id"] for record in records} == {1}
    assert "wrote 4 prm examples" in capsys.readouterr().out


def test_hf_dataset_round_trips(db, tmp_path, capsys) -> None:
    from datasets import load_from_disk

    jsonl, folder = tmp_path / "value.jsonl", tmp_path / "value-hf"
    assert main(["export", "--kind", "value", "--db", db, "--out", str(jsonl)]) == 0
    assert main(["export", "--kind", "value", "--format", "hf", "--db", db, "--out", str(folder)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == f"wrote 5 value examples to {folder}"
    dataset = load_from_disk(str(folder))
    expected = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert dataset.num_rows == 5 and dataset.to_list() == expected
    assert dataset[0]["steps"] == [] and dataset[0]["source"] == "verified"


def test_hf_writes_into_an_existing_empty_folder(db, tmp_path) -> None:
    from datasets import load_from_disk

    folder = tmp_path / "empty"
    folder.mkdir()
    assert main(["export", "--kind", "sft", "--format", "hf", "--db", db, "--out", str(folder)]) == 0
    assert load_from_disk(str(folder))[0]["answer"] == "7"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--kind", "sft", "--iteration", "1"], "no sft examples of iteration 1 in the database; mine some"),
        (["--kind", "dpo", "--iteration", "9"], "no iteration 9 in the database"),
    ],
)
def test_nothing_to_export_is_an_error(db, tmp_path, capsys, args, message) -> None:
    out = tmp_path / "x.jsonl"
    assert main(["export", *args, "--db", db, "--out", str(out)]) == 2
    assert _error(capsys).startswith(f"canopy: error: {message}")
    assert not out.exists()


def test_refuses_a_non_empty_output_folder(db, tmp_path, capsys) -> None:
    folder = tmp_path / "taken"
    folder.mkdir()
    (folder / "keep.txt").write_text("mine")
    assert main(["export", "--kind", "sft", "--format", "hf", "--db", db, "--out", str(folder)]) == 2
    assert "is a folder that is not empty" in _error(capsys)
    assert [path.name for path in folder.iterdir()] == ["keep.txt"]
    assert main(["export", "--kind", "sft", "--db", db, "--out", str(folder)]) == 2
    assert "jsonl needs a file path" in _error(capsys)


def test_missing_database_is_an_error_and_is_not_created(tmp_path, capsys) -> None:
    missing = tmp_path / "none.db"
    out = tmp_path / "x.jsonl"
    assert main(["export", "--kind", "sft", "--db", str(missing), "--out", str(out)]) == 2
    assert _error(capsys).startswith(f"canopy: error: no database at {missing}")
    assert not missing.exists() and not out.exists()


def test_the_data_page_downloads_the_same_lines(db, tmp_path) -> None:
    """For every kind, and for one iteration, the app's JSONL is byte for byte what
    ``canopy export`` writes for the same rows."""
    everything = data.examples_jsonl(db, (), ()).splitlines()
    for kind in mine.KINDS:
        out = tmp_path / f"{kind}.jsonl"
        assert main(["export", "--kind", kind, "--db", db, "--out", str(out)]) == 0
        exported = out.read_text(encoding="utf-8").splitlines()
        assert exported == data.examples_jsonl(db, (kind,), ()).splitlines()
        assert exported == [line for line in everything if json.loads(line)["kind"] == kind]
    out = tmp_path / "prm-1.jsonl"
    assert main(["export", "--kind", "prm", "--iteration", "1", "--db", db, "--out", str(out)]) == 0
    assert out.read_text(encoding="utf-8") == data.examples_jsonl(db, ("prm",), (1,))
    assert everything
    for line in everything:
        record = json.loads(line)
        assert list(record)[-len(PROVENANCE_KEYS) :] == list(PROVENANCE_KEYS)


def test_the_export_parser_does_not_load_the_store() -> None:
    """Every ``canopy`` start builds this parser: it must not pay for SQLAlchemy."""
    import subprocess
    import sys

    check = "import sys, canopy.export_cmd; print([m for m in sys.modules if m.startswith('sqlalchemy')])"
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stderr[-2000:]
