"""The tool critic: claims found in text, checked by a safe calculator."""

from __future__ import annotations

import time
from fractions import Fraction
from pathlib import Path

import pytest

from engine.critics.tool import ArithmeticChecker, check_claims, claim_holds, find_claims, safe_eval
from engine.types import TrajectoryRequest


@pytest.mark.parametrize(
    ("expr", "value"),
    [
        ("3 + 4 * 2", Fraction(11)),
        ("(3 + 4) * 2", Fraction(14)),
        ("10 / 4", Fraction(5, 2)),
        ("0.1 + 0.2", Fraction(3, 10)),
        ("-3 + +5", Fraction(2)),
        ("2 - -2", Fraction(4)),
        (".5 * 8", Fraction(4)),
    ],
)
def test_safe_eval_is_exact(expr: str, value: Fraction) -> None:
    assert safe_eval(expr) == value


@pytest.mark.parametrize(
    "expr",
    [
        "__import__('os').system('echo pwned')",
        "open('x').read()",
        "2 ** 10",
        "9 ** 9 ** 9",
        "x + 1",
        "'a' * 3",
        "[1, 2]",
        "1 if 1 else 2",
        "1 // 2",
        "7 % 3",
        "True + 1",
        "1j * 2",
        "1 / 0",
        "1 +",
        "1" * 16 + " + 1",
        "1e400 - 1",
        "1 + " * 60 + "1",
        "(" * 300 + "1" + ")" * 300,
    ],
)
def test_safe_eval_refuses_everything_else(expr: str) -> None:
    with pytest.raises(ValueError):
        safe_eval(expr)


def test_inline_claims_are_found_and_normalised() -> None:
    text = "She buys 3 + 4 * 2 = 11 pens, then (3 + 4) × 2 = 14 and $1,200 x 0.5 = $600.\nSo 10 ÷ 4 = 2.5"
    claims = find_claims(text)
    assert [(c.expression, c.claimed) for c in claims] == [
        ("3+4*2", "11"),
        ("(3+4)*2", "14"),
        ("1200*0.5", "600"),
        ("10/4", "2.5"),
    ]
    assert {c.source for c in claims} == {"inline"}
    report = check_claims(text)
    assert (report.checked, report.correct, report.score) == (4, 4, 1.0)


def test_wrong_claims_are_detected() -> None:
    report = check_claims("First 7 * 143 = 1000.\nThen 12 - 5 = 7.\nFinally 7/2 = 3 and 5 - 8 = -2.")
    assert [(r.expression, r.ok) for r in report.results] == [
        ("7*143", False),
        ("12-5", True),
        ("7/2", False),
        ("5-8", False),
    ]
    assert report.results[0].actual == 1001 and report.results[0].claimed == 1000
    assert report.score == pytest.approx(0.25)


def test_gsm8k_annotations_count_once() -> None:
    text = (
        "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
        "Weng earns 12/60 = $<<12/60=0.2>>0.2 per minute, so 0.2 x 50 = $<<0.2*50=10>>10.\n"
        "Then 5 + 5 = <<5+5=11>>11."
    )
    claims = find_claims(text)
    assert [(c.expression, c.claimed, c.source) for c in claims] == [
        ("48/2", "24", "annotation"),
        ("12/60", "0.2", "annotation"),
        ("0.2*50", "10", "annotation"),
        ("5+5", "11", "annotation"),
    ]
    assert [r.ok for r in check_claims(text).results] == [True, True, True, False]


def test_chains_claim_each_equality() -> None:
    claims = find_claims("2 * (3 + 4) = 2 * 7 = 14")
    assert [(c.expression, c.claimed) for c in claims] == [("2*(3+4)", "2*7"), ("2*7", "14")]
    assert check_claims("3 + 4 = 7 + 2 = 9").correct == 1


@pytest.mark.parametrize(
    "text",
    [
        "There are 12 eggs and 3 cartons.",
        "x = 5",
        "Week 2 = 35 + 35",
        "S + 143 = 200",
        "3x - 5 = 16",
        "so 100/5 = 5A/5",
        "each eats 1 1/2 = 12 rolls",
        "the sun sets at 6:00+48=6:48",
        "x2 + 3 = 5",
        "2 = 2",
    ],
)
def test_non_claims_are_ignored(text: str) -> None:
    assert find_claims(text) == []
    assert check_claims(text).score is None


def test_percent_and_latex_claims() -> None:
    report = check_claims("50 * 20% = 10 and 3 \\times 4 = 12 and 8 \\div 2 = 5")
    assert [(r.expression, r.ok) for r in report.results] == [
        ("50*(20/100)", True),
        ("3*4", True),
        ("8/2", False),
    ]


@pytest.mark.parametrize(
    ("expr", "claimed", "ok"),
    [
        ("10/3", "3.33", True),
        ("10/3", "3.3", True),
        ("10/3", "3.34", True),
        ("10/3", "3.4", False),
        ("2/3", "0.67", True),
        ("-2/3", "-0.67", True),
        ("3.33*3", "10", True),
        ("7*143", "1000", False),
        ("1001/7", "143.5", False),
        ("7/2", "3", False),
        ("7/2", "4", True),
    ],
)
def test_rounded_claims(expr: str, claimed: str, ok: bool) -> None:
    assert claim_holds(safe_eval(expr), safe_eval(claimed), claimed) is ok


def test_injection_attempts_are_not_evaluated(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    payload = f"__import__('os').system('touch {marker}')"
    text = f"{payload} = 3\n<<{payload}=3>>\n<<open('{marker}', 'w')=1>>\n1 + 1 = {payload}"
    assert find_claims(text) == []
    assert check_claims(text).checked == 0
    assert not marker.exists()


def test_huge_numbers_are_not_claims() -> None:
    assert find_claims("9999999999999999 + 1 = 10000000000000000") == []
    assert find_claims("<<1e400+1=2>>") == []
    assert find_claims("<<" + "1+" * 150 + "1=151>>") == []


def test_degenerate_text_is_scanned_in_linear_time() -> None:
    texts = ["1 + " * 20_000, "( " * 20_000 + "1", "$1 x " * 20_000 + "=", "1 + 1 = " * 5_000]
    start = time.perf_counter()
    counts = [len(find_claims(text)) for text in texts]
    assert counts == [0, 0, 0, 4_999]
    assert time.perf_counter() - start < 2.0


def test_checker_scores_trajectories() -> None:
    requests = [
        TrajectoryRequest("q", ("3 + 4 = 7\n", "7 * 2 = 14\n", "The answer is 14."), finished=True),
        TrajectoryRequest("q", ("3 + 4 = 8\n", "8 * 2 = 16\n"), finished=False),
        TrajectoryRequest("2 + 2 = 5?", ("I think so.",), finished=True),
        TrajectoryRequest("q", ("3 + 4", " = 8"), finished=False),
    ]
    assert ArithmeticChecker().score_outcomes(requests) == [1.0, 0.5, None, None]
