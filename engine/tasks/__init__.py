"""Where problems come from: one module per task, and one way to ask for them.

``load_problems`` and ``get_problem`` are what the CLI and the app call; they pick
the task's loader. Every task error is a ``TaskError`` whose one-line message
says what to fix.
"""

from __future__ import annotations

from engine.errors import TaskError
from engine.types import Problem

TASKS = ("arithmetic", "gsm8k")
"""The task names ``load_problems`` accepts; "arithmetic" is the default task."""

DEFAULT_ARITHMETIC_COUNT = 100
"""How many arithmetic problems ``load_problems`` makes when ``count`` is None."""


def load_problems(
    task: str,
    *,
    split: str = "test",
    count: int | None = None,
    data: str | None = None,
    seed: int = 0,
    steps: int = 2,
    max_number: int = 20,
) -> list[Problem]:
    """The problems of one task split, in index order.

    Args:
        task: one of ``TASKS``.
        split: "train" or "test".
        count: how many problems, >= 0: arithmetic makes exactly this many
            (default 100); gsm8k keeps the first ``count`` (default all).
        data: gsm8k only: path to a GSM8K-format JSONL file; without it the
            split is fetched from the Hugging Face hub (needs ``datasets``, online).
        seed: arithmetic only: which of the unlimited generated splits.
        steps: arithmetic only: operations per problem, 1..8.
        max_number: arithmetic only: largest number in a question, 5..10000.

    Raises:
        TaskError: unknown task, bad setting, or unreadable data.
    """
    # The task modules import TaskError from this package, so they are imported
    # here rather than at the top to keep the package importable from them.
    if count is not None and count < 0:
        raise TaskError(f"count must be >= 0, got {count}")
    if task == "arithmetic":
        from engine.tasks.arithmetic import load_arithmetic

        _reject_data_path(task, data)
        count = DEFAULT_ARITHMETIC_COUNT if count is None else count
        return load_arithmetic(split, count=count, seed=seed, steps=steps, max_number=max_number)
    if task == "gsm8k":
        problems = _load_gsm8k(split, data)
        return problems if count is None else problems[:count]
    raise TaskError(f"unknown task {task!r}; valid tasks: {', '.join(TASKS)}")


def get_problem(
    task: str,
    index: int,
    *,
    split: str = "test",
    data: str | None = None,
    seed: int = 0,
    steps: int = 2,
    max_number: int = 20,
) -> Problem:
    """Problem ``index`` (0-based) of a task split; same settings as ``load_problems``.

    Arithmetic indexes are unbounded (any index >= 0 is generated on its own);
    gsm8k indexes run over the file's or split's problems.

    Raises:
        TaskError: unknown task, bad setting, unreadable data, or an index out of
            range (negative included).
    """
    if task == "arithmetic":
        from engine.tasks.arithmetic import arithmetic_problem

        _reject_data_path(task, data)
        return arithmetic_problem(split, index, seed=seed, steps=steps, max_number=max_number)
    if task == "gsm8k":
        problems = _load_gsm8k(split, data)
        if not 0 <= index < len(problems):
            source = "file" if data is not None else f"{split} split"
            raise TaskError(
                f"index {index} is out of range: the gsm8k {source} has {len(problems)} problems "
                f"(0..{len(problems) - 1})"
            )
        return problems[index]
    raise TaskError(f"unknown task {task!r}; valid tasks: {', '.join(TASKS)}")


def _load_gsm8k(split: str, data: str | None) -> list[Problem]:
    """The gsm8k problems of ``data`` when given, else of the hub's ``split``."""
    from engine.tasks.gsm8k import load_gsm8k, load_gsm8k_from_hub

    return load_gsm8k(data) if data is not None else load_gsm8k_from_hub(split)


def _reject_data_path(task: str, data: str | None) -> None:
    """Refuse a data path for a generated task rather than silently ignoring it."""
    if data is not None:
        raise TaskError(f"the {task} task is generated and takes no data path; drop --data {data}")
