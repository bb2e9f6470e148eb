"""Baselines on fakes: greedy, vote, ORM rerank, PRM-guided beam, and exact argmax decoding."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from engine.answers import extract_answer
from engine.baselines import (
    EvalSettings,
    beam_search,
    best_of_n,
    greedy,
    run_baseline,
    self_consistency,
    solution_steps,
)
from engine.config import ConfigError, SearchConfig
from engine.critics import Critics
from engine.types import ROOT_INDEX, Option, TrajectoryRequest
from tests.fakes import FakeORM, FakePolicy, FakePRM

QUESTION = "Tom has 3 apples and buys 4 more. How many apples does he have?"


class ScriptedPolicy(FakePolicy):
    """Completes with the given texts, in order; records what it was asked."""

    def __init__(self, texts: Sequence[str], logprob_means: Sequence[float] | None = None) -> None:
        super().__init__()
        self.texts = list(texts)
        self.logprob_means = list(logprob_means or [-0.5] * len(texts))
        self.requests: list[dict] = []

    def complete(self, states, *, n, termination, max_tokens, temperature, seed) -> list[list[Option]]:
        self.requests.append({"n": n, "temperature": temperature, "seed": seed, "max_tokens": max_tokens})
        batches = []
        for _ in states:
            options = []
            for text, mean in zip(self.texts[:n], self.logprob_means[:n], strict=True):
                ids = self.tokenizer.encode(text)
                options.append(Option(text, ids, mean * len(ids), mean, True, "eos"))
            self._stats.generated_tokens += sum(len(o.token_ids) for o in options)
            self._stats.prefill_tokens += len(states[0])
            batches.append(options)
        return batches


def _settings(**overrides) -> EvalSettings:
    return EvalSettings(**{"samples": 5, "search": SearchConfig(seed=3, similarity="edit"), **overrides})


def test_greedy_asks_for_one_argmax_completion_and_counts_its_work() -> None:
    policy = ScriptedPolicy(["3 + 4 = 7.\nThe answer is 7.\n"])
    outcome = greedy(QUESTION, policy=policy, settings=_settings(max_tokens=64))
    assert policy.requests == [
        {"n": 1, "temperature": 0.0, "seed": policy.requests[0]["seed"], "max_tokens": 64}
    ]
    assert outcome.answer == "7" and outcome.answers == {"greedy": "7"}
    assert [node.index for node in outcome.tree.nodes] == [0, 1] and outcome.chosen == 1
    child = outcome.tree.nodes[1]
    assert child.terminal and child.parent == ROOT_INDEX and child.prior == 1.0
    assert outcome.generated_tokens == len(child.option.token_ids) == outcome.tree.generated_tokens
    assert outcome.prefill_tokens == len(policy.root_state(QUESTION))
    assert outcome.seconds >= 0


def test_self_consistency_takes_the_majority_and_points_at_its_first_sample() -> None:
    texts = [
        "The answer is 8.\n",
        "The answer is 7.\n",
        "no answer here\n",
        "The answer is $7.00\n",
        "#### 8\n",
        "Answer: 7 apples\n",
    ]
    policy = ScriptedPolicy(texts)
    outcome = self_consistency(QUESTION, policy=policy, settings=_settings(samples=6))
    assert policy.requests[0]["n"] == 6 and policy.requests[0]["temperature"] == 0.8
    children = [outcome.tree.nodes[i] for i in outcome.tree.root.children]
    assert [child.answer for child in children] == ["8", "7", None, "7", "8", "7"]
    assert outcome.answer == "7" and outcome.chosen == 2, "three 7s (7, $7.00, 7 apples) beat two 8s"
    assert outcome.answers == {"vote": "7"}
    assert all(child.terminal for child in children)
    assert sum(child.prior for child in children) == pytest.approx(1.0)


def test_a_tied_vote_goes_to_the_answer_the_policy_prefers() -> None:
    texts = ["The answer is 8.\n", "The answer is 7.\n"]
    confident_in_seven = ScriptedPolicy(texts, logprob_means=[-2.0, -0.1])
    assert self_consistency(QUESTION, policy=confident_in_seven, settings=_settings(samples=2)).answer == "7"
    confident_in_eight = ScriptedPolicy(texts, logprob_means=[-0.1, -2.0])
    assert self_consistency(QUESTION, policy=confident_in_eight, settings=_settings(samples=2)).answer == "8"


def test_no_stated_answer_means_no_answer() -> None:
    outcome = self_consistency(QUESTION, policy=ScriptedPolicy(["hmm\n"] * 3), settings=_settings(samples=3))
    assert outcome.answer is None and outcome.chosen == ROOT_INDEX


class _LoudORM:
    """Scores by the text alone, so a test can make it love an answerless sample."""

    def __init__(self, scores: dict[str, float]) -> None:
        self.scores = scores
        self.requests: list[TrajectoryRequest] = []

    def score_outcomes(self, requests):
        self.requests += requests
        return [self.scores.get("".join(request.steps), 0.0) for request in requests]


def test_best_of_n_reranks_the_same_samples_with_the_orm() -> None:
    texts = [
        "3 + 4 = 8.\nThe answer is 8.\n",
        "3 + 4 = 8.\nThe answer is 8.\n",
        "3 + 4 = 7.\nThe answer is 7.\n",
    ]
    settings = _settings(samples=3)
    vote = self_consistency(QUESTION, policy=ScriptedPolicy(texts), settings=settings)
    policy = ScriptedPolicy(texts)
    outcome = best_of_n(QUESTION, policy=policy, critics=Critics(orm=FakeORM()), settings=settings)
    assert vote.answer == "8"
    assert outcome.answer == "7" and outcome.chosen == 3
    assert outcome.answers == {"vote": "8", "orm": "7"}
    assert [outcome.tree.nodes[i].scores.orm for i in (1, 2, 3)] == [0.0, 0.0, 1.0]
    assert [n.option.text for n in outcome.tree.nodes[1:]] == [n.option.text for n in vote.tree.nodes[1:]]


def test_best_of_n_shows_the_orm_steps_and_never_picks_an_answerless_sample() -> None:
    texts = ["I give up.\n", "2 + 2 = 5.\nThe answer is 5.\n"]
    orm = _LoudORM({"I give up.\n": 1.0, texts[1]: 0.2})
    outcome = best_of_n(
        QUESTION, policy=ScriptedPolicy(texts), critics=Critics(orm=orm), settings=_settings(samples=2)
    )
    assert outcome.answer == "5"
    assert orm.requests[1].steps == ("2 + 2 = 5.\n", "The answer is 5.\n") and orm.requests[1].finished


def test_best_of_n_without_an_orm_falls_back_to_the_vote() -> None:
    texts = ["The answer is 8.\n", "The answer is 8.\n", "The answer is 7.\n"]
    outcome = best_of_n(
        QUESTION, policy=ScriptedPolicy(texts), critics=Critics(), settings=_settings(samples=3)
    )
    assert outcome.answer == "8" and outcome.answers == {"vote": "8"}
    assert all(node.scores.orm is None for node in outcome.tree.nodes)


def test_solution_steps_are_the_non_blank_lines() -> None:
    assert solution_steps("a = 1\n\n  \nb = 2\nThe answer is 2.") == (
        "a = 1\n",
        "b = 2\n",
        "The answer is 2.",
    )


def _beam(settings: EvalSettings, policy=None):
    policy = policy or FakePolicy()
    return beam_search(QUESTION, policy=policy, critics=Critics(prm=FakePRM()), settings=settings), policy


def test_beam_keeps_width_expands_k_and_scores_paths_by_mean_prm() -> None:
    settings = _settings(beam_width=2, beam_k=3)
    outcome, policy = _beam(settings)
    tree = outcome.tree
    assert all(call == ("propose", 3) for call in policy.calls)
    expanded = [node for node in tree.nodes if node.children]
    assert all(len(node.children) == 3 for node in expanded)
    by_depth: dict[int, int] = {}
    for node in expanded:
        by_depth[node.depth] = by_depth.get(node.depth, 0) + 1
    assert by_depth[0] == 1 and all(count <= 2 for count in by_depth.values())
    for node in tree.nodes[1:]:
        path_prm = [tree.nodes[i].scores.prm for i in tree.path(node.index)[1:]]
        assert node.scores.combined == pytest.approx(sum(path_prm) / len(path_prm))
        assert node.children == [] or not node.terminal, "terminal nodes are never expanded"
    chosen = tree.nodes[outcome.chosen]
    assert chosen.terminal and chosen.answer == outcome.answer == extract_answer(
        "".join(tree.steps(chosen.index))
    )
    finished = [node for node in tree.nodes if node.terminal and node.visits]
    assert chosen.scores.combined == max(node.scores.combined for node in finished if node.answer is not None)
    assert outcome.generated_tokens == policy.stats().generated_tokens == tree.generated_tokens


def test_beam_last_step_scoring_uses_the_last_prm_only() -> None:
    outcome, _ = _beam(_settings(beam_width=2, beam_k=2, beam_score="last"))
    assert all(node.scores.combined == node.scores.prm for node in outcome.tree.nodes[1:])


def test_beam_stops_at_max_depth_when_no_option_answers() -> None:
    class Rambler(FakePolicy):
        def propose(self, state, *, k, termination, max_tokens, temperature, seed):
            self.calls.append(("propose", k))
            ids = self.tokenizer.encode("and then some more.\n")
            return [Option("and then some more.\n", ids, -1.0, -0.25, False, "newline")] * k

    outcome, policy = _beam(_settings(beam_width=2, beam_k=2, search=SearchConfig(max_depth=3)), Rambler())
    assert max(node.depth for node in outcome.tree.nodes) == 3
    assert outcome.answer is None and outcome.tree.nodes[outcome.chosen].depth == 3
    assert len(policy.calls) == 1 + 2 + 2


def test_beam_needs_the_prm() -> None:
    with pytest.raises(ConfigError, match="weight_prm"):
        beam_search(QUESTION, policy=FakePolicy(), critics=Critics(), settings=_settings())


def test_unknown_baseline_and_bad_settings_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="unknown baseline 'mcts'"):
        run_baseline("mcts", QUESTION, policy=FakePolicy(), critics=Critics(), settings=_settings())
    for overrides, message in (
        ({"samples": 0}, "samples must be >= 1"),
        ({"sample_temperature": 0}, r"sample_temperature must be in \(0, 2\]"),
        ({"beam_score": "max"}, "beam_score must be one of"),
        ({"beam_k": 0}, "beam_k must be >= 1"),
    ):
        with pytest.raises(ConfigError, match=message):
            EvalSettings(**overrides)
    with pytest.raises(ConfigError, match="unknown eval setting"):
        EvalSettings.from_dict({"samplez": 3})


def test_settings_round_trip_through_json() -> None:
    import json

    settings = _settings(samples=4, beam_score="last")
    again = EvalSettings.from_dict(json.loads(json.dumps(settings.to_dict())))
    assert again == settings and again.seed == 3


def test_hf_draw_at_temperature_zero_is_the_argmax_with_temperature_one_logprobs() -> None:
    torch = pytest.importorskip("torch")
    from engine.policies.hf import HFPolicy

    logits = torch.tensor([[0.1, 2.0, 1.9, -1.0], [3.0, 0.0, 2.999, 0.0]])
    generator = torch.Generator().manual_seed(0)
    picked, logprobs = HFPolicy._draw(logits, 0.0, generator)
    assert picked == [1, 0]
    expected = torch.log_softmax(logits, dim=-1)
    assert logprobs == pytest.approx([expected[0, 1].item(), expected[1, 0].item()])
    sampled, _ = HFPolicy._draw(logits, 1.0, torch.Generator().manual_seed(0))
    assert all(0 <= token < 4 for token in sampled)
    with pytest.raises(ValueError, match="temperature must be >= 0"):
        HFPolicy._draw(logits, -0.5, generator)
