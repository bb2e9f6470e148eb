"""What flows between the engine's parts, and what plugs into it.

Read this module first: it names every piece of the search. Data is plain,
frozen where it can be; the pluggable parts are ``Protocol``s or ``Callable``
aliases, so a test can pass a fake anywhere a model would go.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

if TYPE_CHECKING:
    import torch

ROOT_INDEX = 0
"""Tree-local index of the root node."""

NO_PARENT = -1
"""``Node.parent`` of the root."""

Phase = Literal["verify", "select", "expand", "filter", "evaluate", "rollout", "backpropagate"]
"""The phases of one simulation, in order; each emits a ``SearchEvent``. "verify"
happens once per tree, in its first simulation, when the program verifier is on."""


@dataclass(frozen=True)
class Problem:
    """One question to search on.

    Attributes:
        question: the text shown to the policy, non-empty.
        answer: the gold final answer as a normalised number string, or None when
            the user typed a question without one.
        task: the task that produced it ("arithmetic", "gsm8k", "custom").
        index: position in the task's split (0-based), or None for a typed question.
        meta: anything else the task knows (difficulty, reference solution, ...).
    """

    question: str
    answer: str | None = None
    task: str = "custom"
    index: int | None = None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Option:
    """A run of tokens the policy wrote from a state until a termination fired.

    Attributes:
        text: the decoded option text (as generated; may end with a newline).
        token_ids: the generated token ids, in order; len >= 1.
        logprob_sum: sum of the tokens' log-probabilities under the policy at
            temperature 1, in (-inf, 0].
        logprob_mean: logprob_sum / len(token_ids), in (-inf, 0].
        finished: True when the policy ended the whole solution (end-of-sequence
            token) rather than one step.
        stop_reason: which termination fired ("newline", "blank_line",
            "formula", "token_cap", "eos").
        token_logprobs: each of ``token_ids``' log-probability under the policy
            at temperature 1, in (-inf, 0], in order (what the studio colours a
            step's tokens by); their sum is ``logprob_sum`` up to rounding.
            Empty where the backend could not tell (an ``openai`` server whose
            tokens differ from the local tokenizer's), else one per token.
    """

    text: str
    token_ids: tuple[int, ...]
    logprob_sum: float
    logprob_mean: float
    finished: bool
    stop_reason: str
    token_logprobs: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if self.token_logprobs and len(self.token_logprobs) != len(self.token_ids):
            raise ValueError(
                f"an option has {len(self.token_ids)} tokens but {len(self.token_logprobs)} token "
                "log-probs; give one per token, or none"
            )

    @classmethod
    def sampled(
        cls,
        text: str,
        token_ids: Sequence[int],
        logprob_sum: float,
        stop_reason: str,
        token_logprobs: Sequence[float],
    ) -> Option:
        """An option from a sampling loop: the mean and ``finished`` follow from
        the rest. ``logprob_sum`` is the loop's own running sum, passed as it
        was accumulated so a search's priors stay bit-for-bit what they were."""
        return cls(
            text=text,
            token_ids=tuple(token_ids),
            logprob_sum=logprob_sum,
            logprob_mean=logprob_sum / len(token_ids),
            finished=stop_reason == "eos",
            stop_reason=stop_reason,
            token_logprobs=tuple(token_logprobs),
        )


@dataclass(frozen=True)
class Rollout:
    """A fast completion from a node to the end of the solution, and its scores.

    Attributes:
        text: the completion text after the node's state.
        tokens: number of generated tokens.
        answer: the final answer extracted from the full trajectory, or None.
        orm: outcome reward model score of the full trajectory, in [0, 1], or None
            when the ORM is off.
        tool: the arithmetic checker's score of the full trajectory, in [0, 1], or
            None when the trajectory makes no checkable claim (or the tool is off).
    """

    text: str
    tokens: int
    answer: str | None
    orm: float | None
    tool: float | None


@dataclass(frozen=True)
class ProgramCheck:
    """One program the policy wrote for a problem, and what running it gave
    (the program-aided verifier's evidence; see ``engine.critics.program``).

    Attributes:
        text: what the policy wrote (the program, usually in a fenced block).
        tokens: generated tokens, >= 0.
        status: how the sandboxed run ended: "ok", "error", "timeout",
            "memory", "output", "refused" or "crashed" (``engine.sandbox``).
        output: what the program printed (capped).
        error: the interpreter's error text, kept for inspection ("" when none).
        verdict: the last number it printed, normalised; None is "no verdict".
    """

    text: str
    tokens: int
    status: str
    output: str
    error: str
    verdict: str | None


@dataclass(frozen=True)
class CriticScores:
    """Every critic's view of one node, each in [0, 1], None where not computed.

    Attributes:
        value: the value head's expected return of the node's state.
        prm: the process reward model's p("True") that the node's option is a
            correct step.
        orm: mean outcome reward over the node's rollouts (or of the node's own
            trajectory when it is terminal).
        tool: mean arithmetic-checker score over the same trajectories.
        combined: the weighted mean of the present scores under the run's critic
            weights (weights of absent critics drop out and the rest renormalise);
            this is what backpropagates.
    """

    value: float | None = None
    prm: float | None = None
    orm: float | None = None
    tool: float | None = None
    combined: float = 0.0


@dataclass(frozen=True)
class TrajectoryRequest:
    """What a critic may look at: the problem and the steps so far."""

    question: str
    steps: tuple[str, ...]
    finished: bool


class Policy(Protocol):
    """A language model that writes options (how the state moves).

    States are token-id sequences: the prompt followed by the options of a path.
    Backends may cache whatever they like keyed by those ids; callers never see it.
    """

    name: str

    def root_state(self, question: str) -> tuple[int, ...]:
        """The token ids of the prompt that starts a solution of ``question``."""
        ...

    def propose(
        self,
        state: tuple[int, ...],
        *,
        k: int,
        termination: TerminationFn,
        max_tokens: int,
        temperature: float,
        seed: int,
    ) -> list[Option]:
        """Sample ``k`` options from ``state`` in one batch, each ending when
        ``termination`` fires, at ``max_tokens`` tokens, or at end-of-sequence."""
        ...

    def complete(
        self,
        states: Sequence[tuple[int, ...]],
        *,
        n: int,
        termination: TerminationFn,
        max_tokens: int,
        temperature: float,
        seed: int,
    ) -> list[list[Option]]:
        """Finish the solution from each state ``n`` times (fast rollouts), all in
        one batch where the backend can; each completion ends at end-of-sequence,
        when ``termination`` fires, or at ``max_tokens``. One list per state."""
        ...

    def decode(self, token_ids: Sequence[int]) -> str:
        """Text of ``token_ids``."""
        ...

    def extend(self, state: tuple[int, ...], text: str) -> tuple[int, ...]:
        """``state`` followed by the tokens of ``text`` (to hand a path written by
        another model's tokenizer to this one)."""
        ...

    def stats(self) -> PolicyStats:
        """Counters since the policy was made (tokens generated, prefilled, time)."""
        ...


@dataclass
class PolicyStats:
    """Work counters of a policy backend.

    Attributes:
        generated_tokens: tokens sampled.
        prefill_tokens: state tokens run through the model before sampling, i.e.
            not served from the prefix cache (generation only).
        scoring_prefill_tokens: prompt tokens the model read for critics
            (PRM/ORM prompts, value-head states).
        cached_tokens: prefix tokens served from the prefix cache instead.
        generate_seconds: wall seconds spent inside ``propose``/``complete``.
        decode_steps: batched decode calls made while sampling (0 where the
            backend does not count them).
        decode_rows: sequences those calls decoded in all; ``decode_rows /
            decode_steps`` is the mean batch size reached.
    """

    generated_tokens: int = 0
    prefill_tokens: int = 0
    scoring_prefill_tokens: int = 0
    cached_tokens: int = 0
    generate_seconds: float = 0.0
    decode_steps: int = 0
    decode_rows: int = 0


@dataclass(frozen=True)
class ProposeRequest:
    """One leaf to expand in a batch of leaves (see ``BatchProposer``).

    Attributes:
        state: the leaf's token ids.
        k: options to sample from it, >= 1.
        seed: the seed ``Policy.propose`` would get for this leaf.
    """

    state: tuple[int, ...]
    k: int
    seed: int


@runtime_checkable
class BatchProposer(Protocol):
    """A policy that samples the options of several states in one decode batch
    (the leaves of one step of parallel simulations). Only backends that can
    implement it; the search calls ``Policy.propose`` once per leaf on the rest."""

    def propose_many(
        self,
        requests: Sequence[ProposeRequest],
        *,
        termination: TerminationFn,
        max_tokens: int,
        temperature: float,
    ) -> list[list[Option]]:
        """``request.k`` options per request, one list per request in order, each
        drawn from the random streams ``propose(request.state, k=request.k,
        seed=request.seed)`` would use. Where a backend's logits depend on the
        shape of the batch (llama.cpp on quantized weights) an option may differ
        from that call's; it is still deterministic under the seeds."""
        ...


class StepCritic(Protocol):
    """Scores the last step of each trajectory (PRM), in [0, 1]."""

    def score_steps(self, requests: Sequence[TrajectoryRequest]) -> list[float]: ...


class OutcomeCritic(Protocol):
    """Scores whole trajectories (ORM, arithmetic checker); None = no opinion."""

    def score_outcomes(self, requests: Sequence[TrajectoryRequest]) -> list[float | None]: ...


class ValueCritic(Protocol):
    """Expected return of the states the trajectories reach, in [0, 1] (value head)."""

    def score_states(self, requests: Sequence[TrajectoryRequest]) -> list[float]: ...


class TrueFalseScorer(Protocol):
    """A backend that reads (system, user) chat prompts and gives p("True") of
    each reply, in [0, 1]: what the generative PRM and ORM run on."""

    def score_true(self, prompts: Sequence[tuple[str, str]]) -> list[float]: ...


@runtime_checkable
class HiddenStateReader(Protocol):
    """A backend that reads states and gives their final hidden state (what the
    value head scores). Only backends that can read them implement it."""

    def root_state(self, question: str) -> tuple[int, ...]: ...

    def extend(self, state: tuple[int, ...], text: str) -> tuple[int, ...]: ...

    def last_hidden(self, states: Sequence[tuple[int, ...]]) -> torch.Tensor:
        """One row per state: shape ``(len(states), hidden_size)``, on any device."""
        ...


@runtime_checkable
class ProgramSource(Protocol):
    """An outcome critic whose verdicts rest on programs it had the policy write
    (``engine.critics.program.ProgramVerifier``); the search stores them with the
    tree and hands them back on resume."""

    def programs_for(self, question: str) -> Sequence[ProgramCheck]:
        """The programs for ``question``, written now if not known yet."""
        ...

    def remember(self, question: str, programs: Sequence[ProgramCheck]) -> None:
        """Programs written earlier for ``question`` (from the store)."""
        ...


TerminationFn = Callable[[str], str | None]
"""``option_text_so_far -> reason`` evaluated after each token: the name of the
rule that fired ("newline", "blank_line", "formula", "answer"), or None to go on."""

SimilarityFn = Callable[[Sequence[str], Sequence[str]], list[list[float]]]
"""``(candidates, existing) -> similarity matrix`` with values in [0, 1]."""


@dataclass(frozen=True)
class SearchEvent:
    """One phase of one simulation, for replaying growth.

    Attributes:
        simulation: 0-based simulation index.
        phase: which phase.
        node: tree-local index of the node the phase acted on.
        data: small JSON-able details (children made, value backed up, ...).
    """

    simulation: int
    phase: Phase
    node: int
    data: dict[str, Any] = field(default_factory=dict)
