"""Tasks: generated arithmetic problems, GSM8K files, and the dispatching loaders."""

from __future__ import annotations

import json
import random
import re
import sys
from pathlib import Path

import pytest

from engine.answers import extract_answer
from engine.critics.tool import safe_eval
from engine.tasks import TASKS, TaskError, get_problem, load_problems
from engine.tasks.arithmetic import generate_problem, load_arithmetic, split_of_question
from engine.tasks.gsm8k import load_gsm8k, load_gsm8k_from_hub

SHARED_GSM8K = Path("/work/shared/data/gsm8k_train.jsonl")

_STEP_LINE = re.compile(r"(\d+) ([-+*/]) (\d+) = (\d+)")


def _verify_solution(question: str, answer: str, solution: str, max_number: int) -> int:
    """Re-derive ``answer`` from the solution lines; returns the number of steps."""
    *step_lines, last_line = solution.splitlines()
    total = None
    for line in step_lines:
        match = _STEP_LINE.fullmatch(line)
        assert match, line
        left, operator, operand, result = match.groups()
        assert total is None or int(left) == total, "each step starts from the previous result"
        assert safe_eval(f"{left} {operator} {operand}") == int(result)
        assert 1 <= int(operand) <= max_number
        assert re.search(rf"(?<!\d){operand}(?!\d)", question), f"operand {operand} is in the question"
        total = int(result)
        assert total >= 1
    assert last_line == f"The answer is {total}."
    assert answer == str(total)
    assert extract_answer(solution) == answer
    return len(step_lines)


@pytest.mark.parametrize(("steps", "max_number"), [(1, 5), (2, 20), (4, 50), (8, 10), (8, 10_000)])
def test_generated_solutions_are_correct(steps: int, max_number: int) -> None:
    for problem in load_arithmetic("test", count=60, seed=3, steps=steps, max_number=max_number):
        solution = problem.meta["solution"]
        assert _verify_solution(problem.question, problem.answer, solution, max_number) == steps
        assert problem.task == "arithmetic"
        assert problem.meta["steps"] == steps and problem.meta["max_number"] == max_number
        assert problem.question.endswith("?")


def test_arithmetic_is_deterministic_and_seeded() -> None:
    first = load_arithmetic("train", count=30, seed=7, steps=3)
    assert first == load_arithmetic("train", count=30, seed=7, steps=3)
    assert [p.index for p in first] == list(range(30))
    other_seed = load_arithmetic("train", count=30, seed=8, steps=3)
    assert sum(a.question == b.question for a, b in zip(first, other_seed, strict=True)) < 3
    assert generate_problem(random.Random(5), steps=2, max_number=20) == generate_problem(
        random.Random(5), steps=2, max_number=20
    )


def test_get_problem_equals_loaded_problem() -> None:
    problems = load_problems("arithmetic", split="train", count=12, seed=2, steps=3, max_number=30)
    for index in (0, 5, 11):
        problem = get_problem("arithmetic", index, split="train", seed=2, steps=3, max_number=30)
        assert problem == problems[index]
    assert get_problem("arithmetic", 10**6).index == 10**6


def test_arithmetic_splits_are_disjoint() -> None:
    train = {p.question for p in load_arithmetic("train", count=2000, steps=1, max_number=5)}
    test = {p.question for p in load_arithmetic("test", count=2000, steps=1, max_number=5)}
    assert len(train) > 200 and len(test) > 200
    assert not train & test
    assert {split_of_question(q) for q in train} == {"train"}
    assert {split_of_question(q) for q in test} == {"test"}


def test_load_problems_defaults_to_100_arithmetic_problems() -> None:
    problems = load_problems("arithmetic")
    assert len(problems) == 100
    assert problems[0] == get_problem("arithmetic", 0)
    assert problems[0].meta["split"] == "test"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"steps": 0}, "steps must be in 1..8, got 0"),
        ({"steps": 9}, "steps must be in 1..8, got 9"),
        ({"max_number": 4}, "max_number must be in 5..10000, got 4"),
        ({"max_number": 10_001}, "max_number must be in 5..10000"),
        ({"split": "dev"}, "valid splits: train, test"),
        ({"count": -1}, "count must be >= 0"),
        ({"data": "x.jsonl"}, "takes no data path"),
    ],
)
def test_arithmetic_rejects_bad_settings(kwargs: dict, message: str) -> None:
    with pytest.raises(TaskError, match=re.escape(message)):
        load_problems("arithmetic", **{"count": 3, **kwargs})
    assert issubclass(TaskError, ValueError)


def test_unknown_task_lists_the_valid_ones() -> None:
    with pytest.raises(TaskError, match="unknown task 'math'; valid tasks: arithmetic, gsm8k"):
        load_problems("math")
    with pytest.raises(TaskError, match="valid tasks"):
        get_problem("math", 0)
    assert TASKS == ("arithmetic", "gsm8k")


def test_negative_arithmetic_index_is_refused() -> None:
    with pytest.raises(TaskError, match="index -1 is out of range"):
        get_problem("arithmetic", -1)


def _write_gsm8k(path: Path, records: list[dict], blank_lines: bool = False) -> Path:
    separator = "\n\n" if blank_lines else "\n"
    path.write_text(separator.join(json.dumps(record) for record in records) + "\n", encoding="utf-8")
    return path


_RECORDS = [
    {"question": "Ann has 3 pens and buys 4. How many?", "answer": "3+4 = <<3+4=7>>7\n#### 7"},
    {"question": "Bo owes $1,500 and pays half. How much is left?", "answer": "1500/2=750\n#### 1,500"},
    {"question": "A debt of 5 grows by 2. Balance?", "answer": "The balance is -7.\n#### -7"},
]


def test_load_gsm8k_reads_questions_answers_and_solutions(tmp_path: Path) -> None:
    path = _write_gsm8k(tmp_path / "gsm.jsonl", _RECORDS, blank_lines=True)
    problems = load_gsm8k(path)
    assert [p.index for p in problems] == [0, 1, 2]
    assert [p.answer for p in problems] == ["7", "1500", "-7"]
    assert problems[0].question == _RECORDS[0]["question"]
    assert problems[0].meta == {"solution": _RECORDS[0]["answer"]}
    assert {p.task for p in problems} == {"gsm8k"}
    assert load_problems("gsm8k", data=str(path), count=2) == problems[:2]
    assert get_problem("gsm8k", 2, data=str(path)) == problems[2]


def test_gsm8k_index_out_of_range(tmp_path: Path) -> None:
    path = str(_write_gsm8k(tmp_path / "gsm.jsonl", _RECORDS))
    expected = "index 57 is out of range: the gsm8k file has 3 problems (0..2)"
    with pytest.raises(TaskError, match=re.escape(expected)):
        get_problem("gsm8k", 57, data=path)
    with pytest.raises(TaskError, match="index -1 is out of range"):
        get_problem("gsm8k", -1, data=path)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "no problems"),
        (b"\n  \n", "no problems"),
        (b'{"question": "q", "answer": "#### 1"}\nnot json\n', ":2: not JSON"),
        (b'["question", "answer"]\n', ":1: expected a JSON object"),
        (b'{"answer": "#### 1"}\n', ":1: missing 'question'"),
        (b'{"question": "q"}\n', ":1: missing 'answer'"),
        (b'{"question": "q", "answer": "it is 4"}\n', "does not end in '#### N'"),
        (b'{"question": "q", "answer": "#### four"}\n', "does not end in '#### N'"),
        (b"\xff\xfe\x00", "cannot read"),
    ],
)
def test_gsm8k_errors_name_the_file_and_line(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_bytes(content)
    with pytest.raises(TaskError, match=re.escape(message)) as raised:
        load_gsm8k(path)
    assert str(path) in str(raised.value)
    assert "\n" not in str(raised.value)


def test_gsm8k_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing.jsonl"
    with pytest.raises(TaskError, match="no such file"):
        load_problems("gsm8k", data=str(missing))
    with pytest.raises(TaskError, match="no such file"):
        load_gsm8k(tmp_path)


def test_gsm8k_hub_failure_points_at_data_path(monkeypatch: pytest.MonkeyPatch) -> None:
    # A None entry in sys.modules makes `import datasets` fail as if not installed.
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(TaskError, match="pass --data PATH"):
        load_problems("gsm8k", split="test")
    with pytest.raises(TaskError, match="valid splits: train, test"):
        load_gsm8k_from_hub("dev")


@pytest.mark.skipif(not SHARED_GSM8K.is_file(), reason="shared GSM8K copy not present")
def test_shared_gsm8k_copy_loads() -> None:
    problems = load_problems("gsm8k", data=str(SHARED_GSM8K), count=5)
    assert len(problems) == 5
    assert problems[0].answer == "72"
    for problem in problems:
        assert extract_answer(problem.meta["solution"]) == problem.answer
