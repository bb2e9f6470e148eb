"""The program-aided verifier: the policy (a coder model) writes a few short
Python programs for the problem, each runs in the sandbox (``engine.sandbox``),
and a trajectory is scored by how many of the programs' results agree with
the answer it states.

A program and a chain of thought that agree are right far more often than
either alone, but one program often fails or errs, so the verifier writes
several per problem, once, and keeps them as the tree's evidence
(``Tree.programs``). A trajectory that states no answer scores 0; when no
program gave a verdict, the verifier has no opinion (None).
"""

from __future__ import annotations

from collections.abc import Sequence

from engine.answers import answers_match, extract_answer
from engine.prompts import PROGRAM_SYSTEM
from engine.sandbox import run_program
from engine.termination import make_termination
from engine.types import ProgramCheck, TrajectoryRequest

CODE_FENCE = "```python\n"
"""The reply is begun with this fence, so the policy writes code rather than
prose about it (a 0.5B coder model often explains instead of programming)."""


def code_of(text: str) -> str:
    """The program in a reply that began inside ``CODE_FENCE``: up to the closing fence."""
    return text.split("```", 1)[0]


def agreement(answer: str | None, programs: Sequence[ProgramCheck]) -> float | None:
    """Share of the programs with a verdict whose verdict matches ``answer``, in
    [0, 1]; 0 when ``answer`` is None; None when no program gave a verdict."""
    verdicts = [program.verdict for program in programs if program.verdict is not None]
    if not verdicts:
        return None
    if answer is None:
        return 0.0
    return sum(answers_match(answer, verdict) for verdict in verdicts) / len(verdicts)


class ProgramVerifier:
    """An outcome critic that checks trajectories against programs the policy wrote.

    Args:
        policy: writes the programs (a ``Policy`` with ``chat_ids``).
        programs: how many programs per problem, >= 1.
        temperature: their sampling temperature, in (0, 2].
        max_tokens: token cap of one program.
        seed: seeds the programs' sampling (with the question).

    The programs of a question are written on first use and kept
    (``programs_for``); ``remember`` hands back ones stored earlier, so a
    resumed search does not write them again.
    """

    def __init__(self, policy, *, programs: int, temperature: float, max_tokens: int, seed: int) -> None:
        self.policy = policy
        self.programs = programs
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.seed = seed
        self._written: dict[str, tuple[ProgramCheck, ...]] = {}

    def programs_for(self, question: str) -> tuple[ProgramCheck, ...]:
        """The programs for ``question``: those remembered, else written and run now."""
        if question not in self._written:
            state = self.policy.extend(self.policy.chat_ids(PROGRAM_SYSTEM, question), CODE_FENCE)
            [replies] = self.policy.complete(
                [state],
                n=self.programs,
                termination=make_termination(["code"]),
                max_tokens=self.max_tokens,
                temperature=self.temperature,
                seed=self.seed,
            )
            self.remember(question, [_checked(reply.text, len(reply.token_ids)) for reply in replies])
        return self._written[question]

    def remember(self, question: str, programs: Sequence[ProgramCheck]) -> None:
        self._written = {question: tuple(programs)}  # one problem at a time: keep only the newest

    def score_outcomes(self, requests: Sequence[TrajectoryRequest]) -> list[float | None]:
        return [
            agreement(extract_answer("".join(request.steps)), self.programs_for(request.question))
            for request in requests
        ]


def _checked(text: str, tokens: int) -> ProgramCheck:
    run = run_program(code_of(text))
    return ProgramCheck(text, tokens, run.status, run.output, run.error, run.verdict)
