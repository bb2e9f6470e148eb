"""Option-level MCTS as a function of its inputs.

One simulation: select a leaf (PUCT/UCT), expand it with a batch of options,
drop options too similar to a sibling, evaluate the new children with the
critics (PRM on the step, value head on the state, rollouts scored by the ORM and
the arithmetic checker), and back the best new child's value up the path.

Simulations run in steps of up to ``config.parallel_simulations``: a step
selects that many distinct leaves under a virtual loss (``select_leaves``),
expands them in one decode batch where the policy can (``BatchProposer``),
evaluates all their new children together (one call per critic, one batch of
rollouts) and backs each path up. Every phase emits a ``SearchEvent`` under its
own simulation's index; after each step the sink gets the changed nodes, so a
store can commit the step whole. A step of one simulation is the
one-at-a-time search, draw for draw.
"""

from __future__ import annotations

import warnings
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
    select_leaves,
)
from engine.termination import make_termination
from engine.tree import FilteredRecord, Node, Tree
from engine.types import (
    ROOT_INDEX,
    BatchProposer,
    CriticScores,
    Option,
    Phase,
    Policy,
    ProgramSource,
    ProposeRequest,
    Rollout,
    SearchEvent,
    SimilarityFn,
    TrajectoryRequest,
)


class SearchSink(Protocol):
    """Receives each completed step (to persist it, show it, ...): the
    simulations ``simulations`` (consecutive indices, one or more), their events
    in simulation order, the nodes they changed and the options they filtered.
    A store commits the step in one transaction."""

    def step_done(
        self,
        tree: Tree,
        *,
        simulations: range,
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

    Each step runs ``config.parallel_simulations`` simulations (fewer when fewer
    are left, or when a selection reaches a leaf the step already chose), and
    the sink gets each step whole, so a resumed search continues from a step
    boundary. With more than one per step the tree differs from a one-at-a-time
    search's (a step's selections do not see each other's backups), and on a
    backend whose logits depend on the batch's shape (llama.cpp on quantized
    weights) leaves expanded together may draw slightly other options than each
    alone; either way the search is deterministic under its seed.
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
        simulations = search.step(
            min(config.parallel_simulations, config.simulations - tree.simulations_done)
        )
        tree.simulations_done += len(simulations)
        if sink is not None:
            sink.step_done(
                tree,
                simulations=range(simulations[0].index, simulations[-1].index + 1),
                events=[event for simulation in simulations for event in simulation.events],
                changed=set().union(*(simulation.changed for simulation in simulations)),
                filtered=[record for simulation in simulations for record in simulation.filtered],
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
        self.warned_unbatched = False
        if self.verifier is not None and self.tree.programs:
            self.verifier.remember(self.tree.question, self.tree.programs)

    def step(self, count: int) -> list[_Simulation]:
        """Up to ``count`` simulations on distinct leaves, expanded and evaluated together."""
        tree, config = self.tree, self.config
        paths = select_leaves(tree, count=count, rule=config.selection, c=config.c)
        simulations = [_Simulation(tree.simulations_done + offset) for offset in range(len(paths))]
        if self.verifier is not None and not tree.programs:
            tree.programs = list(self.verifier.programs_for(tree.question))
            tree.generated_tokens += sum(program.tokens for program in tree.programs)
            verdicts = [program.verdict for program in tree.programs]
            simulations[0].emit("verify", ROOT_INDEX, verdicts=verdicts)
        for sim, path in zip(simulations, paths, strict=True):
            sim.emit("select", path[-1], path=path)
        growing = [
            (sim, tree.nodes[path[-1]])
            for sim, path in zip(simulations, paths, strict=True)
            if needs_children(tree.nodes[path[-1]])
        ]
        new_children: dict[int, list[Node]] = {sim.index: [] for sim in simulations}
        proposals = self.propose([leaf for _, leaf in growing])
        for (sim, leaf), options in zip(growing, proposals, strict=True):
            new_children[sim.index] = self.adopt(leaf, options, sim)
        children = [child for sim in simulations for child in new_children[sim.index]]
        if children:
            self.evaluate(children, {sim.index: sim for sim in simulations})
        for sim, leaf in growing:
            if new_children[sim.index]:
                self.update_width(leaf)
        for sim, path in zip(simulations, paths, strict=True):
            self.backpropagate(path, new_children[sim.index], sim)
        return simulations

    def propose(self, leaves: list[Node]) -> list[list[Option]]:
        """New options for each leaf, in one decode batch where the policy can."""
        config = self.config
        requests = [
            ProposeRequest(
                self.tree.state(leaf.index),
                self.missing_children(leaf),
                mix_seed(config.seed, leaf.index, leaf.expansions),
            )
            for leaf in leaves
        ]
        sampling = {
            "termination": self.termination,
            "max_tokens": config.max_option_tokens,
            "temperature": config.temperature,
        }
        if len(requests) > 1 and isinstance(self.policy, BatchProposer):
            return self.policy.propose_many(requests, **sampling)
        if len(requests) > 1 and not self.warned_unbatched:
            warnings.warn(
                f"the {self.policy.name} policy has no propose_many: parallel simulations expand "
                "their leaves one at a time",
                stacklevel=4,
            )
            self.warned_unbatched = True
        return [
            self.policy.propose(request.state, k=request.k, seed=request.seed, **sampling)
            for request in requests
        ]

    def branching_limits(self, leaf: Node) -> tuple[int, int]:
        """(c_min, c_max) at ``leaf``: the root's own limits, or everyone else's."""
        if leaf.index == ROOT_INDEX:
            return self.config.root_min_children, self.config.root_max_children
        return self.config.min_children, self.config.max_children

    def missing_children(self, leaf: Node) -> int:
        """Options to sample at ``leaf``: c_min at first, then up to its target width."""
        if not leaf.expanded:
            return self.branching_limits(leaf)[0]
        return leaf.target_width - len(leaf.children)

    def adopt(self, leaf: Node, options: list[Option], sim: _Simulation) -> list[Node]:
        """Make children of ``leaf``'s new options (those the filter keeps) and
        set every child's prior; mark the leaf exhausted when none is kept."""
        tree = self.tree
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
        return children

    def update_width(self, leaf: Node) -> None:
        """Once ``leaf``'s new children are evaluated: the root's own score (the
        mean of its children's) and ``leaf``'s target width n(s)."""
        tree = self.tree
        if leaf.index == ROOT_INDEX:
            values = [tree.nodes[i].scores.combined for i in leaf.children]
            leaf.scores = CriticScores(combined=sum(values) / len(values))
        c_min, c_max = self.branching_limits(leaf)
        leaf.target_width = branching_width(
            importance(tree, leaf), alpha=self.config.branching_alpha, c_min=c_min, c_max=c_max
        )

    def backpropagate(self, path: list[int], new_children: list[Node], sim: _Simulation) -> None:
        """Add the best new child's value (or, with none, the leaf's Q) to every
        node from the root down to that child."""
        tree = self.tree
        if new_children:
            best = max(new_children, key=lambda node: (node.scores.combined, -node.index))
            path = [*path, best.index]
            value = best.scores.combined
        else:
            value = tree.nodes[path[-1]].q
        for index in path:
            tree.nodes[index].visits += 1
            tree.nodes[index].value_sum += value
        sim.changed.update(path)
        sim.emit("backpropagate", path[-1], path=path, value=value)

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

    def evaluate(self, children: list[Node], simulations: dict[int, _Simulation]) -> None:
        """Score ``children`` (new ones, of one or several leaves) with every
        critic in one call each, their rollouts in one batch; each child's
        events go to the simulation that made it."""
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
            sim = simulations[child.created_simulation]
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
