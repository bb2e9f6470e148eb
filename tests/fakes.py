"""Seeded stand-ins for a language model and critics, for testing the search
without a model. Words are tokens: the fake tokenizer splits on spaces."""

from __future__ import annotations

import random
import zlib
from collections.abc import Sequence

from engine.answers import extract_answer
from engine.types import Option, PolicyStats, TerminationFn, TrajectoryRequest

STEPS = (
    "Tom starts with 3 apples.\n",
    "He buys 4 more, so 3 + 4 = 7.\n",
    "He buys 4 more, so 3 + 4 = 8.\n",
    "Then he has 7 apples.\n",
    "He has 3 and 4 , which is 7 apples.\n",
    "The answer is 7.\n",
    "The answer is 8.\n",
)


class FakeTokenizer:
    def __init__(self) -> None:
        self.vocab: list[str] = []
        self.ids: dict[str, int] = {}

    def encode(self, text: str) -> tuple[int, ...]:
        out = []
        for word in text.split(" "):
            if word not in self.ids:
                self.ids[word] = len(self.vocab)
                self.vocab.append(word)
            out.append(self.ids[word])
        return tuple(out)

    def decode(self, ids: Sequence[int]) -> str:
        return " ".join(self.vocab[i] for i in ids)


class FakePolicy:
    """Proposes steps from ``STEPS``, weighted towards the right ones; deterministic under a seed."""

    def __init__(self, name: str = "fake", eos_after: int = 4) -> None:
        self.name = name
        self.tokenizer = FakeTokenizer()
        self.eos_after = eos_after
        self._stats = PolicyStats()
        self.calls: list[tuple[str, int]] = []

    def root_state(self, question: str) -> tuple[int, ...]:
        return self.tokenizer.encode("Q: " + question + " A:")

    def extend(self, state: tuple[int, ...], text: str) -> tuple[int, ...]:
        return state + self.tokenizer.encode(text)

    def decode(self, token_ids: Sequence[int]) -> str:
        return self.tokenizer.decode(token_ids)

    def stats(self) -> PolicyStats:
        return PolicyStats(**vars(self._stats))

    def _option(self, rng: random.Random, termination: TerminationFn, max_tokens: int) -> Option:
        text = rng.choices(STEPS, weights=(3, 3, 1, 2, 2, 3, 1))[0]
        ids = self.tokenizer.encode(text)[:max_tokens]
        text = self.tokenizer.decode(ids)
        logprob = -0.1 * len(ids) - rng.random()
        reason = termination(text) or "token_cap"
        per_token = (logprob / len(ids),) * len(ids)
        return Option(text, ids, logprob, logprob / len(ids), False, reason, token_logprobs=per_token)

    def propose(self, state, *, k, termination, max_tokens, temperature, seed) -> list[Option]:
        self.calls.append(("propose", k))
        rng = random.Random(seed)
        options = [self._option(rng, termination, max_tokens) for _ in range(k)]
        self._stats.generated_tokens += sum(len(o.token_ids) for o in options)
        return options

    def complete(self, states, *, n, termination, max_tokens, temperature, seed) -> list[list[Option]]:
        self.calls.append(("complete", n * len(states)))
        rng = random.Random(seed)
        finals = ("The answer is 7.\n", "The answer is 8.\n")
        batches = []
        for _ in states:
            options = []
            for _ in range(n):
                text = rng.choice(("3 + 4 = 7.\n", "3 + 4 = 8.\n")) + rng.choice(finals)
                ids = self.tokenizer.encode(text)[:max_tokens]
                per_token = (-1.0 / len(ids),) * len(ids)
                options.append(Option(self.tokenizer.decode(ids), ids, -1.0, -0.1, True, "eos", per_token))
            self._stats.generated_tokens += sum(len(o.token_ids) for o in options)
            batches.append(options)
        return batches


def _unit(text: str) -> float:
    return (zlib.crc32(text.encode()) % 1000) / 1000


class FakePRM:
    """Likes steps whose arithmetic says 7, dislikes 8; otherwise a stable pseudo-random score."""

    def score_steps(self, requests: Sequence[TrajectoryRequest]) -> list[float]:
        scores = []
        for request in requests:
            step = request.steps[-1]
            scores.append(0.9 if "7" in step else 0.1 if "8" in step else 0.3 + 0.4 * _unit(step))
        return scores


class FakeORM:
    """1.0 for a trajectory answering 7, 0.0 for any other answer, None without one."""

    def __init__(self, gold: str = "7") -> None:
        self.gold = gold

    def score_outcomes(self, requests: Sequence[TrajectoryRequest]) -> list[float | None]:
        out = []
        for request in requests:
            answer = extract_answer("".join(request.steps))
            out.append(None if answer is None else float(answer == self.gold))
        return out


def exact_similarity(candidates: Sequence[str], existing: Sequence[str]) -> list[list[float]]:
    return [[1.0 if a == b else 0.0 for b in existing] for a in candidates]


def fake_components(policy: FakePolicy | None = None, config=None, critic_models=None):
    """``engine.api.Components`` around a ``FakePolicy`` with the fake critics
    that ``config`` (a ``SearchConfig``, default: the defaults) turns on."""
    from engine.api import Components
    from engine.config import CriticModels, SearchConfig
    from engine.critics import Critics

    policy = policy or FakePolicy()
    config = config or SearchConfig()
    critics = Critics(
        prm=FakePRM() if config.weight_prm > 0 else None,
        orm=FakeORM() if config.weight_orm > 0 else None,
    )
    similarity = None if config.similarity == "off" else exact_similarity
    sources = {name: f"fake {name}" for name in ("value", "prm", "orm", "tool")}
    return Components(policy, policy, critics, similarity, critic_models or CriticModels(), sources)
