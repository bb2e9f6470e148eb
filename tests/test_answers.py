"""Strict answer extraction, normalisation and comparison."""

from __future__ import annotations

import pytest

from engine.answers import answers_match, extract_answer, normalize_number


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Natalia sold 48+24 = 72 clips.\n#### 72", "72"),
        ("#### 1,234", "1234"),
        ("#### -7", "-7"),
        ("The answer is 42.", "42"),
        ("So the answer is 42", "42"),
        ("THE ANSWER IS 9", "9"),
        ("Final answer: 17 apples", "17"),
        ("Answer = 8", "8"),
        ("The answer is: 15", "15"),
        ("The answer is 12 apples.", "12"),
        ("The answer is $5.50.", "5.5"),
        ("The answer is 5 dollars", "5"),
        ("The answer is $1,200", "1200"),
        ("The answer is 1,000,000.", "1000000"),
        ("The answer is 3.0", "3"),
        ("The answer is 0.25", "0.25"),
        ("The answer is .5", "0.5"),
        ("The answer is -3.", "-3"),
        ("The answer is \u22123", "-3"),
        ("The answer is -$5", "-5"),
        ("The answer is 3/4", "0.75"),
        ("The answer is 2/6 of the cake", "1/3"),
        ("The answer is 25%.", "25"),
        ("The answer is **42**.", "42"),
        ("**Answer:** 7", "7"),
        ("The answer is 007", "7"),
        ("The final answer is $\\boxed{12}$.", "12"),
        ("so we get \\boxed{\\frac{3}{4}}", "0.75"),
        ("The answer is \\(42\\)", "42"),
        ("The answer is 4. Wait, no: the answer is 5.", "5"),
        ("#### 7\nThe answer is 9", "7"),
        ("The answer is 3.\n\\boxed{4}", "3"),
        ("3 + 4 = 7, so she has 7 apples.", None),
        ("There are 12 eggs and 3 cartons.", None),
        ("The answer is unknown.", None),
        ("", None),
        ("The answer is 1/0", None),
        ("The answers are 3 and 4", None),
    ],
)
def test_extract_answer(text: str, expected: str | None) -> None:
    assert extract_answer(text) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("1,000", "1000"),
        ("007", "7"),
        ("5.50", "5.5"),
        ("3.0", "3"),
        ("3/4", "0.75"),
        ("1/3", "1/3"),
        ("-2/6", "-1/3"),
        ("-3", "-3"),
        ("\u22123", "-3"),
        ("-0", "0"),
        ("0.000", "0"),
        ("$1,234.50", "1234.5"),
        (" 42. ", "42"),
        ("**42**", "42"),
        ("12%", "12"),
        ("1.5/3", "0.5"),
        ("0.125", "0.125"),
        ("12 apples", None),
        ("12 34", None),
        ("--3", None),
        ("1,23", None),
        ("three", None),
        ("", None),
        ("1" * 200, None),
    ],
)
def test_normalize_number(raw: str, expected: str | None) -> None:
    assert normalize_number(raw) == expected


@pytest.mark.parametrize(
    ("predicted", "gold", "expected"),
    [
        ("0.5", "1/2", True),
        ("1,000", "1000", True),
        ("$5.50", "5.5", True),
        ("3.0", "3", True),
        ("-3", "\u22123", True),
        ("0.33", "1/3", False),
        ("72", "73", False),
        ("-3", "3", False),
        (None, "3", False),
        ("3", None, False),
        (None, None, False),
        ("apples", "apples", False),
    ],
)
def test_answers_match(predicted: str | None, gold: str | None, expected: bool) -> None:
    assert answers_match(predicted, gold) is expected


def test_extracted_answers_match_their_gold() -> None:
    solution = "She earns 12/60 = $0.2 per minute, so 0.2 x 50 = $10.\nThe answer is $10.00."
    assert answers_match(extract_answer(solution), normalize_number("10"))
