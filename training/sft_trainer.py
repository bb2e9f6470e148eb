"""Supervised fine-tuning of the policy on the trajectories mined from trees.

Each example is the search's own view of a solution: the prompt is the policy's
root state for the question (chat template with the system prompt, ready for
the assistant's reply) and the completion is the path's options, joined, then
EOS. Both are tokenized here exactly as ``HFPolicy.root_state`` and
``HFPolicy.extend`` do and handed to TRL's ``SFTTrainer`` pre-tokenized, with
the loss on the completion only. (Given strings, TRL would tokenize prompt and
completion as one text, which can merge tokens across the boundary and differ
from what the search feeds the model.)

The result is a merged Hugging Face directory (see ``training.common`` for the
backends that load it; llama.cpp needs a GGUF conversion first).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from engine.config import ConfigError
from training.checkpoints import TrainResult
from training.common import (
    ProgressFn,
    check_examples,
    load_base_model,
    prompt_renderer,
    quiet_progress_bars,
    say,
    train_on_completions,
)
from training.sft_config import SFTTrainConfig


def train_sft(
    examples: Sequence[dict],
    *,
    base_model: str,
    output_dir: str | Path,
    config: SFTTrainConfig,
    progress: ProgressFn | None = None,
) -> TrainResult:
    """Fine-tune ``base_model`` on sft payloads (``question``, ``steps``) and save
    the merged model to ``output_dir`` (replaced atomically; a failed run leaves
    the old one intact).

    Raises:
        ConfigError: no examples, a payload without ``question``/``steps``, or one
            whose steps are all empty.
    """
    started = time.monotonic()
    check_examples(examples, ("question", "steps"), "sft")
    for index, example in enumerate(examples):
        if not "".join(example["steps"]).strip():
            raise ConfigError(f"sft example {index} has no solution text; drop it before training")

    with quiet_progress_bars():
        say(progress, f"loading {base_model}")
        model, tokenizer = load_base_model(base_model)
        renderer = prompt_renderer(model, tokenizer, base_model)
        rows = []
        for example in examples:
            prompt_ids = renderer.root_state(example["question"])
            full_ids = renderer.extend(prompt_ids, "".join(example["steps"])) + (tokenizer.eos_token_id,)
            rows.append(
                {
                    "input_ids": list(full_ids),
                    "completion_mask": [0] * len(prompt_ids) + [1] * (len(full_ids) - len(prompt_ids)),
                }
            )
        return train_on_completions(
            model,
            tokenizer,
            rows,
            config=config,
            kind="sft",
            base_model=base_model,
            output_dir=output_dir,
            progress=progress,
            started=started,
        )
