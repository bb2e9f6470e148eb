"""The Rounds page (one held-out problem across an improve loop's rounds) under
``AppTest`` on a store seeded by ``tests.app_fixtures.seed_rounds``: every
control, the link that restores a selection, the messages for an empty store,
a loop with no trees and a round with no tree; and ``app.chains`` on its own."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from app.chains import chains, path_verdicts, problem_label, problems
from store.db import make_engine
from tests.app_fixtures import HELD_OUT, MCTS_VERDICTS, RoundsSeed, seed_rounds
from tests.test_app_pages import assert_clean, open_page, texts

PAGE = "views/rounds.py"


@pytest.fixture(scope="module")
def rounds(tmp_path_factory: pytest.TempPathFactory) -> RoundsSeed:
    return seed_rounds(tmp_path_factory.mktemp("rounds") / "rounds.db")


@pytest.fixture
def use_db(monkeypatch: pytest.MonkeyPatch):
    def use(url: str) -> None:
        monkeypatch.setenv("CANOPY_DB", url)

    return use


def headings(app: AppTest) -> list[str]:
    return [t.removeprefix("#### ") for t in texts(app, "markdown") if t.startswith("#### ")]


def link(app: AppTest) -> dict[str, str]:
    """The page's query string as the browser shows it (AppTest may hold lists)."""
    shown = dict(app.query_params)
    return {key: value[0] if isinstance(value, list) else value for key, value in shown.items()}


def test_an_empty_store_says_how_to_make_rounds(tmp_path: Path, use_db) -> None:
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    make_engine(url).dispose()
    use_db(url)
    app = open_page(PAGE)
    assert_clean(app)
    shown = " ".join(texts(app, "info"))
    assert "No self-improvement iterations yet" in shown and "canopy improve" in shown and "Improve" in shown


def test_one_column_per_round_with_verdicts_costs_and_critics(rounds: RoundsSeed, use_db) -> None:
    use_db(rounds.url)
    app = open_page(PAGE)
    assert_clean(app)
    assert app.selectbox(key="rounds.chain").value == rounds.chain[0], "opens on the loop that has trees"
    assert app.selectbox(key="rounds.problem").value == rounds.problems[0]
    assert headings(app) == ["Base model", "Round 1", "Round 2"]
    overview = next(frame.value for frame in app.dataframe if "MCTS result" in frame.value.columns)
    assert list(overview["MCTS result"]) == ["✗ wrong", "✓ correct", "✓ correct"]
    assert list(overview["held-out MCTS accuracy"]) == ["33% (1/3)", "67% (2/3)", "100% (2/2) so far"]
    metrics = [(m.label, m.value, m.delta) for m in app.metric]
    accuracy = [(value, delta) for label, value, delta in metrics if label == "MCTS accuracy"]
    assert accuracy == [("33%", "–"), ("67%", "+33 pts"), ("100%", "so far")]
    assert [label for label, _, _ in metrics].count("Tokens") == 3
    paths = [frame.value for frame in app.dataframe if "step" in frame.value.columns]
    assert len(paths) == 3
    assert {"node", "PRM", "ORM", "combined", "Q"} <= set(paths[0].columns)
    question = HELD_OUT[0][0]
    assert question in texts(app, "code"), "the question is shown as text"


def test_problem_picker_lists_the_held_out_problems_and_filters_changed_ones(
    rounds: RoundsSeed, use_db
) -> None:
    use_db(rounds.url)
    app = open_page(PAGE)
    picker = app.selectbox(key="rounds.problem")
    assert picker.options == [
        "#0 · ✗ ✓ ✓ · A farmer has 12 apples, buys 7 more and gives 4 away. How many are left?",
        "#1 · ✓ ✓ ✓ · What is 6 * 7 - 2?",
        problem_label({"index": 2, "marks": "✗ ✗ –", "question": HELD_OUT[2][0], "problem_id": 0}),
    ], "held-out problems only (not round 1's training problem), each round's verdict in the label"
    picker.select(rounds.problems[1]).run()
    app.toggle(key="rounds.changed").set_value(True).run()
    assert_clean(app)
    picker = app.selectbox(key="rounds.problem")
    assert len(picker.options) == 1 and picker.value == rounds.problems[0], "only #0 changed; it is picked"
    assert link(app)["changed"] == "1"


def test_a_round_without_a_tree_says_why_and_shows_its_greedy_answer(rounds: RoundsSeed, use_db) -> None:
    use_db(rounds.url)
    app = open_page(PAGE)
    app.selectbox(key="rounds.problem").select(rounds.problems[2]).run()
    assert_clean(app)
    assert any("No tree for this problem yet" in t and "eval_mcts 2/3" in t for t in texts(app, "info"))
    assert f"rounds.open.{rounds.greedy[(2, 2)]}" in [b.key for b in app.button], "round 2's greedy answer"
    assert f"rounds.open.{rounds.mcts[(1, 2)]}" in [b.key for b in app.button]
    markdown = " ".join(texts(app, "markdown") + texts(app, "caption"))
    assert "*notebooks*" not in markdown, "the question (with $ and *) is never Markdown"
    assert HELD_OUT[2][0] in texts(app, "code")


def test_the_loop_picker_and_a_loop_without_trees(rounds: RoundsSeed, use_db) -> None:
    use_db(rounds.url)
    app = open_page(PAGE)
    chain = app.selectbox(key="rounds.chain")
    newest = chain.options[0]
    assert newest.startswith(f"Loop from iteration {rounds.waiting} ") and "base only" in newest
    chain.select(rounds.waiting).run()
    assert_clean(app)
    assert any("no held-out trees yet" in t and "eval_greedy 0/3" in t for t in texts(app, "info"))
    assert link(app) == {"chain": str(rounds.waiting)}


def test_rounds_to_show_and_colouring(rounds: RoundsSeed, use_db) -> None:
    use_db(rounds.url)
    app = open_page(PAGE)
    app.multiselect(key="rounds.shown").set_value([0, 2]).run()
    assert_clean(app)
    assert headings(app) == ["Base model", "Round 2"]
    greedy = [m for m in app.metric if m.label == "Greedy accuracy"]
    assert [m.delta for m in greedy] == ["–", "+67 pts"], "changes are from the column to the left"
    app.segmented_control(key="rounds.color").set_value("prm").run()
    assert_clean(app)
    assert any(c.startswith("Nodes are coloured by PRM") for c in texts(app, "caption"))
    assert link(app)["rounds"] == "0,2" and link(app)["color"] == "prm"
    app.multiselect(key="rounds.shown").set_value([]).run()
    assert_clean(app)
    assert any("Pick at least one round" in t for t in texts(app, "info")) and not headings(app)


def test_a_link_restores_loop_problem_rounds_and_colouring(rounds: RoundsSeed, use_db) -> None:
    use_db(rounds.url)
    wanted = {
        "chain": str(rounds.chain[0]),
        "problem": str(rounds.problems[2]),
        "rounds": "1,2",
        "color": "q",
    }
    app = open_page(PAGE, query=wanted)
    assert_clean(app)
    assert not app.warning, [w.value for w in app.warning]  # no "default and Session State" clash
    assert app.selectbox(key="rounds.problem").value == rounds.problems[2]
    assert app.multiselect(key="rounds.shown").value == [1, 2]
    assert headings(app) == ["Round 1", "Round 2"]
    assert link(app) == wanted, "the page writes the same link back"
    bad = open_page(PAGE, query={"chain": "999", "problem": "x", "rounds": "7,a", "color": "<b>"})
    assert_clean(bad)
    assert not bad.warning and not texts(bad, "error")
    assert bad.selectbox(key="rounds.chain").value == rounds.chain[0]
    assert bad.session_state["rounds.color"] == "combined"


def test_open_buttons_and_picked_nodes_open_the_trees_page(rounds: RoundsSeed, use_db) -> None:
    use_db(rounds.url)
    app = open_page(PAGE)
    tree_id = rounds.mcts[(1, 0)]
    app.button(key=f"rounds.open.{tree_id}").click().run()
    assert_clean(app)
    assert app.title[0].value == "Trees"
    assert app.selectbox(key="trees.tree").value == tree_id
    assert app.session_state["selected_nodes"][tree_id] > 0, "at the end of the chosen path"
    app = open_page(PAGE)
    greedy = rounds.greedy[(0, 0)]
    app.button(key=f"rounds.open.{greedy}").click().run()
    assert app.title[0].value == "Trees" and app.session_state["selected_nodes"][greedy] == 1
    # A click on a chart node or a path row stores (tree, node) for the end of the run.
    app = open_page(PAGE, state={"rounds.open": (tree_id, 2)})
    assert_clean(app)
    assert app.title[0].value == "Trees" and app.session_state["selected_nodes"][tree_id] == 2


def test_chains_follow_parents_and_survive_broken_ones() -> None:
    def row(i: int, parent: int | None, runs: dict | None = None) -> dict:
        return {
            "id": i,
            "parent_id": parent,
            "name": f"it{i}",
            "model": "m",
            "status": "completed",
            "stage": "done",
            "metrics": {"runs": runs or {}, "config": {"task": "arithmetic"}},
            "created_at": None,
        }

    rows = [row(1, None, {"eval_mcts": 5}), row(3, 2), row(2, 1), row(4, 99), row(5, 5)]
    found = chains(pd.DataFrame(rows))
    assert [chain.base_id for chain in found] == [5, 4, 1], "newest loop first"
    first = next(chain for chain in found if chain.base_id == 1)
    assert [(r.iteration_id, r.number, r.title) for r in first.rounds] == [
        (1, 0, "Base model"),
        (2, 1, "Round 1"),
        (3, 2, "Round 2"),
    ]
    assert first.run_ids() == (5,) and first.label.startswith("Loop from iteration 1 · m · arithmetic")


def test_problem_marks_and_path_verdicts(rounds: RoundsSeed) -> None:
    from app import data

    chain = next(c for c in chains(data.iterations(rounds.url)) if c.base_id == rounds.chain[0])
    table = problems(data.round_trees(rounds.url, chain.run_ids()), chain)
    by_problem = zip(*MCTS_VERDICTS, strict=True)
    marks = [" ".join({True: "✓", False: "✗", None: "–"}[v] for v in column) for column in by_problem]
    assert list(table["marks"]) == marks and list(table["changed"]) == [True, False, False]
    nodes = pd.DataFrame(
        {
            "index": [0, 1, 2],
            "parent_index": [-1, 0, 1],
            "option_text": ["", "first\nstep", "x" * 80],
            "value_score": [None, None, None],
            "prm_score": [None, 0.9, 0.2],
            "orm_score": [None, 0.5, None],
            "tool_score": [None, None, None],
            "combined_score": [None, 0.7, 0.2],
            "q": [0.5, 0.6, 0.2],
        }
    )
    steps = path_verdicts(nodes, [0, 1, 2])
    assert list(steps.columns) == ["node", "step", "PRM", "ORM", "combined", "Q"], "unscored critics left out"
    assert list(steps["step"]) == ["first step", "x" * 59 + "…"]


def test_the_rounds_render_on_a_postgresql_store(postgres, use_db) -> None:
    seed = seed_rounds(url=postgres.database())
    use_db(seed.url)
    app = open_page(PAGE)
    assert_clean(app)
    assert headings(app) == ["Base model", "Round 1", "Round 2"] and not texts(app, "error")


def test_back_to_the_page_from_another_restores_its_selection(rounds: RoundsSeed, use_db) -> None:
    """Streamlit drops a page's widget values while another page runs. Back
    returns to the page's URL, or to the bare URL ``st.switch_page`` leaves in
    the history (as the sidebar does): either way the selection comes back."""
    use_db(rounds.url)
    app = open_page(PAGE, query={"problem": str(rounds.problems[2]), "color": "q", "rounds": "2"})
    assert_clean(app)
    written = link(app)
    for returning_to in (written, {}):
        app.switch_page("views/find.py")
        app.query_params.clear()
        app.run()
        for name, value in returning_to.items():
            app.query_params[name] = value
        app.switch_page(PAGE)
        app.run()
        assert_clean(app)
        assert app.selectbox(key="rounds.problem").value == rounds.problems[2], returning_to
        assert app.session_state["rounds.color"] == "q" and headings(app) == ["Round 2"]
        assert link(app) == written


def test_later_rounds_without_evaluations_say_why_and_are_not_shown_first(tmp_path: Path, use_db) -> None:
    """A loop with more rounds than fit opens on its evaluated ones; a round that
    failed before evaluating shows its error and how to resume."""
    from sqlmodel import Session

    from store.iterations import IterationMetrics
    from store.schema import Iteration

    seed = seed_rounds(tmp_path / "more.db")
    with Session(make_engine(seed.url, create=False)) as session:
        failed = Iteration(
            parent_id=seed.chain[-1],
            name="round 3",
            status="failed",
            stage="sft",
            metrics=IterationMetrics(done=["search", "mine"], error="RuntimeError: out of memory").to_dict(),
        )
        session.add(failed)
        session.commit()
        session.refresh(failed)
        session.add(Iteration(parent_id=failed.id, name="round 4", status="running", stage="search 3/20"))
        session.commit()
        failed_id = failed.id
    use_db(seed.url)
    app = open_page(PAGE)
    assert_clean(app)
    assert app.multiselect(key="rounds.shown").value == [0, 1, 2], "the evaluated rounds, not the last ones"
    app.multiselect(key="rounds.shown").set_value([0, 3, 4]).run()
    assert_clean(app)
    assert headings(app) == ["Base model", "Round 3", "Round 4"]
    infos = texts(app, "info")
    assert any("has not begun its held-out MCTS evaluation (it failed)" in t for t in infos)
    assert any("(it is at stage search 3/20)" in t for t in infos)
    assert "RuntimeError: out of memory" in texts(app, "code")
    assert f"canopy improve --resume {failed_id}" in texts(app, "code")
    assert app.selectbox(key="rounds.problem").options[0].startswith("#0 · ✗ ✓ ✓ – – · A farmer")
