"""Procedurally generated multi-step word problems with exact integer answers.

A problem starts from one quantity and applies ``steps`` operations to it, one
sentence each (+, -, *, and / only where it divides exactly), then asks for the
final quantity. Every intermediate value is a positive integer, so the answer is
one too. Difficulty is ``steps`` (1..8) and ``max_number`` (5..10000, the largest
number written in a question).

Splits are unlimited and reproducible: problem ``index`` of ``(split, seed)`` is
drawn from its own RNG, so any one problem is cheap to make. Train and test are
disjoint by construction: a question belongs to the train split when the first
byte of its SHA-256 is even and to the test split when it is odd, and a draw that
lands in the other split's half is redrawn.
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
from dataclasses import dataclass

from engine.errors import TaskError
from engine.types import Problem

STEPS_RANGE = (1, 8)
"""Valid ``steps`` values, inclusive."""

MAX_NUMBER_RANGE = (5, 10_000)
"""Valid ``max_number`` values, inclusive."""

SPLITS = ("train", "test")
"""Valid splits; a question text lives in exactly one of them."""

NAMES = (
    "Ava", "Ben", "Chloe", "Diego", "Emma", "Farah", "Gus", "Hana", "Ivan", "Jade", "Kofi", "Lena",
    "Mateo", "Nora", "Omar", "Priya", "Quinn", "Rosa", "Sam", "Tariq", "Uma", "Victor", "Wen", "Zoe",
)  # fmt: skip


@dataclass(frozen=True)
class _Theme:
    """Sentence templates of one story; each holds ``{name}`` and ``{n}`` fields.

    ``add``/``subtract``/``multiply``/``divide`` sentences change the quantity by
    ``n``; the story ``start``s with ``n`` of something and ends with ``question``.
    """

    start: str
    add: tuple[str, ...]
    subtract: tuple[str, ...]
    multiply: tuple[str, ...]
    divide: tuple[str, ...]
    question: str


THEMES = (
    _Theme(
        start="{name} has {n} marbles.",
        add=("{name} wins {n} more marbles in a game.", "A friend gives {name} {n} marbles."),
        subtract=("{name} loses {n} marbles in the park.", "{name} gives {n} marbles to a cousin."),
        multiply=("After a week of trading, {name} has {n} times as many marbles as before.",),
        divide=("{name} sorts the marbles into {n} equal bags and keeps only one bag.",),
        question="How many marbles does {name} have now?",
    ),
    _Theme(
        start="{name} has ${n} in a wallet.",
        add=("{name} earns ${n} walking dogs.", "A grandparent gives {name} ${n}."),
        subtract=("{name} buys a book for ${n}.", "{name} spends ${n} on lunch."),
        multiply=("After a month of saving, {name} has {n} times as much money as before.",),
        divide=("{name} splits the money equally into {n} envelopes and keeps one envelope.",),
        question="How many dollars does {name} have now?",
    ),
    _Theme(
        start="{name} bakes {n} cookies.",
        add=("{name} bakes another {n} cookies.", "A neighbour brings {name} {n} cookies."),
        subtract=("The family eats {n} of {name}'s cookies.", "{name} gives {n} cookies to a teacher."),
        multiply=("{name} bakes more batches until there are {n} times as many cookies.",),
        divide=("{name} packs the cookies equally into {n} boxes and keeps one box.",),
        question="How many cookies does {name} have now?",
    ),
    _Theme(
        start="{name} picks {n} apples at the orchard.",
        add=("{name} picks {n} more apples.", "The farmer adds {n} apples to {name}'s basket."),
        subtract=("{name} sells {n} apples at the market.", "{name} shares {n} apples with the class."),
        multiply=("By the end of the season, {name} has {n} times as many apples.",),
        divide=("{name} shares the apples equally among {n} baskets and keeps one basket.",),
        question="How many apples does {name} have now?",
    ),
    _Theme(
        start="{name} has {n} stickers in an album.",
        add=("{name} buys a pack of {n} stickers.", "{name} collects {n} more stickers at school."),
        subtract=("{name} swaps away {n} stickers.", "{name} gives {n} stickers to a sibling."),
        multiply=("{name}'s collection grows to {n} times its size.",),
        divide=("{name} splits the stickers equally among {n} albums and keeps one album.",),
        question="How many stickers does {name} have now?",
    ),
)
"""The stories problems are told in (collecting, buying, baking, picking, sharing)."""


def generate_problem(rng: random.Random, *, steps: int, max_number: int) -> Problem:
    """One word problem drawn from ``rng``, with ``index`` None and no split.

    Args:
        rng: the source of every choice; the same state gives the same problem.
        steps: operations applied to the starting quantity, 1..8.
        max_number: largest number written in the question, 5..10000; running
            totals stay at most ``max_number ** 2`` except through additions.

    Returns:
        A Problem whose ``answer`` is the final quantity (a positive integer) and
        whose ``meta`` holds ``steps``, ``max_number`` and ``solution`` (one
        "a op b = c" line per step, then "The answer is c.").

    Raises:
        TaskError: ``steps`` or ``max_number`` out of range.
    """
    _check_difficulty(steps, max_number)
    theme = rng.choice(THEMES)
    name = rng.choice(NAMES)
    total = rng.randint(1, max_number)
    sentences = [theme.start.format(name=name, n=total)]
    solution = []
    for _ in range(steps):
        operation, operand, result = _draw_step(rng, total, max_number)
        sentences.append(rng.choice(getattr(theme, operation)).format(name=name, n=operand))
        solution.append(f"{total} {_SYMBOLS[operation]} {operand} = {result}")
        total = result
    sentences.append(theme.question.format(name=name))
    solution.append(f"The answer is {total}.")
    return Problem(
        question=" ".join(sentences),
        answer=str(total),
        task="arithmetic",
        meta={"steps": steps, "max_number": max_number, "solution": "\n".join(solution)},
    )


def arithmetic_problem(
    split: str, index: int, *, seed: int = 0, steps: int = 2, max_number: int = 20
) -> Problem:
    """Problem ``index`` (>= 0) of the ``(split, seed)`` arithmetic split.

    Equal to ``load_arithmetic(split, count=index + 1, ...)[index]`` but made alone.

    Raises:
        TaskError: unknown split, negative index, or difficulty out of range.
    """
    if split not in SPLITS:
        raise TaskError(f"unknown arithmetic split {split!r}; valid splits: {', '.join(SPLITS)}")
    if index < 0:
        raise TaskError(f"index {index} is out of range: arithmetic problems are numbered from 0")
    _check_difficulty(steps, max_number)
    attempt = 0
    while True:
        rng = random.Random(f"arithmetic/{split}/{seed}/{index}/{attempt}")
        problem = generate_problem(rng, steps=steps, max_number=max_number)
        if split_of_question(problem.question) == split:
            meta = {**problem.meta, "split": split, "seed": seed}
            return dataclasses.replace(problem, index=index, meta=meta)
        attempt += 1


def load_arithmetic(
    split: str, *, count: int, seed: int = 0, steps: int = 2, max_number: int = 20
) -> list[Problem]:
    """The first ``count`` (>= 0) problems of the ``(split, seed)`` arithmetic split.

    Args:
        split: "train" or "test"; no question text appears in both.
        count: how many problems, indexes 0..count-1.
        seed: which split of the unlimited family; any integer.
        steps: operations per problem, 1..8.
        max_number: largest number in a question, 5..10000.

    Raises:
        TaskError: unknown split, negative count, or difficulty out of range.
    """
    if count < 0:
        raise TaskError(f"count must be >= 0, got {count}")
    return [
        arithmetic_problem(split, index, seed=seed, steps=steps, max_number=max_number)
        for index in range(count)
    ]


def split_of_question(question: str) -> str:
    """The one split ("train" or "test") a question text may belong to."""
    return SPLITS[hashlib.sha256(question.encode()).digest()[0] % 2]


def _check_difficulty(steps: int, max_number: int) -> None:
    """Raise TaskError naming the valid range when a difficulty knob is out of it."""
    if not STEPS_RANGE[0] <= steps <= STEPS_RANGE[1]:
        raise TaskError(f"steps must be in {STEPS_RANGE[0]}..{STEPS_RANGE[1]}, got {steps}")
    if not MAX_NUMBER_RANGE[0] <= max_number <= MAX_NUMBER_RANGE[1]:
        raise TaskError(
            f"max_number must be in {MAX_NUMBER_RANGE[0]}..{MAX_NUMBER_RANGE[1]}, got {max_number}"
        )


_SYMBOLS = {"add": "+", "subtract": "-", "multiply": "*", "divide": "/"}
"""Each operation's symbol in a solution line; the keys name ``_Theme`` fields."""


def _draw_step(rng: random.Random, total: int, max_number: int) -> tuple[str, int, int]:
    """One operation on ``total`` as (operation name, operand, new total).

    Only operations that keep the total a positive integer within bounds are
    drawn: subtraction leaves at least 1, multiplication keeps the total at most
    ``max_number ** 2``, division needs an exact divisor in 2..max_number below the total.
    """
    cap = max_number**2
    divisors = _divisors(total, max_number)
    feasible = ["add"]
    if total >= 2:
        feasible.append("subtract")
    if total * 2 <= cap:
        feasible.append("multiply")
    if divisors:
        feasible.append("divide")
    operation = rng.choice(feasible)
    if operation == "add":
        operand = rng.randint(1, max_number)
        return operation, operand, total + operand
    if operation == "subtract":
        operand = rng.randint(1, min(max_number, total - 1))
        return operation, operand, total - operand
    if operation == "multiply":
        operand = rng.randint(2, min(max_number, cap // total))
        return operation, operand, total * operand
    operand = rng.choice(divisors)
    return operation, operand, total // operand


def _divisors(total: int, largest: int) -> list[int]:
    """The divisors of ``total`` in 2..largest, ascending, short of ``total`` itself
    (dividing a total by itself makes a dull step)."""
    found = set()
    candidate = 1
    while candidate * candidate <= total:
        if total % candidate == 0:
            found.update((candidate, total // candidate))
        candidate += 1
    return sorted(d for d in found if 2 <= d <= largest and d < total)
