"""The engine's public surface: search a problem into the store, resume a run.

A thin facade in the manner of vLLM's ``LLM``: it builds the policy, critics
and similarity filter from names, a ``SearchConfig`` (how one search runs) and
``CriticModels`` (which trained models the critics run on), opens the run and
tree rows, and delegates to ``engine.search.run_search``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from engine.answer_selection import choose_answers
from engine.config import CriticModels, SearchConfig
from engine.critics import Critics
from engine.errors import CriticCheckpointError, RunNotResumable, ValueCheckpointError
from engine.persist import (
    StoreSink,
    create_run,
    create_tree,
    load_tree,
    set_run_status,
    tracked_run,
    writer_alive,
)
from engine.search import mix_seed, run_search
from engine.tree import Tree
from engine.types import HiddenStateReader, Policy, Problem, SimilarityFn
from store import schema

CRITIC_NAMES = ("value", "prm", "orm", "tool")

PROGRAM_SALT = 3
"""Mixed into the config's seed for the program verifier's sampling."""


@dataclass
class Components:
    """Everything a search needs besides the problem and the per-run config.

    Attributes:
        policy: the policy that writes options.
        rollout_policy: the policy that finishes rollouts (``policy`` itself
            unless a separate rollout model was given).
        critics: the critics that were loaded; a config may still turn any of
            them off with a weight of 0.
        similarity: the sibling similarity function, or None (filter off).
        critic_models: the trained critic models the critics run on.
        critic_sources: one line per critic saying what it runs on.
    """

    policy: Policy
    rollout_policy: Policy
    critics: Critics
    similarity: SimilarityFn | None
    critic_models: CriticModels
    critic_sources: dict[str, str]

    @property
    def backend(self) -> str | None:
        """The policy's ``load_policy`` backend (None for a policy made otherwise)."""
        return getattr(self.policy, "backend", None)

    def critic_info(self, config: SearchConfig) -> dict[str, Any]:
        """What a run stores in ``Run.critics``: per critic whether it is active
        under ``config``, its weight, what it runs on and its checkpoint."""
        weights = self.critics.weights(config)
        checkpoints = self.critic_models.to_dict()
        return {
            name: {
                "active": weights[name] > 0,
                "weight": weights[name],
                "source": self.critic_sources[name],
                "checkpoint": checkpoints.get(name),
            }
            for name in CRITIC_NAMES
        }

    def reset_caches(self) -> None:
        """Empty every loaded model's prefix / KV cache (those that keep one).

        A prompt read partly from a cache is computed in other batch shapes than
        one read whole, and on llama.cpp's quantized weights (and, more rarely,
        in torch) that moves the logits slightly, which can change a sampled
        token. ``evaluate`` calls this before each problem, so a problem's
        answer depends on the problem and the seed only, not on which problems
        this process solved before: a fan-out over workers, or a resumed run,
        solves each problem as one uninterrupted process does.
        """
        models = [self.policy, self.rollout_policy]
        for critic, holds in (
            (self.critics.prm, "scorer"),
            (self.critics.orm, "scorer"),
            (self.critics.value, "reader"),
            (self.critics.tool, "policy"),
        ):
            models.append(getattr(critic, holds, None))
        reset: set[int] = set()
        for model in models:
            if id(model) not in reset and hasattr(model, "reset_cache"):
                reset.add(id(model))
                model.reset_cache()


def build_components(
    config: SearchConfig,
    *,
    model: str,
    critic_models: CriticModels | None = None,
    rollout_model: str | None = None,
    policy: Policy | None = None,
    rollout_policy: Policy | None = None,
) -> Components:
    """Load what ``config`` turns on (a critic of weight 0 is not loaded), its
    trained critics from ``critic_models``. Pass ``policy`` to reuse a loaded model."""
    from engine.critics.generative import GenerativeORM, GenerativePRM
    from engine.critics.program import ProgramVerifier
    from engine.critics.tool import ArithmeticChecker
    from engine.policies import load_policy
    from engine.similarity import make_similarity

    critic_models = critic_models or CriticModels()
    policy = policy or load_policy(model)
    if rollout_policy is None:
        rollout_policy = load_policy(rollout_model) if rollout_model and rollout_model != model else policy
    value = None
    value_source = "off: no value-head checkpoint given"
    if critic_models.value:
        from engine.critics.value import ValueHeadCritic, load_value_head

        head, head_config = load_value_head(critic_models.value)
        # Backends that read no hidden states get the value model as its own HF model.
        reader = policy if isinstance(policy, HiddenStateReader) else load_policy(model, backend="hf")
        hidden_size = reader.last_hidden([reader.root_state(TOKENIZER_PROBE)]).shape[-1]
        if hidden_size != head.hidden_size:
            raise ValueCheckpointError(
                f"the value head {critic_models.value} reads hidden states of size {head.hidden_size} "
                f"(trained on {head_config.get('base_model')}), but {model} gives {hidden_size}; "
                "train a value head for this policy"
            )
        value = ValueHeadCritic(head, reader)
        value_source = f"checkpoint {critic_models.value} (trained on {head_config.get('base_model')})"
    # A trained PRM/ORM is its own HF model; without one the policy answers the rubric itself.
    prm, orm = None, None
    if config.weight_prm > 0:
        prm = GenerativePRM(_critic_model("prm", critic_models.prm, policy) if critic_models.prm else policy)
    if config.weight_orm > 0:
        orm = GenerativeORM(_critic_model("orm", critic_models.orm, policy) if critic_models.orm else policy)
    tool = None
    if config.weight_tool > 0 and config.tool == "program":
        tool = ProgramVerifier(
            policy,
            programs=config.programs,
            temperature=config.program_temperature,
            max_tokens=config.program_max_tokens,
            seed=mix_seed(config.seed, PROGRAM_SALT),
        )
    elif config.weight_tool > 0:
        tool = ArithmeticChecker()
    critics = Critics(value=value, prm=prm, orm=orm, tool=tool)
    sources = {
        "value": value_source,
        "prm": f"generative, on {critic_models.prm or model}",
        "orm": f"generative, on {critic_models.orm or model}",
        "tool": (
            f"program checker: {config.programs} programs by {model}, run in a sandbox"
            if config.tool == "program"
            else "arithmetic checker (safe evaluator)"
        ),
    }
    similarity = None if config.similarity == "off" else make_similarity(config.similarity)
    return Components(policy, rollout_policy, critics, similarity, critic_models, sources)


TOKENIZER_PROBE = "Tom buys 3 apples at $1.25 each; 3 * 1.25 = 3.75. The answer is 3.75."
"""Text a trained critic's tokenizer must split exactly as the policy's does."""


def _critic_model(name: str, path: str, policy: Policy) -> Policy:
    """The trained PRM/ORM at ``path`` (an HF folder), refused with one line when
    its tokenizer splits text differently from the policy's: it was trained for
    another model, and its rubric prompts would not mean what they meant in training."""
    from engine.policies import load_policy

    critic = load_policy(path, backend="hf")
    if critic.extend((), TOKENIZER_PROBE) != policy.extend((), TOKENIZER_PROBE):
        raise CriticCheckpointError(
            f"the {name.upper()} checkpoint {path} does not use the policy {policy.name}'s tokenizer; "
            f"train one from {policy.name} (canopy improve) or drop --{name}-checkpoint"
        )
    return critic


def stored_critic_models(run: schema.Run) -> CriticModels:
    """The critic models stored run ``run`` used. Runs stored before
    ``CriticModels`` existed kept them as ``*_checkpoint`` keys of their search config."""
    entries = {name: run.critics.get(name) or {} for name in ("value", "prm", "orm")}
    if any("checkpoint" in entry for entry in entries.values()):
        return CriticModels(**{name: entry.get("checkpoint") for name, entry in entries.items()})
    search = run.config["settings"].get("search", {}) if "settings" in run.config else run.config
    return CriticModels(**{name: search.get(f"{name}_checkpoint") for name in entries})


def effective_config(config: SearchConfig, critics: Critics) -> dict[str, Any]:
    """The config as it ran: a critic that is off has weight 0."""
    data = config.to_dict()
    for name, weight in critics.weights(config).items():
        data[f"weight_{name}"] = weight
    return data


@dataclass(frozen=True)
class SearchResult:
    """What ``canopy search --json`` prints."""

    run_id: int
    tree_id: int
    nodes: int
    filtered: int
    simulations: int
    answer: str | None
    answers: dict[str, str | None]
    gold: str | None
    correct: bool | None
    generated_tokens: int
    prefill_tokens: int
    seconds: float
    model: str

    def to_dict(self) -> dict[str, Any]:
        return dict(vars(self))


def search_tree(
    engine: Engine,
    *,
    tree_id: int,
    tree: Tree | None,
    problem: Problem,
    components: Components,
    config: SearchConfig,
    on_simulation: Callable[[Tree], None] | None,
) -> SearchResult:
    """Grow (or, given ``tree``, resume) stored tree ``tree_id`` until the
    config's simulations are done, then choose and store its answers."""
    policy = components.policy
    sink = StoreSink(
        engine, tree_id, prefill_tokens=lambda: policy.stats().prefill_tokens, on_simulation=on_simulation
    )
    started = time.monotonic()
    tree = tree or Tree.new(problem.question, policy.root_state(problem.question))
    sink.start(tree)
    tree = run_search(
        question=problem.question,
        policy=policy,
        critics=components.critics,
        config=config,
        similarity=None if config.similarity == "off" else components.similarity,
        rollout_policy=components.rollout_policy,
        sink=sink,
        tree=tree,
    )
    uses_programs = config.tool == "program" and components.critics.weights(config)["tool"] > 0
    choices = choose_answers(tree, program_votes=config.program_votes if uses_programs else 0.0)
    tree_row = sink.finish(tree, choices, method=config.answer_selection, gold=problem.answer)
    with Session(engine) as session:
        run_id = session.get(schema.Tree, tree_id).run_id
    return SearchResult(
        run_id=run_id,
        tree_id=tree_id,
        nodes=len(tree.nodes),
        filtered=len(tree.filtered),
        simulations=tree.simulations_done,
        answer=tree_row.answer,
        answers=dict(tree_row.answers),
        gold=problem.answer,
        correct=tree_row.correct,
        generated_tokens=tree.generated_tokens,
        prefill_tokens=tree_row.prefill_tokens,
        seconds=round(time.monotonic() - started, 3),
        model=policy.name,
    )


def search_problem(
    engine: Engine,
    problem: Problem,
    *,
    model: str,
    config: SearchConfig,
    components: Components,
    on_run_created: Callable[[int], None] | None = None,
    on_simulation: Callable[[Tree], None] | None = None,
) -> SearchResult:
    """Search ``problem`` into a new run; on any failure the run is marked failed
    (or interrupted on Ctrl-C/SIGTERM) and the exception propagates."""
    run_id = create_run(
        engine,
        model=model,
        task=problem.task,
        seed=config.seed,
        config=effective_config(config, components.critics),
        critics=components.critic_info(config),
        rollout_model=getattr(components.rollout_policy, "name", None),
        backend=components.backend,
    )
    if on_run_created is not None:
        on_run_created(run_id)
    prompt = components.policy.decode(components.policy.root_state(problem.question))
    tree_id = create_tree(
        engine, run_id=run_id, problem=problem, prompt=prompt, simulations=config.simulations
    )
    return tracked_run(
        engine,
        run_id,
        lambda: search_tree(
            engine,
            tree_id=tree_id,
            tree=None,
            problem=problem,
            components=components,
            config=config,
            on_simulation=on_simulation,
        ),
    )


def run_to_resume(engine: Engine, run_id: int) -> tuple[schema.Run, schema.Tree]:
    """The run and its unfinished tree, or ``RunNotResumable`` saying why not."""
    with Session(engine) as session:
        run = session.get(schema.Run, run_id)
        if run is None:
            raise RunNotResumable(f"no run with id {run_id} in this database (see `canopy trees`)")
        trees = session.exec(select(schema.Tree).where(schema.Tree.run_id == run_id)).all()
    unfinished = [tree for tree in trees if tree.status != "completed"]
    if run.status == "completed" or not unfinished:
        raise RunNotResumable(f"run {run_id} is already complete; nothing to resume")
    if writer_alive(run):
        raise RunNotResumable(f"run {run_id} is being written right now by process {run.pid}; stop it first")
    return run, unfinished[0]


def resume_search(
    engine: Engine,
    run_id: int,
    *,
    components: Components,
    config: SearchConfig,
    on_simulation: Callable[[Tree], None] | None = None,
) -> SearchResult:
    """Continue run ``run_id`` from its last committed simulation."""
    _, tree_row = run_to_resume(engine, run_id)
    tree, problem = load_tree(engine, tree_row.id)
    if not tree.nodes:
        tree = None
    set_run_status(engine, run_id, "running")
    return tracked_run(
        engine,
        run_id,
        lambda: search_tree(
            engine,
            tree_id=tree_row.id,
            tree=tree,
            problem=problem,
            components=components,
            config=config,
            on_simulation=on_simulation,
        ),
    )
