"""The baselines MCTS must beat at equal compute, each a function of its inputs.

- ``greedy``: one completion at temperature 0.
- ``self_consistency``: ``samples`` completions from the root, majority vote over
  their stated answers.
- ``best_of_n``: the same completions (same seed), reranked by the ORM; a plain
  vote when the ORM is off.
- ``beam_search``: PRM-guided beam search over the same options MCTS expands
  (``policy.propose`` with the search's termination rule and token cap).

Each returns a ``BaselineOutcome``: the trajectories as an ``engine.tree.Tree``
(sampling methods: the root and one terminal child per completion; beam: the
beam tree), the chosen node and answer, and the work it took (policy counters'
deltas). The tree shape is what the store and the app already know.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from engine.answers import extract_answer, normalize_number
from engine.config import ConfigError, SearchConfig
from engine.critics import Critics
from engine.search import mix_seed
from engine.selection import priors_from_logprobs
from engine.termination import make_termination
from engine.tree import Node, Tree
from engine.types import ROOT_INDEX, CriticScores, Option, Policy, TrajectoryRequest

METHODS = ("greedy", "self-consistency", "best-of-n", "beam", "mcts")
"""Every method ``engine.evaluate`` runs; "mcts" is ``engine.search``, the rest live here."""

BEAM_SCORES = ("mean", "last")

_SAMPLING_SALT = 1
_BEAM_SALT = 2


def _help(text: str) -> dict[str, Any]:
    return {"help": text}


@dataclass(frozen=True)
class EvalSettings:
    """How every method of one evaluation runs. Validated on construction.

    The MCTS settings (``search``) also give beam search its options: termination
    rule, option token cap, depth limit, temperature and seed.
    """

    samples: int = field(default=8, metadata=_help("Completions per problem (self-consistency, best-of-N)."))
    sample_temperature: float = field(
        default=0.8, metadata=_help("Temperature of self-consistency/best-of-N samples, in (0, 2].")
    )
    max_tokens: int = field(
        default=256, metadata=_help("Token cap of one whole completion (greedy and the samples).")
    )
    beam_width: int = field(default=3, metadata=_help("Partial solutions kept per depth (beam search)."))
    beam_k: int = field(default=3, metadata=_help("Options proposed from each kept partial solution."))
    beam_score: str = field(
        default="mean",
        metadata=_help("A partial solution's score: mean PRM over its steps, or the last step's PRM."),
    )
    search: SearchConfig = field(default_factory=SearchConfig, metadata=_help("MCTS settings."))

    def __post_init__(self) -> None:
        if isinstance(self.search, dict):
            object.__setattr__(self, "search", SearchConfig.from_dict(self.search))
        need = _need
        need(self.samples >= 1, f"samples must be >= 1, got {self.samples}")
        need(
            0 < self.sample_temperature <= 2,
            f"sample_temperature must be in (0, 2], got {self.sample_temperature}",
        )
        need(self.max_tokens >= 1, f"max_tokens must be >= 1, got {self.max_tokens}")
        need(self.beam_width >= 1, f"beam_width must be >= 1, got {self.beam_width}")
        need(self.beam_k >= 1, f"beam_k must be >= 1, got {self.beam_k}")
        need(
            self.beam_score in BEAM_SCORES,
            f"beam_score must be one of {BEAM_SCORES}, got {self.beam_score!r}",
        )

    @property
    def seed(self) -> int:
        return self.search.seed

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["search"] = self.search.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EvalSettings:
        known = {name for name in cls.__dataclass_fields__}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown eval setting(s): {', '.join(unknown)}")
        return cls(**data)


def _need(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


@dataclass
class BaselineOutcome:
    """What one method did on one problem.

    Attributes:
        tree: every trajectory it produced, as a tree (see the module docstring).
        chosen: index of the node whose trajectory gave the answer (the root when
            nothing stated an answer).
        answer: the chosen final answer, normalised, or None.
        answers: each way of choosing this method computed -> its answer (e.g.
            best-of-N also records the plain vote over the same samples).
        generated_tokens: tokens the policy sampled (``policy.stats()`` delta).
        prefill_tokens: prompt tokens the policy read to generate, not from cache.
        scoring_prefill_tokens: prompt tokens read for the critics (PRM/ORM).
        seconds: wall seconds.
    """

    tree: Tree
    chosen: int
    answer: str | None
    answers: dict[str, str | None]
    generated_tokens: int = 0
    prefill_tokens: int = 0
    scoring_prefill_tokens: int = 0
    seconds: float = 0.0


class _Meter:
    """Counts a policy's work between ``__enter__`` and ``__exit__``."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy

    def __enter__(self) -> _Meter:
        self.before = self.policy.stats()
        self.started = time.monotonic()
        return self

    def __exit__(self, *exc_info) -> None:
        after = self.policy.stats()
        self.seconds = time.monotonic() - self.started
        self.generated = after.generated_tokens - self.before.generated_tokens
        self.prefill = after.prefill_tokens - self.before.prefill_tokens
        self.scoring_prefill = after.scoring_prefill_tokens - self.before.scoring_prefill_tokens

    def fill(self, outcome: BaselineOutcome) -> BaselineOutcome:
        outcome.generated_tokens = self.generated
        outcome.prefill_tokens = self.prefill
        outcome.scoring_prefill_tokens = self.scoring_prefill
        outcome.seconds = self.seconds
        outcome.tree.generated_tokens = self.generated
        return outcome


def solution_steps(text: str) -> tuple[str, ...]:
    """A whole completion as the critics' steps: its non-blank lines."""
    return tuple(line for line in text.splitlines(keepends=True) if line.strip())


# -- sampling methods -----------------------------------------------------------


def _sample_tree(
    question: str,
    policy: Policy,
    *,
    n: int,
    temperature: float,
    max_tokens: int,
    seed: int,
    samples: Sequence[Option] | None = None,
):
    """The root and one terminal child per completion from it (``samples``:
    completions drawn before, used instead of drawing new ones)."""
    tree = Tree.new(question, policy.root_state(question))
    completions = samples
    if completions is None:
        [completions] = policy.complete(
            [tree.root_state],
            n=n,
            termination=make_termination(["answer"]),
            max_tokens=max_tokens,
            temperature=temperature,
            seed=seed,
        )
    for completion in completions:
        child = tree.add_child(ROOT_INDEX, completion, simulation=0)
        child.terminal = True
        child.answer = extract_answer(completion.text)
    priors = priors_from_logprobs([option.logprob_mean for option in completions])
    for index, prior in zip(tree.root.children, priors, strict=True):
        tree.nodes[index].prior = prior
    tree.root.expansions = 1
    tree.root.target_width = len(completions)
    return tree


def greedy(question: str, *, policy: Policy, settings: EvalSettings) -> BaselineOutcome:
    """One completion at temperature 0 (the policy's argmax at every token)."""
    with _Meter(policy) as meter:
        tree = _sample_tree(
            question,
            policy,
            n=1,
            temperature=0.0,
            max_tokens=settings.max_tokens,
            seed=mix_seed(settings.seed, _SAMPLING_SALT),
        )
    [child] = tree.root.children
    answer = tree.nodes[child].answer
    return meter.fill(BaselineOutcome(tree, child, answer, {"greedy": answer}))


def majority_vote(nodes: Sequence[Node]) -> tuple[str | None, int | None]:
    """The most frequent stated answer and the first node stating it.

    Answers compare as normalised numbers; a tie goes to the answer whose
    samples have the larger summed mean log-prob (the policy's own preference),
    then to the answer stated first. Nodes without an answer do not vote.
    """
    counts: dict[str, int] = defaultdict(int)
    confidence: dict[str, float] = defaultdict(float)
    first: dict[str, int] = {}
    for position, node in enumerate(nodes):
        if node.answer is None:
            continue
        key = normalize_number(node.answer) or node.answer
        counts[key] += 1
        confidence[key] += node.option.logprob_mean if node.option else 0.0
        first.setdefault(key, position)
    if not counts:
        return None, None
    winner = max(counts, key=lambda key: (counts[key], confidence[key], -first[key]))
    return winner, nodes[first[winner]].index


def self_consistency(question: str, *, policy: Policy, settings: EvalSettings) -> BaselineOutcome:
    """``settings.samples`` completions from the root; the majority answer wins."""
    with _Meter(policy) as meter:
        tree = _sample_tree(
            question,
            policy,
            n=settings.samples,
            temperature=settings.sample_temperature,
            max_tokens=settings.max_tokens,
            seed=mix_seed(settings.seed, _SAMPLING_SALT),
        )
    children = [tree.nodes[i] for i in tree.root.children]
    answer, node = majority_vote(children)
    return meter.fill(
        BaselineOutcome(tree, node if node is not None else ROOT_INDEX, answer, {"vote": answer})
    )


def best_of_n(
    question: str,
    *,
    policy: Policy,
    critics: Critics,
    settings: EvalSettings,
    samples: Sequence[Option] | None = None,
) -> BaselineOutcome:
    """The completions ``self_consistency`` would draw (same seed), the ORM's favourite wins.

    ``samples`` hands in the completions a self-consistency run with the same
    settings already drew (``engine.compare`` does), so only the ORM pass runs;
    they still count as this method's generated tokens.

    On llama.cpp they match only while the KV cache holds the same thing: its
    quantized logits depend on how a prompt is batched, so after the ORM has read
    its prompts the next problem's samples can differ from self-consistency's.
    ``answers["vote"]`` is the majority over these very samples.

    Completions that state an answer rank above those that do not; among them
    the highest ORM score wins, ties to the earlier sample. Without an ORM the
    method falls back to the majority vote (``answers`` then has no "orm").
    """
    with _Meter(policy) as meter:
        tree = _sample_tree(
            question,
            policy,
            n=settings.samples,
            temperature=settings.sample_temperature,
            max_tokens=settings.max_tokens,
            seed=mix_seed(settings.seed, _SAMPLING_SALT),
            samples=samples,
        )
        children = [tree.nodes[i] for i in tree.root.children]
        vote_answer, vote_node = majority_vote(children)
        answers: dict[str, str | None] = {"vote": vote_answer}
        chosen = vote_node if vote_node is not None else ROOT_INDEX
        answer = vote_answer
        if critics.orm is not None:
            requests = [
                TrajectoryRequest(question, solution_steps(child.option.text), True) for child in children
            ]
            scores = critics.orm.score_outcomes(requests)
            for child, score in zip(children, scores, strict=True):
                child.scores = CriticScores(orm=score, combined=score if score is not None else 0.0)
            best = max(
                children,
                key=lambda child: (
                    child.answer is not None,
                    child.scores.orm if child.scores.orm is not None else -1.0,
                    -child.index,
                ),
            )
            chosen, answer = best.index, best.answer
            answers["orm"] = answer
    outcome = meter.fill(BaselineOutcome(tree, chosen, answer, answers))
    if samples is not None:
        outcome.generated_tokens = tree.generated_tokens = sum(len(o.token_ids) for o in samples)
    return outcome


# -- beam search ----------------------------------------------------------------


def beam_search(
    question: str, *, policy: Policy, critics: Critics, settings: EvalSettings
) -> BaselineOutcome:
    """PRM-guided beam search over MCTS's options.

    From each kept partial solution the policy proposes ``beam_k`` options (the
    search's termination rule, option token cap and temperature). Every new
    step is scored by the PRM; a path's score is the mean PRM over its steps
    (``beam_score="mean"``, so one confident step cannot carry a wrong path) or
    its last step's PRM (``"last"``). A child is terminal, as in MCTS, when it
    states an answer, ends the solution, or reaches ``max_depth``. Each depth
    the ``beam_width`` best new children are kept; kept terminal ones are set
    aside as finished and the rest are expanded, until no partial solution is
    left. The best finished path that states an answer wins (ties: earlier node).
    Node ``prm_score`` is the step's PRM, ``combined_score`` the path score.

    Raises:
        ConfigError: the PRM is off (``weight_prm`` 0): nothing would guide the beam.
    """
    if critics.prm is None:
        raise ConfigError("beam search is PRM-guided: set weight_prm > 0")
    config = settings.search
    termination = make_termination(config.termination)
    step_scores: dict[int, list[float]] = {ROOT_INDEX: []}
    with _Meter(policy) as meter:
        tree = Tree.new(question, policy.root_state(question))
        live = [tree.root]
        finished: list[Node] = []
        depth = 0
        while live:
            depth += 1
            children: list[Node] = []
            for node in live:
                options = policy.propose(
                    tree.state(node.index),
                    k=settings.beam_k,
                    termination=termination,
                    max_tokens=config.max_option_tokens,
                    temperature=config.temperature,
                    seed=mix_seed(config.seed, _BEAM_SALT, node.index),
                )
                node.expansions += 1
                node.target_width = len(options)
                children += _add_children(tree, node, options, simulation=depth - 1)
            for child in children:
                stated = extract_answer(child.option.text)
                child.terminal = (
                    child.option.finished or stated is not None or child.depth >= config.max_depth
                )
                if child.terminal:
                    child.answer = extract_answer("".join(tree.steps(child.index)))
            requests = [
                TrajectoryRequest(question, tree.steps(child.index), child.terminal) for child in children
            ]
            for child, prm in zip(children, critics.prm.score_steps(requests), strict=True):
                steps = [*step_scores[child.parent], prm]
                step_scores[child.index] = steps
                path_score = sum(steps) / len(steps) if settings.beam_score == "mean" else prm
                child.scores = CriticScores(prm=prm, combined=path_score)
            kept = sorted(children, key=lambda child: (-child.scores.combined, child.index))
            kept = kept[: settings.beam_width]
            for child in kept:
                child.visits = 1
                child.value_sum = child.scores.combined
            finished += [child for child in kept if child.terminal]
            live = [child for child in kept if not child.terminal]
        best = max(
            finished,
            key=lambda node: (node.answer is not None, node.scores.combined, -node.index),
            default=None,
        )
    chosen = best.index if best is not None else ROOT_INDEX
    answer = best.answer if best is not None else None
    return meter.fill(BaselineOutcome(tree, chosen, answer, {"beam": answer}))


def _add_children(tree: Tree, parent: Node, options: Sequence[Option], *, simulation: int) -> list[Node]:
    children = [tree.add_child(parent.index, option, simulation=simulation) for option in options]
    priors = priors_from_logprobs([option.logprob_mean for option in options]) if options else []
    for child, prior in zip(children, priors, strict=True):
        child.prior = prior
    return children


def run_baseline(
    method: str,
    question: str,
    *,
    policy: Policy,
    critics: Critics,
    settings: EvalSettings,
    samples: Sequence[Option] | None = None,
) -> BaselineOutcome:
    """Run one baseline by name (one of ``METHODS`` other than "mcts");
    ``samples`` are reused completions for best-of-N (see ``best_of_n``)."""
    if method == "greedy":
        return greedy(question, policy=policy, settings=settings)
    if method == "self-consistency":
        return self_consistency(question, policy=policy, settings=settings)
    if method == "best-of-n":
        return best_of_n(question, policy=policy, critics=critics, settings=settings, samples=samples)
    if method == "beam":
        return beam_search(question, policy=policy, critics=critics, settings=settings)
    raise ConfigError(f"unknown baseline {method!r}; choose from {', '.join(METHODS[:-1])}")


__all__ = [
    "BEAM_SCORES",
    "METHODS",
    "BaselineOutcome",
    "EvalSettings",
    "beam_search",
    "best_of_n",
    "greedy",
    "majority_vote",
    "run_baseline",
    "self_consistency",
    "solution_steps",
]
