"""The tool critic: checks the arithmetic a solution claims, with a safe calculator.

A claim is an equation with at least one operation on its left, written inline
("48 / 2 = 24", "3 + 4 * 2 = 11", "$1,200 x 0.5 = $600", "(3 + 4) × 2 = 14") or
as a GSM8K calculator annotation ("<<48/2=24>>"). Each side is evaluated exactly
by ``safe_eval``, which walks a parsed syntax tree of numbers, + - * / and
parentheses and rejects everything else; nothing is ever passed to ``eval``.
Text that is not plain arithmetic (names, calls, powers) is simply not a claim.
"""

from __future__ import annotations

import ast
import itertools
import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Literal, NamedTuple

from engine.types import TrajectoryRequest

MAX_EXPRESSION_CHARS = 200
"""Longer expressions are refused by ``safe_eval`` (bounds parsing work)."""

MAX_ABS_NUMBER = 10**15
"""Number literals larger than this in absolute value are refused by ``safe_eval``."""

RELATIVE_TOLERANCE = Fraction(5, 1000)
"""A non-integer result may be off by this fraction of max(1, |actual|) (rounding)."""

_BINARY_OPERATIONS = {
    ast.Add: lambda left, right: left + right,
    ast.Sub: lambda left, right: left - right,
    ast.Mult: lambda left, right: left * right,
    ast.Div: lambda left, right: left / right,
}

# Inline claims are found on a copy of the text whose runs of spaces and tabs are
# single spaces, so every optional space is one " ?". Expressions are matched as
# maximal runs (a run that starts always matches, and parentheses are bounded), and
# runs joined by "=" form a chain; this keeps the scan linear in the text length.
_NUMBER = r"\$?(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?%?|\$?\.\d+%?"
_ATOM = rf"[-\u2212]?(?:\( ?){{0,8}}(?:{_NUMBER})(?: ?\)){{0,8}}"
_OPERATOR = r"(?:[-\u2212+*\u00d7\u00f7/]|[xX](?= ?[\d$.(]))"
_EXPRESSION = re.compile(rf"(?<![\w.,:(]){_ATOM}(?: ?{_OPERATOR} ?{_ATOM})*")
_EQUALS = re.compile(r" ?= ?")
_GLUED_BEFORE = re.compile(r"(?:[\d)%+\-\u2212*\u00d7\u00f7/]|(?<![A-Za-z])[xX]) ?$")
_GLUED_AFTER = re.compile(r"[A-Za-z]|:\d| \d| ?[-\u2212+*\u00d7\u00f7/] ?[A-Za-z(]")
_ANNOTATION = re.compile(r"<<([^<>=\n]{1,200})=([^<>=\n]{1,60})>>")
_LATEX_OPERATORS = {r"\times": "\u00d7", r"\cdot": "\u00d7", r"\div": "\u00f7", r"\$": "$"}
_TO_PYTHON = str.maketrans({"\u00d7": "*", "x": "*", "X": "*", "\u00f7": "/", "\u2212": "-"})
_PERCENT = re.compile(r"(\d*\.?\d+)%")
_BARE_NUMBER = re.compile(r"[-+(]*(?:\d+\.?\d*|\.\d+)\)*")


@dataclass(frozen=True)
class Claim:
    """One checkable equation found in a text.

    Attributes:
        text: the equation as written (spaces collapsed), e.g. "$12 x 3 = $36".
        expression: the computed side in Python syntax, e.g. "12*3".
        claimed: the side it is claimed to equal, in Python syntax, e.g. "36".
        source: "inline" for a written equation, "annotation" for ``<<a op b=c>>``.
    """

    text: str
    expression: str
    claimed: str
    source: Literal["inline", "annotation"]


class ClaimCheck(NamedTuple):
    """The verdict on one claim: (expression, claimed value, actual value, ok)."""

    expression: str
    claimed: Fraction
    actual: Fraction
    ok: bool


@dataclass(frozen=True)
class ToolReport:
    """What the checker found in one text.

    Attributes:
        checked: number of claims checked, >= 0.
        correct: number of those whose arithmetic holds, in 0..checked.
        results: one ``ClaimCheck`` per claim, in text order (annotations first).
    """

    checked: int
    correct: int
    results: list[ClaimCheck] = field(default_factory=list)

    @property
    def score(self) -> float | None:
        """correct / checked in [0, 1], or None when the text made no claim."""
        return self.correct / self.checked if self.checked else None


def safe_eval(expr: str) -> Fraction:
    """The exact value of an arithmetic expression in Python syntax.

    Only numbers, ``+ - * /``, unary ``+``/``-`` and parentheses are allowed.

    Raises:
        ValueError: anything else (names, calls, attributes, ``**``, strings),
            a syntax error, division by zero, an expression longer than
            ``MAX_EXPRESSION_CHARS`` or a number larger than ``MAX_ABS_NUMBER``.
    """
    if len(expr) > MAX_EXPRESSION_CHARS:
        raise ValueError(f"expression longer than {MAX_EXPRESSION_CHARS} characters")
    try:
        tree = ast.parse(expr.strip(), mode="eval")
    except (SyntaxError, RecursionError, ValueError) as exc:
        raise ValueError(f"not an arithmetic expression: {expr!r}") from exc
    return _evaluate(tree.body)


def find_claims(text: str) -> list[Claim]:
    """The checkable equations of ``text``: annotations first, then inline ones.

    An inline chain "a = b = c" gives one claim per "=" (a = b, b = c), skipping
    pairs whose left side is a bare number. Inline equations that an annotation replaced
    (GSM8K writes "48/2 = <<48/2=24>>24") are not counted twice. Candidates that
    ``safe_eval`` refuses are not claims.
    """
    claims = []
    for match in _ANNOTATION.finditer(text):
        claim = _make_claim(match.group(0), match.group(1), match.group(2), "annotation")
        if claim is not None:
            claims.append(claim)
    # Replacing annotations with a line break cuts "48/2 = <<...>>24" apart.
    working = _ANNOTATION.sub("\n", text)
    for latex, symbol in _LATEX_OPERATORS.items():
        working = working.replace(latex, symbol)
    working = re.sub(r"[ \t]+", " ", working)
    for chain in _equation_chains(working):
        text_of_chain = working[chain[0].start() : chain[-1].end()]
        for left, right in itertools.pairwise(chain):
            claim = _make_claim(text_of_chain, left.group(0), right.group(0), "inline")
            if claim is not None:
                claims.append(claim)
    return claims


def check_claims(text: str) -> ToolReport:
    """Check every claim of ``text`` (see ``find_claims`` and ``claim_holds``)."""
    results = []
    for claim in find_claims(text):
        actual = safe_eval(claim.expression)
        claimed = safe_eval(claim.claimed)
        results.append(
            ClaimCheck(claim.expression, claimed, actual, claim_holds(actual, claimed, claim.claimed))
        )
    return ToolReport(checked=len(results), correct=sum(result.ok for result in results), results=results)


def claim_holds(actual: Fraction, claimed: Fraction, claimed_text: str) -> bool:
    """Whether ``claimed`` is a fair statement of ``actual``.

    Equal values always hold. When ``actual`` is an integer nothing else does, so
    off-by-one slips ("7 * 143 = 1000") are caught. When ``actual`` needs rounding,
    the claim holds if it equals ``actual`` rounded half-up to the claimed number's
    decimals ("10 / 3 = 3.33") or is within ``RELATIVE_TOLERANCE`` * max(1, |actual|)
    of it (a rounded intermediate carried on: "3.33 * 3 = 10").
    """
    if actual == claimed:
        return True
    if actual.denominator == 1:
        return False
    if _BARE_NUMBER.fullmatch(claimed_text):
        scale = 10 ** len(claimed_text.partition(".")[2].rstrip(")"))
        magnitude = math.floor(abs(actual) * scale + Fraction(1, 2))
        if Fraction(magnitude if actual > 0 else -magnitude, scale) == claimed:
            return True
    return abs(actual - claimed) <= RELATIVE_TOLERANCE * max(1, abs(actual))


class ArithmeticChecker:
    """An outcome critic scoring the share of a trajectory's arithmetic that is right."""

    def score_outcomes(self, requests: Sequence[TrajectoryRequest]) -> list[float | None]:
        """Per request, correct / checked claims in its steps (joined by newlines)
        in [0, 1], or None when the steps make no checkable claim. The question's
        own numbers are not the policy's claims and are not checked."""
        return [check_claims("\n".join(request.steps)).score for request in requests]


def _equation_chains(text: str) -> Iterator[list[re.Match[str]]]:
    """Runs of two or more expressions of ``text`` joined by "=", in order.

    An end expression glued to algebra or to more arithmetic ("S + 143 = ...",
    "... = 5A / 5", "(1 and 1/3) = ...", the mixed numbers "1 1/2" and "= 2 1/2")
    is only part of a term the checker cannot read, so it is dropped from its chain.
    """
    chain: list[re.Match[str]] = []
    for match in _EXPRESSION.finditer(text):
        if chain and _EQUALS.fullmatch(text, chain[-1].end(), match.start()):
            chain.append(match)
            continue
        yield from _trimmed(chain, text)
        chain = [match]
    yield from _trimmed(chain, text)


def _trimmed(chain: list[re.Match[str]], text: str) -> Iterator[list[re.Match[str]]]:
    """``chain`` without glued end expressions, when two or more expressions remain."""
    first = chain[0].group(0) if chain else ""
    if first and (
        _GLUED_BEFORE.search(text, max(0, chain[0].start() - 3), chain[0].start())
        or first.count(")") > first.count("(")
    ):
        chain = chain[1:]
    if chain and _GLUED_AFTER.match(text, chain[-1].end()):
        chain = chain[:-1]
    if len(chain) > 1:
        yield chain


def _make_claim(text: str, left: str, right: str, source: Literal["inline", "annotation"]) -> Claim | None:
    """A Claim of ``left = right`` when both sides evaluate and ``left`` has an operation.

    A bare number on the left ("Week 2 = 35 + 35") is nearly always a label, not
    a claim, so only the "a op b = c" direction counts.
    """
    expression, claimed = _to_python(left), _to_python(right)
    if _BARE_NUMBER.fullmatch(expression):
        return None
    try:
        safe_eval(expression)
        safe_eval(claimed)
    except ValueError:
        return None
    return Claim(text=text, expression=expression, claimed=claimed, source=source)


def _to_python(side: str) -> str:
    """One side of a written equation in Python syntax, its parentheses balanced.

    Drops spaces, ``$`` and thousands commas; × x ÷ − become * * / -; "20%" becomes
    "(20/100)". An unmatched "(" at the start or ")" at the end belongs to the
    surrounding prose ("(so 3 + 4 = 7)") and is dropped.
    """
    expression = re.sub(r"[\s$,]", "", side).translate(_TO_PYTHON)
    expression = _PERCENT.sub(r"(\1/100)", expression)
    unmatched = expression.count("(") - expression.count(")")
    if unmatched > 0:
        leading = len(expression) - len(expression.lstrip("("))
        return expression[min(unmatched, leading) :]
    if unmatched < 0:
        trailing = len(expression) - len(expression.rstrip(")"))
        return expression[: len(expression) - min(-unmatched, trailing)]
    return expression


def _evaluate(node: ast.expr) -> Fraction:
    """The exact value of an allowed syntax-tree node; ValueError for any other node."""
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        # repr gives the literal's shortest decimal, so 0.1 is exactly 1/10.
        value = Fraction(repr(node.value))
        if abs(value) > MAX_ABS_NUMBER:
            raise ValueError(f"number {node.value!r} is larger than {MAX_ABS_NUMBER}")
        return value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        operand = _evaluate(node.operand)
        return -operand if isinstance(node.op, ast.USub) else operand
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY_OPERATIONS:
        left, right = _evaluate(node.left), _evaluate(node.right)
        if isinstance(node.op, ast.Div) and right == 0:
            raise ValueError("division by zero")
        return _BINARY_OPERATIONS[type(node.op)](left, right)
    raise ValueError(f"not allowed in arithmetic: {type(node).__name__}")
