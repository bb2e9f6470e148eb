"""Option-level MCTS as a function of its inputs.

One simulation: select a leaf (PUCT/UCT), expand it with a batch of options,
drop options too similar to a sibling, evaluate the new children with the
critics (PRM on the step, value head on the state, rollouts scored by the ORM and
the arithmetic checker), and back the best new child's value up the path.
Every phase emits a ``SearchEvent``; after each simulation the sink gets the
changed nodes, so a store can commit it whole.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from engine.answer_selection import vote_leader
from engine.answers import extract_answer
from engine.config import SearchConfig
from engine.critics import Critics, combine
from engine.selection import (
    branching_width,
    importance,
    needs_children,
    priors_from_logprobs,
    select_leaf,
)
from engine.termination import make_termination
from engine.tree import FilteredRecord, Node, Tree
from engine.types import (
    ROOT_INDEX,
    CriticScores,
    Option,
    Phase,
    Policy,
    ProgramSource,
    Rollout,
    SearchEvent,
    SimilarityFn,
    TrajectoryRequest,
)


class SearchSink(Protocol):
    """Receives each completed simulation (to persist it, show it, ...)."""

    def simulation_done(
        self,
        tree: Tree,
        *,
        simulation: int,
        events: Sequence[SearchEvent],
        changed: set[int],
        filtered: Sequence[FilteredRecord],
    ) -> None: ...


@dataclass
class _Simulation:
    """What one simulation did, gathered for the sink."""

    index: int
    events: list[SearchEvent] = field(default_factory=list)
    changed: set[int] = field(default_factory=set)
    filtered: list[FilteredRecord] = field(default_factory=list)

    def emit(self, phase: Phase, node: int, **data) -> None:
        self.events.append(SearchEvent(self.index, phase, node, data))


def mix_seed(*parts: int) -> int:
    """A deterministic 63-bit seed from integers (stable across processes)."""
    value = 0x9E3779B97F4A7C15
    for part in parts:
        value = (value ^ (part & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        value ^= value >> 31
    return value & 0x7FFFFFFFFFFFFFFF


def run_search(
    *,
    question: str,
    policy: Policy,
    critics: Critics,
    config: SearchConfig,
    similarity: SimilarityFn | None = None,
    rollout_policy: Policy | None = None,
    sink: SearchSink | None = None,
    tree: Tree | None = None,
) -> Tree:
    """Grow a tree over ``question`` until ``config.simulations`` are done.

    Pass a ``tree`` (e.g. loaded from the store) to resume it; the seeds of every
    sampling batch derive from (config.seed, node, expansion), so a resumed search
    draws what the uninterrupted one would have. ``similarity=None`` turns the
    sibling filter off; ``rollout_policy=None`` rolls out with ``policy``.
    """
    tree = tree or Tree.new(question, policy.root_state(question))
    search = _Search(
        tree=tree,
        policy=policy,
        rollout_policy=rollout_policy or policy,
        critics=critics,
        config=config,
        similarity=similarity,
    )
    while tree.simulations_done < config.simulations and not (
        config.stop_when_settled and settled(tree, config, program_votes=search.program_votes)
    ):
        simulation = search.simulate()
        tree.simulations_done += 1
        if sink is not None:
            sink.simulation_done(
                tree,
                simulation=simulation.index,
                events=simulation.events,
                changed=simulation.changed,
                filtered=simulation.filtered,
            )
    return tree


@dataclass
class _Search:
    tree: Tree
    policy: Policy
    rollout_policy: Policy
    critics: Critics
    config: SearchConfig
    similarity: SimilarityFn | None

    def __post_init__(self) -> None:
        self.termination = make_termination(self.config.termination)
        self.rollout_termination = make_termination(["answer"])
        self.weights = self.critics.weights(self.config)
        tool = self.critics.tool if self.weights["tool"] > 0 else None
        self.verifier = tool if isinstance(tool, ProgramSource) else None
        self.program_votes = self.config.program_votes if self.verifier is not None else 0.0
        if self.verifier is not None and self.tree.programs:
            self.verifier.remember(self.tree.question, self.tree.programs)

    def simulate(self) -> _Simulation:
        tree, config = self.tree, self.config
        sim = _Simulation(tree.simulations_done)
        if self.verifier is not None and not tree.programs:
            tree.programs = list(self.verifier.programs_for(tree.question))
            tree.generated_tokens += sum(program.tokens for program in tree.programs)
            sim.emit("verify", ROOT_INDEX, verdicts=[program.verdict for program in tree.programs])
        path = select_leaf(tree, rule=config.selection, c=config.c)
        leaf = tree.nodes[path[-1]]
        sim.emit("select", leaf.index, path=path)
        new_children = self.expand(leaf, sim) if needs_children(leaf) else []
        if new_children:
            best = max(new_children, key=lambda node: (node.scores.combined, -node.index))
            path = [*path, best.index]
            value = best.scores.combined
        else:
            value = leaf.q
        for index in path:
            tree.nodes[index].visits += 1
            tree.nodes[index].value_sum += value
        sim.changed.update(path)
        sim.emit("backpropagate", path[-1], path=path, value=value)
        return sim

    def expand(self, leaf: Node, sim: _Simulation) -> list[Node]:
        tree, config = self.tree, self.config
        at_root = leaf.index == ROOT_INDEX
        c_min = config.root_min_children if at_root else config.min_children
        c_max = config.root_max_children if at_root else config.max_children
        k = c_min if not leaf.expanded else leaf.target_width - len(leaf.children)
        options = self.policy.propose(
            tree.state(leaf.index),
            k=k,
            termination=self.termination,
            max_tokens=config.max_option_tokens,
            temperature=config.temperature,
            seed=mix_seed(config.seed, leaf.index, leaf.expansions),
        )
        leaf.expansions += 1
        tree.generated_tokens += sum(len(option.token_ids) for option in options)
        sim.changed.add(leaf.index)
        sim.emit("expand", leaf.index, sampled=len(options))
        children = self.filter(leaf, options, sim)
        if not children:
            leaf.exhausted = True
            return []
        priors = priors_from_logprobs([tree.nodes[i].option.logprob_mean for i in leaf.children])
        for index, prior in zip(leaf.children, priors, strict=True):
            tree.nodes[index].prior = prior
        sim.changed.update(leaf.children)
        self.evaluate(children, sim)
        if at_root:
            values = [tree.nodes[i].scores.combined for i in leaf.children]
            leaf.scores = CriticScores(combined=sum(values) / len(values))
        leaf.target_width = branching_width(
            importance(tree, leaf), alpha=config.branching_alpha, c_min=c_min, c_max=c_max
        )
        return children

    def filter(self, leaf: Node, options: list[Option], sim: _Simulation) -> list[Node]:
        """Make children of the options no sibling already says; record the rest.

        Each option is compared with the node's existing children and with the
        options of this batch already kept; above the threshold it is filtered.
        """
        tree = self.tree
        existing = list(leaf.children)
        if self.similarity is not None:
            texts = [option.text.strip() for option in options]
            old_texts = [tree.nodes[i].option.text.strip() for i in existing]
            to_existing = self.similarity(texts, old_texts) if existing else [[] for _ in options]
            to_batch = self.similarity(texts, texts)
        kept: list[tuple[int, Node]] = []
        for j, option in enumerate(options):
            collision: tuple[float, int] | None = None
            if self.similarity is not None:
                scored = [(float(s), i) for s, i in zip(to_existing[j], existing, strict=True)]
                scored += [(float(to_batch[j][pos]), node.index) for pos, node in kept]
                collision = max(scored, default=None)
            if collision is not None and collision[0] > self.config.similarity_threshold:
                record = FilteredRecord(
                    leaf.index, option, collision[0], collision[1], sim.index, self.config.similarity
                )
                tree.filtered.append(record)
                sim.filtered.append(record)
            else:
                kept.append((j, tree.add_child(leaf.index, option, simulation=sim.index)))
        children = [node for _, node in kept]
        sim.changed.update(child.index for child in children)
        sim.emit("filter", leaf.index, kept=[child.index for child in children], filtered=len(sim.filtered))
        return children

    def evaluate(self, children: list[Node], sim: _Simulation) -> None:
        tree, config, critics = self.tree, self.config, self.critics
        requests = []
        for child in children:
            steps = tree.steps(child.index)
            stated = extract_answer(child.option.text)
            child.terminal = child.option.finished or stated is not None or child.depth >= config.max_depth
            if child.terminal:
                child.answer = extract_answer("".join(steps))
            requests.append(TrajectoryRequest(tree.question, steps, child.terminal))
        prm = self._score("prm", lambda: critics.prm.score_steps(requests), len(children))
        value = self._score("value", lambda: critics.value.score_states(requests), len(children))
        pending = [child for child in children if not child.terminal] if config.rollouts > 0 else []
        completions = dict(zip((child.index for child in pending), self.rollout(pending), strict=True))
        outcome_requests: list[TrajectoryRequest] = []
        owners: list[tuple[Node, Option | None]] = []
        for child, request in zip(children, requests, strict=True):
            if child.terminal:
                outcome_requests.append(request)
                owners.append((child, None))
            for completion in completions.get(child.index, []):
                outcome_requests.append(
                    TrajectoryRequest(tree.question, (*request.steps, completion.text), True)
                )
                owners.append((child, completion))
        orm = self._score("orm", lambda: critics.orm.score_outcomes(outcome_requests), len(outcome_requests))
        tool = self._score(
            "tool", lambda: critics.tool.score_outcomes(outcome_requests), len(outcome_requests)
        )
        outcomes: dict[int, list[tuple[float | None, float | None]]] = {child.index: [] for child in children}
        for (child, completion), request, orm_score, tool_score in zip(
            owners, outcome_requests, orm, tool, strict=True
        ):
            outcomes[child.index].append((orm_score, tool_score))
            if completion is not None:
                child.rollouts.append(
                    Rollout(
                        text=completion.text,
                        tokens=len(completion.token_ids),
                        answer=extract_answer("".join(request.steps)),
                        orm=orm_score,
                        tool=tool_score,
                    )
                )
        for child, prm_score, value_score in zip(children, prm, value, strict=True):
            orm_score = _mean([pair[0] for pair in outcomes[child.index]])
            tool_score = _mean([pair[1] for pair in outcomes[child.index]])
            parts = {"value": value_score, "prm": prm_score, "orm": orm_score, "tool": tool_score}
            child.scores = CriticScores(**parts, combined=combine(parts, self.weights))
            sim.emit("evaluate", child.index, **parts, combined=child.scores.combined)
            if child.rollouts:
                sim.emit("rollout", child.index, answers=[rollout.answer for rollout in child.rollouts])

    def rollout(self, children: list[Node]) -> list[list[Option]]:
        """``config.rollouts`` completions from each child, as one batch."""
        if not children:
            return []
        tree, config = self.tree, self.config
        if self.rollout_policy is self.policy:
            states = [tree.state(child.index) for child in children]
        else:
            root = self.rollout_policy.root_state(tree.question)
            states = [
                self.rollout_policy.extend(root, "".join(tree.steps(child.index))) for child in children
            ]
        completions = self.rollout_policy.complete(
            states,
            n=config.rollouts,
            termination=self.rollout_termination,
            max_tokens=config.rollout_max_tokens,
            temperature=config.rollout_temperature,
            seed=mix_seed(config.seed, children[0].index, 1),
        )
        tree.generated_tokens += sum(len(option.token_ids) for batch in completions for option in batch)
        return completions

    def _score(self, critic: str, call, count: int) -> list[float | None]:
        if self.weights[critic] == 0 or count == 0:
            return [None] * count
        return list(call())


def settled(tree: Tree, config: SearchConfig, *, program_votes: float = 0.0) -> bool:
    """Whether the vote is decided: the leading answer's lead over the runner-up
    exceeds what the remaining simulations could add to the runner-up (each
    makes at most ``c_max`` children, each finishing in at most ``max(1,
    rollouts)`` trajectories of weight <= 1)."""
    leader, lead = vote_leader(tree, program_votes=program_votes)
    per_simulation = max(config.root_max_children, config.max_children) * max(1, config.rollouts)
    return leader is not None and lead > (config.simulations - tree.simulations_done) * per_simulation


def _mean(values: Sequence[float | None]) -> float | None:
    present = [value for value in values if value is not None]
    return sum(present) / len(present) if present else None


__all__ = ["SearchSink", "mix_seed", "run_search", "settled"]
