"""Training the generative process reward model (PRM) on step labels mined from trees.

The PRM is the policy asked a rubric question (``engine.critics.generative``):
its score is p("True") / (p("True") + p("False")) of the reply's first token.
So it is trained as SFT whose prompt is that rubric chat turn (system
``PRM_SYSTEM``, user ``prm_prompt``), tokenized as ``HFPolicy.chat_ids`` does,
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
from engine.critics.generative import PRM_SYSTEM, prm_prompt
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


def train_prm(
    examples: Sequence[dict],
    *,
    base_model: str,
    output_dir: str | Path,
    config: RubricTrainConfig,
    progress: ProgressFn | None = None,
) -> TrainResult:
    """Train ``base_model`` as a PRM on prm payloads (``question``, ``steps``,
    ``label``) and save the merged model to ``output_dir`` (replaced
    atomically; a failed run leaves the old one intact).

    Raises:
        ConfigError: no examples, a payload without ``question``/``steps``/``label``
            or without steps, or labels that are all the same.
    """
    started = time.monotonic()
    check_examples(examples, ("question", "steps", "label"), "prm")
    for index, example in enumerate(examples):
        if not example["steps"]:
            raise ConfigError(f"prm example {index} has no steps; a PRM label is about the newest step")
    labels = [bool(example["label"]) for example in examples]
    if len(set(labels)) < 2:
        raise ConfigError(
            f"every prm label is {labels[0]}; a PRM needs both correct and incorrect steps "
            "(mine more trees, or lower the threshold that labels steps)"
        )

    with quiet_progress_bars():
        say(progress, f"loading {base_model}")
        model, tokenizer = load_base_model(base_model)
        renderer = prompt_renderer(model, tokenizer, base_model)
        rows = verdict_rows(renderer, examples, labels, system=PRM_SYSTEM, prompt=prm_prompt, finished=False)
        if config.balance_classes:
            rows = balance_labels(rows, labels, config.seed)
        return train_on_completions(
            model,
            tokenizer,
            rows,
            config=config,
            kind="prm",
            base_model=base_model,
            output_dir=output_dir,
            progress=progress,
            started=started,
        )
