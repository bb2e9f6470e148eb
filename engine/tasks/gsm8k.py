"""GSM8K-format problems: from a JSONL file, or from the Hugging Face hub when online.

Each record has a ``question`` and an ``answer`` whose text ends in ``#### N``;
the text is kept as the reference solution and ``N`` becomes the gold answer.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from engine.answers import normalize_number
from engine.errors import TaskError
from engine.types import Problem

HUB_DATASET = ("openai/gsm8k", "main")
"""The hub dataset name and configuration ``load_gsm8k_from_hub`` reads."""

HUB_SPLITS = ("train", "test")
"""The splits the hub dataset has."""


def load_gsm8k(path: str | Path) -> list[Problem]:
    """The problems of a GSM8K-format JSONL file, in line order.

    Blank lines are skipped; ``Problem.index`` counts the other lines from 0.

    Raises:
        TaskError: with a one-line message naming the file (and line) when the
            file is missing or unreadable, has no problems, or has a line that is
            not a JSON object with a ``question`` and an ``answer`` ending in ``#### N``.
    """
    path = Path(path)
    if not path.is_file():
        raise TaskError(f"{path}: no such file; pass the path of a GSM8K-format JSONL file")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise TaskError(f"{path}: cannot read the file ({exc})") from exc
    problems = []
    for line_number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{line_number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise TaskError(f"{where}: not JSON ({exc.msg})") from exc
        problems.append(_problem_from_record(record, len(problems), where))
    if not problems:
        raise TaskError(f"{path}: no problems in the file (it is empty)")
    return problems


def load_gsm8k_from_hub(split: str) -> list[Problem]:
    """The problems of the hub's GSM8K ``split`` ("train" or "test"), in order.

    Needs the ``datasets`` package and either network access or its cache.

    Raises:
        TaskError: unknown split, ``datasets`` missing, or the download failing.
    """
    if split not in HUB_SPLITS:
        raise TaskError(f"unknown gsm8k split {split!r}; valid splits: {', '.join(HUB_SPLITS)}")
    try:
        import datasets
    except ImportError as exc:
        raise TaskError(
            "gsm8k from the hub needs the `datasets` package, which is not installed; "
            "pass --data PATH to a GSM8K-format JSONL file instead"
        ) from exc
    try:
        records = datasets.load_dataset(*HUB_DATASET, split=split)
    except Exception as exc:  # any download or cache failure means the same to the user
        raise TaskError(
            f"could not load {HUB_DATASET[0]} from the hub ({type(exc).__name__}); offline? "
            "pass --data PATH to a GSM8K-format JSONL file instead"
        ) from exc
    where = f"{HUB_DATASET[0]} {split}"
    return [_problem_from_record(record, index, f"{where}[{index}]") for index, record in enumerate(records)]


def _problem_from_record(record: Any, index: int, where: str) -> Problem:
    """The Problem of one GSM8K record; ``where`` names it in error messages."""
    if not isinstance(record, dict):
        raise TaskError(f"{where}: expected a JSON object with 'question' and 'answer'")
    question = record.get("question")
    solution = record.get("answer")
    if not isinstance(question, str) or not question.strip():
        raise TaskError(f"{where}: missing 'question' (a non-empty string)")
    if not isinstance(solution, str):
        raise TaskError(f"{where}: missing 'answer' (a string ending in '#### N')")
    _, marker, final = solution.rpartition("####")
    answer = normalize_number(final) if marker else None
    if answer is None:
        raise TaskError(f"{where}: the answer does not end in '#### N' with N a number")
    return Problem(question=question, answer=answer, task="gsm8k", index=index, meta={"solution": solution})
