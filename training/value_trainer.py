"""Training the value head on state returns mined from trees.

The language model stays frozen: every state is featurized exactly as
``ValueHeadCritic`` does at search time (the hf policy's root state for the
question extended by the path's options, joined; its final hidden state), in
batches, once. Then only the small MLP (``engine.critics.value.ValueHead``) is
trained, with a mean squared error against each state's mined return, and
scored on a held-out split. The checkpoint records the policy model it was
trained on, since a head reads only that model's hidden states.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path

from engine.config import ConfigError
from training.checkpoints import TrainResult, atomic_directory, write_marker
from training.common import ProgressFn, check_examples, quiet_progress_bars, say
from training.value_config import ValueTrainConfig


def train_value(
    examples: Sequence[dict],
    *,
    base_model: str,
    output_dir: str | Path,
    config: ValueTrainConfig,
    progress: ProgressFn | None = None,
    backend: str = "hf",
) -> TrainResult:
    """Train a value head for ``base_model`` on value payloads (``question``,
    ``steps``, ``target`` in [0, 1], optional ``count``) and save it to
    ``output_dir`` (replaced atomically; a failed run leaves the old one intact).
    The hidden states are read on ``backend`` (``hf`` or ``llamacpp``), the one
    the head will score on.

    Raises:
        ConfigError: no examples, a payload missing a key, or a target outside [0, 1].
    """
    import torch

    from engine.critics.value import ValueHead, save_value_head
    from engine.policies import load_policy

    started = time.monotonic()
    check_examples(examples, ("question", "steps", "target"), "value")
    for index, example in enumerate(examples):
        target = example["target"]
        if not isinstance(target, int | float) or not 0 <= target <= 1:
            raise ConfigError(f"value example {index} has target {target!r}; targets are returns in [0, 1]")

    say(progress, f"loading {base_model}")
    with quiet_progress_bars():
        options = {"cache_bytes": 256 << 20} if backend == "hf" else {}
        reader = load_policy(base_model, backend=backend, **options)
    states = [
        reader.extend(reader.root_state(example["question"]), "".join(example["steps"]))
        for example in examples
    ]
    features = []
    for start in range(0, len(states), config.feature_batch_size):
        features.append(reader.last_hidden(states[start : start + config.feature_batch_size]).cpu())
        say(progress, f"read {min(start + config.feature_batch_size, len(states))}/{len(states)} states")
    features = torch.cat(features)
    targets = torch.tensor([float(example["target"]) for example in examples])
    counts = [float(example.get("count", 1)) if config.weight_by_count else 1.0 for example in examples]
    weights = torch.tensor(counts).clamp_min(0.0)
    if config.balance_classes:
        weights = balanced_weights(targets, weights)
    del reader

    generator = torch.Generator().manual_seed(config.seed)
    order = torch.randperm(len(examples), generator=generator)
    held_out = min(int(len(examples) * config.eval_fraction), len(examples) - 1)
    eval_index, train_index = order[:held_out], order[held_out:]

    torch.manual_seed(config.seed)
    head = ValueHead(features.shape[-1], config.inner_size)
    optimizer = torch.optim.Adam(head.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    batches_per_epoch = math.ceil(len(train_index) / config.batch_size)
    total_steps = config.max_steps if config.max_steps > 0 else config.epochs * batches_per_epoch
    steps, losses = 0, []
    head.train()
    while steps < total_steps:
        shuffled = train_index[torch.randperm(len(train_index), generator=generator)]
        for start in range(0, len(shuffled), config.batch_size):
            batch = shuffled[start : start + config.batch_size]
            errors = (head(features[batch]) - targets[batch]) ** 2
            loss = (errors * weights[batch]).sum() / weights[batch].sum().clamp_min(1e-12)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            steps += 1
            losses.append(loss.item())
            if steps >= total_steps:
                break
        say(progress, f"step {steps}/{total_steps}: loss {losses[-1]:.4g}")
    head.eval()
    train_loss = sum(losses) / len(losses)
    eval_loss = None
    if held_out:
        with torch.no_grad():
            eval_loss = ((head(features[eval_index]) - targets[eval_index]) ** 2).mean().item()

    say(progress, f"saving {output_dir}")
    output_dir = Path(output_dir)
    with atomic_directory(output_dir) as staging:
        save_value_head(head, staging, base_model=base_model)
        metrics = {"train_loss": train_loss, "eval_loss": eval_loss, "steps": steps}
        write_marker(staging, kind="value", base_model=base_model, metrics=metrics)
    return TrainResult(
        output_dir=output_dir,
        examples=len(examples),
        steps=steps,
        train_loss=train_loss,
        eval_loss=eval_loss,
        seconds=time.monotonic() - started,
    )


def balanced_weights(targets, weights):
    """``weights`` rescaled so that the states with target >= 0.5 and those below
    carry equal shares of the total; unchanged when either side is empty."""
    high = targets >= 0.5
    total = weights.sum()
    sides = (weights[high].sum(), weights[~high].sum())
    if min(sides) <= 0:
        return weights
    return weights * (high * (total / 2 / sides[0]) + ~high * (total / 2 / sides[1]))
