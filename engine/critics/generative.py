"""Generative critics: the policy model asked a rubric question, score = p("True").

The prompt puts the problem first, then the steps in order, then the question
(for the PRM: about the newest step, named by its number). So a child's prompt
extends its parent's up to the closing question, siblings share everything
before their own step, and a backend that keeps a rubric's last prompt cached
(``llamacpp``'s rubric sequences, ``hf``'s prefix cache) reads little more than
the new step per scored node.
"""

from __future__ import annotations

from collections.abc import Sequence

from engine.types import TrajectoryRequest, TrueFalseScorer

PRM_SYSTEM = (
    "You are a strict grader of math solutions. You judge whether the newest step of a "
    "partial solution is correct: its arithmetic is right and it follows from the problem and "
    "the earlier steps. Reply with one word: True or False."
)
ORM_SYSTEM = (
    "You are a strict grader of math solutions. You judge whether a complete solution reaches "
    "the correct final answer to the problem. Reply with one word: True or False."
)


def _numbered(steps: Sequence[str]) -> str:
    lines = [f"Step {i}: {step.strip()}" for i, step in enumerate(steps, start=1) if step.strip()]
    return "\n".join(lines) if lines else "(no steps yet)"


def prm_prompt(request: TrajectoryRequest) -> str:
    newest = sum(1 for step in request.steps if step.strip())
    return (
        f"Problem: {request.question.strip()}\n\n"
        f"Solution so far:\n{_numbered(request.steps)}\n\n"
        f"Is step {newest} (the newest) correct? Answer True or False."
    )


def orm_prompt(request: TrajectoryRequest) -> str:
    return (
        f"Problem: {request.question.strip()}\n\n"
        f"Solution:\n{_numbered(request.steps)}\n\n"
        "Is the solution's final answer correct? Answer True or False."
    )


class GenerativePRM:
    """Process reward model: p("True") that the newest step is correct, in [0, 1]."""

    def __init__(self, scorer: TrueFalseScorer) -> None:
        self.scorer = scorer

    def score_steps(self, requests: Sequence[TrajectoryRequest]) -> list[float]:
        if not requests:
            return []
        return self.scorer.score_true([(PRM_SYSTEM, prm_prompt(request)) for request in requests])


class GenerativeORM:
    """Outcome reward model: p("True") that a finished solution is correct, in [0, 1]."""

    def __init__(self, scorer: TrueFalseScorer) -> None:
        self.scorer = scorer

    def score_outcomes(self, requests: Sequence[TrajectoryRequest]) -> list[float | None]:
        if not requests:
            return []
        return list(self.scorer.score_true([(ORM_SYSTEM, orm_prompt(request)) for request in requests]))
