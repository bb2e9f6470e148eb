"""Training the generative outcome reward model (ORM) on outcome labels mined from trees.

The ORM is the policy asked a rubric question (``engine.critics.generative``):
its score is p("True") / (p("True") + p("False")) of the reply's first token.
So it is trained as SFT whose prompt is that rubric chat turn (system
``ORM_SYSTEM``, user ``orm_prompt``), tokenized as ``HFPolicy.chat_ids`` does,
and whose completion is the single token "True" or "False" (no EOS: the score
reads only that first token). Skewed labels are balanced by oversampling the
rarer one (``balance_classes``).

The result is a merged Hugging Face directory (see ``training.common`` for the
backends that load it; llama.cpp needs a GGUF conversion first).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from engine.config import ConfigError
from engine.critics.generative import ORM_SYSTEM, orm_prompt
from training.checkpoints import TrainResult
from training.common import (
    ProgressFn,
    balance_labels,
    check_examples,
    load_base_model,
    prompt_renderer,
    quiet_progress_bars,
    say,
    train_on_completions,
    verdict_rows,
)
from training.rubric_config import RubricTrainConfig


def train_orm(
    examples: Sequence[dict],
    *,
    base_model: str,
    output_dir: str | Path,
    config: RubricTrainConfig,
    progress: ProgressFn | None = None,
) -> TrainResult:
    """Train ``base_model`` as an ORM on orm payloads (``question``, ``steps``,
    ``label``) and save the merged model to ``output_dir`` (replaced
    atomically; a failed run leaves the old one intact).

    Raises:
        ConfigError: no examples, a payload without ``question``/``steps``/``label``
            or without steps, or labels that are all the same.
    """
    started = time.monotonic()
    check_examples(examples, ("question", "steps", "label"), "orm")
    for index, example in enumerate(examples):
        if not example["steps"]:
            raise ConfigError(f"orm example {index} has no steps; an ORM label is about a finished solution")
    labels = [bool(example["label"]) for example in examples]
    if len(set(labels)) < 2:
        raise ConfigError(
            f"every orm label is {labels[0]}; an ORM needs both correct and incorrect solutions "
            "(mine more trees, or harder problems)"
        )

    with quiet_progress_bars():
        say(progress, f"loading {base_model}")
        model, tokenizer = load_base_model(base_model)
        renderer = prompt_renderer(model, tokenizer, base_model)
        rows = verdict_rows(renderer, examples, labels, system=ORM_SYSTEM, prompt=orm_prompt, finished=True)
        if config.balance_classes:
            rows = balance_labels(rows, labels, config.seed)
        return train_on_completions(
            model,
            tokenizer,
            rows,
            config=config,
            kind="orm",
            base_model=base_model,
            output_dir=output_dir,
            progress=progress,
            started=started,
        )
