"""Generative critics: the policy model asked a rubric question, score = p("True").

Both rubrics share one grader system prompt and one layout: the problem, then
the steps in order, then the rubric's own closing question (the PRM's about
the newest step, named by its number; the ORM's about the final answer). So a
child's prompt extends its parent's up to the closing question, siblings share
everything before their own step, and an ORM prompt of a rollout extends the
PRM prompt of the node it started from: a backend that keeps recent prompts
cached (``llamacpp``'s rubric sequences, ``hf``'s prefix cache) reads little
more than the new step, or the rollout, per scored node.
"""

from __future__ import annotations

from collections.abc import Sequence

from engine.types import TrajectoryRequest, TrueFalseScorer

GRADER_SYSTEM = (
    "You are a strict grader of math solutions. You read a problem and the steps of a "
    "solution, then answer the question asked about them with one word: True or False. "
    "A step is right when its arithmetic is right and it follows from the problem and the "
    "steps before it."
)
PRM_SYSTEM = ORM_SYSTEM = GRADER_SYSTEM
"""The system prompt each rubric is asked (and trained) with."""


def _numbered(steps: Sequence[str]) -> str:
    lines = [f"Step {i}: {step.strip()}" for i, step in enumerate(steps, start=1) if step.strip()]
    return "\n".join(lines) if lines else "(no steps yet)"


def _graded(request: TrajectoryRequest, question: str) -> str:
    return f"Problem: {request.question.strip()}\n\nSteps:\n{_numbered(request.steps)}\n\n{question}"


def prm_prompt(request: TrajectoryRequest) -> str:
    newest = sum(1 for step in request.steps if step.strip())
    return _graded(
        request, f"Is step {newest} right (its arithmetic, and what it concludes)? Answer True or False."
    )


def orm_prompt(request: TrajectoryRequest) -> str:
    return _graded(request, "Does this solution reach the correct final answer? Answer True or False.")


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
