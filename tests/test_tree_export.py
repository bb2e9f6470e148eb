"""One tree as a document and a figure: ``store.tree_export``, ``canopy trees
--export`` and the Trees page's downloads."""

from __future__ import annotations

import json
import shutil

import pytest

from canopy.cli import main
from canopy.trees_cmd import COLOR_BY
from engine.api import search_problem
from engine.config import SearchConfig
from engine.types import Problem
from store.db import StoreError, make_engine
from store.tree_export import FORMAT, tree_document
from tests.fakes import fake_components


@pytest.fixture
def searched(db_url):
    engine = make_engine(db_url)
    result = search_problem(
        engine,
        Problem(task="custom", question="What is 3 + 4?", answer="7"),
        model="fake",
        config=SearchConfig(simulations=6, seed=2, similarity="edit", rollouts=1),
        components=fake_components(),
    )
    return engine, result


def test_the_document_holds_every_node_its_edges_and_the_chosen_path(searched) -> None:
    engine, result = searched
    document = json.loads(json.dumps(tree_document(engine, result.tree_id)))  # plain JSON
    assert document["format"] == FORMAT and document["problem"]["gold"] == "7"
    nodes = document["nodes"]
    assert len(nodes) == result.nodes and len(document["filtered"]) == result.filtered
    indices = {node["index"] for node in nodes}
    assert sorted(document["edges"]) == sorted([n["parent_index"], n["index"]] for n in nodes if n["index"])
    assert all(parent in indices for parent, _ in document["edges"])
    chosen = document["tree"]["chosen_path"]
    assert chosen and [n["index"] for n in nodes if n["on_chosen_path"]] == sorted(chosen)
    assert {"option_text", "visits", "q", "combined_score", "rollouts", "answer"} <= set(nodes[0])
    assert "token_ids" not in nodes[0] and "token_logprobs" not in nodes[0]
    with pytest.raises(StoreError, match="no tree with id 999"):
        tree_document(engine, 999)


def test_canopy_trees_export(tmp_path, capsys) -> None:
    url = f"sqlite:///{tmp_path / 'c.db'}"
    engine = make_engine(url)
    result = search_problem(
        engine,
        Problem(task="custom", question="What is 3 + 4?", answer="7"),
        model="fake",
        config=SearchConfig(simulations=4, seed=2, similarity="edit"),
        components=fake_components(),
    )
    assert main(["trees", "--db", url, "--export", str(result.tree_id)]) == 0
    assert len(json.loads(capsys.readouterr().out)["nodes"]) == result.nodes
    out = tmp_path / "t.json"
    assert main(["trees", "--db", url, "--export", str(result.tree_id), "--out", str(out)]) == 0
    assert json.loads(out.read_text())["tree"]["id"] == result.tree_id
    assert main(["trees", "--db", url, "--export", str(result.tree_id), "--format", "svg"]) == 2
    assert "writes a file: pass --out PATH" in capsys.readouterr().err
    assert main(["trees", "--db", url, "--export", "999"]) == 2
    if shutil.which("chromium") is None and shutil.which("google-chrome") is None:
        pytest.skip("the SVG export needs a Chrome/Chromium")
    svg = tmp_path / "t.svg"
    assert (
        main(["trees", "--db", url, "--export", str(result.tree_id), "--format", "svg", "--out", str(svg)])
        == 0
    )
    assert svg.read_bytes().lstrip().startswith(b"<svg") and b"depth 1" in svg.read_bytes()


def test_the_cli_offers_the_apps_colourings() -> None:
    from app.layout import COLOR_BY as APP_COLOR_BY

    assert list(COLOR_BY) == list(APP_COLOR_BY)
