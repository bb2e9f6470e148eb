"""The self-improvement loop: search, mine, train, evaluate, repeat.

One ``Iteration`` row per round. Round k starts from the checkpoints of round
k - 1 (round 0, named "base", is the starting model evaluated as it is) and
runs these stages (``training/improve_stages.py``), each recorded in
``IterationMetrics.done`` (``store/iterations.py``) when it finishes:

1. ``search``: MCTS on the round's training problems (an eval run of the store).
2. ``mine``: the trees become ``TrainingExample`` rows (SFT, DPO, value, PRM, ORM).
3. ``sft`` (and ``dpo`` when enabled): the policy, LoRA merged into a full model.
4. ``value``: the value head on the new policy's hidden states.
5. ``prm``, ``orm``: the generative critics, from the previous round's critics.
6. ``eval_greedy``, ``eval_mcts``: held-out accuracy with the new checkpoints.
7. ``critics``: each critic's precision, recall and ECE on the held-out trees.

A crash loses at most the stage in progress: ``improve(..., resume=ID)``
skips finished stages, continues an interrupted search or evaluation from its
stored trees, and retrains an unfinished checkpoint (checkpoints are replaced
atomically, so a killed training leaves the previous one intact). A stage
with nothing to learn from (say no trajectory passed the ORM threshold) is
skipped with its reason in ``IterationMetrics.skipped`` and the previous
checkpoint is kept.

Trained checkpoints are Hugging Face directories. Searches and evaluations
load them on ``ImproveConfig.backend``: ``hf`` and ``vllm`` read the folder,
``llamacpp`` a GGUF converted from it once (``engine.gguf_export``).
"""

from __future__ import annotations

import sys
import time
from typing import Any

from sqlalchemy.engine import Engine

from engine.config import ConfigError
from store.iterations import Checkpoints, IterationMetrics
from store.queries import create_iteration, iteration_chain, load_iteration, update_iteration
from store.schema import Iteration
from training.improve_config import ImproveConfig, eval_set
from training.improve_stages import IterationContext, Log, round_stages


def improve(
    engine: Engine,
    config: ImproveConfig | None = None,
    *,
    resume: int | None = None,
    log: Log | None = None,
    workers: int = 1,
    ray_address: str | None = None,
) -> list[int]:
    """Run (or, with ``resume``, continue) the loop; returns the iteration ids
    from the base to the last round. ``workers`` and ``ray_address`` fan the
    search and evaluation stages out to Ray actors (``IterationContext``).

    Raises:
        ConfigError: neither or both of ``config`` and ``resume``, or bad
            settings (also a trainer's own validation).
        StoreError: ``resume`` names no iteration of this store.
    """
    log = log or _stderr
    if (config is None) == (resume is None):
        raise ConfigError("pass either a config (a new loop) or resume=ITERATION_ID, not both")
    if resume is not None:
        chain = iteration_chain(engine, resume)
        config = ImproveConfig.from_dict(IterationMetrics.from_dict(chain[0].metrics).config)
        log(
            f"resuming the loop from iteration {resume}"
            f" ({len(chain) - 1} of {config.iterations} rounds begun)"
        )
    else:
        chain = [_begin_round(engine, config, parent=None)]
        log(f"iteration {chain[0].id}: evaluating the starting model {config.model}")
    held_out = eval_set(config)
    for round_number in range(config.iterations + 1):
        if round_number >= len(chain):
            chain.append(_begin_round(engine, config, parent=chain[-1]))
            log(f"iteration {chain[-1].id}: round {round_number} of {config.iterations}")
        row = chain[round_number]
        if row.status == "completed":
            continue
        context = IterationContext(
            engine=engine,
            config=config,
            iteration_id=row.id,
            round_number=round_number,
            held_out=held_out,
            log=log,
            workers=workers,
            ray_address=ray_address,
        )
        _run_round(context)
        chain[round_number] = load_iteration(engine, row.id)
    return [row.id for row in chain]


def _begin_round(engine: Engine, config: ImproveConfig, *, parent: Iteration | None) -> Iteration:
    """A new iteration row: the base (round 0, the starting model), or the round
    after ``parent``, starting from its checkpoints."""
    if parent is None:
        round_number, checkpoints = 0, Checkpoints(policy=config.model)
    else:
        previous = IterationMetrics.from_dict(parent.metrics)
        round_number, checkpoints = previous.round + 1, previous.checkpoints
    iteration_id = create_iteration(
        engine,
        name="base" if parent is None else f"round {round_number}",
        model=config.model,
        parent_id=None if parent is None else parent.id,
        metrics=IterationMetrics(config=config.to_dict(), round=round_number, checkpoints=checkpoints),
    )
    return load_iteration(engine, iteration_id)


def _run_round(context: IterationContext) -> None:
    """Run the round's unfinished stages; the row ends "completed", "interrupted" or "failed"."""
    engine, iteration_id = context.engine, context.iteration_id
    update_iteration(engine, iteration_id, status="running")
    try:
        for stage in round_stages(context.config, context.round_number):
            if stage.name in context.metrics().done:
                continue
            context.show(stage.name)
            started = time.perf_counter()
            stage.run(context)
            with context.recording() as metrics:
                metrics.done.append(stage.name)
                metrics.seconds[stage.name] = round(time.perf_counter() - started, 1)
        policy = context.checkpoints().policy
        update_iteration(engine, iteration_id, status="completed", stage="done", checkpoint_path=policy)
    except KeyboardInterrupt:
        update_iteration(engine, iteration_id, status="interrupted")
        context.log(
            f"iteration {iteration_id} interrupted; continue with `canopy improve --resume {iteration_id}`"
        )
        raise
    except BaseException as error:
        metrics = context.metrics()
        metrics.error = f"{type(error).__name__}: {error}"
        update_iteration(engine, iteration_id, status="failed", metrics=metrics)
        context.log(
            f"iteration {iteration_id} failed;"
            f" after fixing the cause, `canopy improve --resume {iteration_id}`"
        )
        raise


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def summary(engine: Engine, iteration_ids: list[int]) -> list[dict[str, Any]]:
    """One dict per iteration: id, name, status, accuracies, data sizes, losses, checkpoint."""
    rows = []
    for iteration_id in iteration_ids:
        row = load_iteration(engine, iteration_id)
        metrics = IterationMetrics.from_dict(row.metrics)
        rows.append(
            {
                "id": row.id,
                "name": row.name,
                "status": row.status,
                "accuracy": metrics.accuracy,
                "data": metrics.data,
                "loss": metrics.loss,
                "critics": metrics.critics,
                "skipped": metrics.skipped,
                "checkpoint": row.checkpoint_path,
            }
        )
    return rows
