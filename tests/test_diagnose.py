"""bench/diagnose_mcts.py: the statistics, and a diagnosis read back from stored fake runs."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from engine.compare import compare
from store.db import make_engine
from tests.test_eval import PROBLEMS, _components, _settings

_spec = importlib.util.spec_from_file_location(
    "diagnose_mcts", Path(__file__).resolve().parents[1] / "bench" / "diagnose_mcts.py"
)
diagnose_mcts = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(diagnose_mcts)


def test_auc_and_sign_test() -> None:
    assert diagnose_mcts.auc([(0.9, True), (0.1, False)]) == 1.0
    assert diagnose_mcts.auc([(0.1, True), (0.9, False)]) == 0.0
    assert diagnose_mcts.auc([(0.5, True), (0.5, False), (0.7, True)]) == 0.75
    assert diagnose_mcts.auc([(0.5, True)]) is None, "one class only"
    assert diagnose_mcts.sign_test(7, 3) == pytest.approx(0.34375)
    assert diagnose_mcts.sign_test(10, 0) == pytest.approx(2 / 1024)
    assert diagnose_mcts.sign_test(0, 0) == 1.0


def test_diagnosis_of_stored_runs(tmp_path) -> None:
    db = f"sqlite:///{tmp_path / 'd.db'}"
    report = compare(
        make_engine(db),
        methods=["greedy", "mcts"],
        problems=PROBLEMS[:3],
        components=_components(),
        settings=_settings(),
        out_dir=tmp_path / "report",
        png=False,
    )
    greedy, mcts = report.results
    found = diagnose_mcts.diagnose(db, mcts.run_id, greedy.run_id)
    correct = sum(bool(record.correct) for record in mcts.records)
    assert found["problems"] == 3 and found["accuracy"] == round(correct / 3, 3)
    assert found["accuracy_by_selection"]["vote"] == correct, "vote is the search's default pick"
    assert found["found_in_tree"] >= correct and found["found_not_chosen"] == found["found_in_tree"] - correct
    paired = found["vs_greedy"]
    assert sum(paired[key] for key in ("mcts_only", "greedy_only", "both", "neither")) == 3
    assert paired["both"] + paired["mcts_only"] == correct
    assert 0 < found["trajectories_with_an_answer"] <= found["trajectories"]
    assert (
        found["critic_auc"]["orm"]["n"] >= found["critic_auc"]["orm_answered"]["n"] > 0
        and found["tree_means"]["nodes"] > 1
    )
    assert found["token_means"]["generated"] == pytest.approx(mcts.generated_tokens, abs=0.01)
    with pytest.raises(SystemExit, match="not an MCTS eval run"):
        diagnose_mcts.diagnose(db, greedy.run_id)


def test_diagnosis_counts_the_program_checker(tmp_path) -> None:
    from engine.baselines import EvalSettings
    from engine.config import SearchConfig
    from engine.critics import Critics
    from engine.critics.program import ProgramVerifier
    from engine.evaluate import evaluate
    from tests.fakes import FakeORM, FakePRM
    from tests.test_program_verifier import FakeCoder

    db = f"sqlite:///{tmp_path / 'p.db'}"
    policy = FakeCoder()
    search = SearchConfig(simulations=4, seed=3, similarity="edit", tool="program", programs=4)
    components = _components(policy, search)
    verifier = ProgramVerifier(policy, programs=4, temperature=0.7, max_tokens=64, seed=1)
    components.critics = Critics(prm=FakePRM(), orm=FakeORM(), tool=verifier)
    result = evaluate(
        make_engine(db),
        method="mcts",
        problems=PROBLEMS[:2],
        components=components,
        settings=EvalSettings(search=search),
    )
    found = diagnose_mcts.diagnose(db, result.run_id)
    assert found["programs"] == {
        "written": 8,
        "with_a_verdict": 4,  # of each problem's four programs, one loops and one imports
        "right": 2,  # 3 + 4 = 7 is right, 3 * 4 = 12 is not
        "problems_where_their_majority_is_right": 2,
    }
    assert found["critic_auc"]["tool_answered"]["n"] > 0
