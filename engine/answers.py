"""Strict final-answer extraction and comparison.

A solution's answer is what it *states* as its answer: the last ``#### N``
(GSM8K style), else the last "The answer is N" / "answer: N" / "Answer = N",
else the last ``\\boxed{N}``. A solution that states no answer has none; we never
guess "the last number in the text", because that would grade unfinished
solutions as if they had answered.

Answers are compared as exact rationals, so "0.5", "1/2" and "$0.50" all match.
"""

from __future__ import annotations

import re
from fractions import Fraction

_MINUS_SIGNS = "-\u2212\u2013"
"""Hyphen-minus, the Unicode minus sign and the en dash, all read as "minus"."""

_MAX_NUMBER_CHARS = 100
"""Longer strings are not numbers we grade; this also bounds ``Fraction`` work."""

_UNSIGNED = r"(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?|\.\d+"
"""An unsigned decimal, with optional thousands commas ("1,234.5", "007", ".5")."""

_NUMBER_TEXT = re.compile(
    rf"(?P<sign>[{_MINUS_SIGNS}+]?)\s*\$?\s*(?P<inner_sign>[{_MINUS_SIGNS}]?)\s*"
    rf"(?P<numerator>{_UNSIGNED})(?:\s*/\s*(?P<denominator>{_UNSIGNED}))?\s*%?\s*\.?"
)
"""A whole answer string: sign, ``$``, number, optional ``/ denominator``, ``%``, period."""

_VALUE = (
    rf"[{_MINUS_SIGNS}]?\s*\$?\s*[{_MINUS_SIGNS}]?\s*"
    rf"(?:\\[dt]?frac\{{\s*(?:{_UNSIGNED})\s*\}}\{{\s*(?:{_UNSIGNED})\s*\}}"
    rf"|(?:{_UNSIGNED})(?:\s*/\s*(?:{_UNSIGNED}))?)\s*%?"
)
"""A stated answer inside a text; trailing units and words are simply not captured."""

_DECORATION = r"[\s*_:$]*(?:\\[(\[])?\s*(?:\\boxed\{)?\s*"
"""What may sit between an answer marker and its number: spaces, bold, ``$``, ``\\(``."""

_LATEX_FRACTION = re.compile(r"\\[dt]?frac\{\s*([^{}]+?)\s*\}\{\s*([^{}]+?)\s*\}")

_ANSWER_PATTERNS = (
    re.compile(rf"####{_DECORATION}(?P<value>{_VALUE})"),
    re.compile(rf"\banswer\s*(?:is\s*:?|:|=){_DECORATION}(?P<value>{_VALUE})", re.IGNORECASE),
    re.compile(rf"\\boxed\{{\s*(?P<value>{_VALUE})\s*\}}"),
)
"""Answer markers in priority order; within one marker the last occurrence wins."""


def extract_answer(text: str) -> str | None:
    """The final answer a solution states, as a normalised number string.

    Looks, in priority order, for the last ``#### N``, the last "The answer is N"
    (also "answer: N", "Answer = N", any case), and the last ``\\boxed{N}``.
    ``N`` may carry commas, ``$``, a sign (``-`` or ``\u2212``), decimals, a fraction
    (``3/4`` or ``\\frac{3}{4}``), a percent sign (dropped: "25%" gives "25"),
    markdown bold and trailing units ("12 apples").

    Returns:
        ``normalize_number`` of the stated answer, or None when the text states
        no numeric answer.
    """
    for pattern in _ANSWER_PATTERNS:
        for match in reversed(list(pattern.finditer(text))):
            value = _LATEX_FRACTION.sub(r"\1/\2", match.group("value"))
            normalised = normalize_number(value)
            if normalised is not None:
                return normalised
    return None


def normalize_number(s: str) -> str | None:
    """The canonical string of a number, or None when ``s`` is not one number.

    Integers lose commas and leading zeros ("1,000" -> "1000", "007" -> "7");
    decimals lose trailing zeros ("5.50" -> "5.5", "3.0" -> "3"); fractions are
    reduced and written as decimals when that is exact ("3/4" -> "0.75") and as
    "p/q" otherwise ("2/6" -> "1/3"); negatives keep one leading "-" ("\u22123" -> "-3").
    ``$``, ``%``, markdown bold, surrounding spaces and a trailing period are ignored.
    """
    value = _parse_number(s)
    return None if value is None else _format_number(value)


def answers_match(predicted: str | None, gold: str | None) -> bool:
    """Whether two answers are the same number (exact rational comparison).

    False when either is None or is not a number; "0.5" matches "1/2".
    """
    if predicted is None or gold is None:
        return False
    predicted_value = _parse_number(predicted)
    gold_value = _parse_number(gold)
    return predicted_value is not None and predicted_value == gold_value


def _parse_number(s: str) -> Fraction | None:
    """The exact value of a number string (see ``normalize_number``), or None."""
    text = s.replace("**", "").strip()
    if len(text) > _MAX_NUMBER_CHARS:
        return None
    match = _NUMBER_TEXT.fullmatch(text)
    if match is None:
        return None
    signs = [sign for sign in (match.group("sign"), match.group("inner_sign")) if sign]
    if len(signs) > 1:
        return None
    value = Fraction(match.group("numerator").replace(",", ""))
    if match.group("denominator") is not None:
        denominator = Fraction(match.group("denominator").replace(",", ""))
        if denominator == 0:
            return None
        value /= denominator
    return -value if signs and signs[0] in _MINUS_SIGNS else value


def _format_number(value: Fraction) -> str:
    """``value`` as a plain decimal when it has a finite one, else as "p/q"."""
    remaining = value.denominator
    for prime in (2, 5):
        while remaining % prime == 0:
            remaining //= prime
    if remaining != 1:
        return f"{value.numerator}/{value.denominator}"
    places = 0
    while (value * 10**places).denominator != 1:
        places += 1
    scaled = (value * 10**places).numerator
    sign = "-" if scaled < 0 else ""
    digits = str(abs(scaled)).rjust(places + 1, "0")
    if places == 0:
        return f"{sign}{digits}"
    return f"{sign}{digits[:-places]}.{digits[-places:]}"
