"""DPO of the policy on preference pairs of sibling options mined from trees.

A pair is two options written from the same state, the one with the higher Q
chosen. The prompt is that state as the search builds it (the policy's root
state for the question, then the path's earlier options, tokenized as
``HFPolicy.root_state`` and ``HFPolicy.extend`` do) and chosen/rejected are the
two options' tokens. The pairs reach TRL's ``DPOTrainer`` pre-tokenized: TRL's
own preparation would tokenize prompt and option as one text and append EOS to
every option, which would teach the policy to stop after a mid-solution step.

With LoRA (the default) the reference model is the same model with its adapter
disabled, so no second copy is loaded; ``full_finetune`` loads one.

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
    lora_config,
    progress_callback,
    prompt_renderer,
    quiet_progress_bars,
    say,
    train_and_save,
    trl_arguments,
)
from training.dpo_config import DPOTrainConfig


def train_dpo(
    examples: Sequence[dict],
    *,
    base_model: str,
    output_dir: str | Path,
    config: DPOTrainConfig,
    progress: ProgressFn | None = None,
) -> TrainResult:
    """Run DPO on ``base_model`` with dpo payloads (``question``, ``prefix``,
    ``chosen``, ``rejected``) and save the merged model to ``output_dir``
    (replaced atomically; a failed run leaves the old one intact).

    Raises:
        ConfigError: no examples, a payload missing a key, a pair whose chosen
            and rejected options are the same text, or no pair whose prompt
            fits ``max_length``.
    """
    from trl import DPOConfig, DPOTrainer

    class PreTokenizedDPOTrainer(DPOTrainer):
        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            return dataset

    started = time.monotonic()
    check_examples(examples, ("question", "prefix", "chosen", "rejected"), "dpo")
    for index, example in enumerate(examples):
        if not isinstance(example["prefix"], list | tuple):
            raise ConfigError(f"dpo example {index}: 'prefix' must be a list of option texts")
        if example["chosen"] == example["rejected"]:
            raise ConfigError(f"dpo example {index} prefers an option to itself; drop pairs of equal options")
        if not example["chosen"] or not example["rejected"]:
            raise ConfigError(f"dpo example {index} has an empty option; drop it before training")

    with quiet_progress_bars():
        say(progress, f"loading {base_model}")
        model, tokenizer = load_base_model(base_model)
        renderer = prompt_renderer(model, tokenizer, base_model)
        rows = []
        for example in examples:
            prompt_ids = renderer.extend(renderer.root_state(example["question"]), "".join(example["prefix"]))
            if len(prompt_ids) < config.max_length:
                rows.append(
                    {
                        "prompt_ids": list(prompt_ids),
                        "chosen_ids": list(renderer.extend((), example["chosen"])),
                        "rejected_ids": list(renderer.extend((), example["rejected"])),
                    }
                )
        if not rows:
            raise ConfigError(
                f"every dpo prompt is at least max_length ({config.max_length}) tokens; raise max_length"
            )

        def make_trainer(scratch: str, train_dataset, eval_dataset):
            return PreTokenizedDPOTrainer(
                model=model,
                args=DPOConfig(**trl_arguments(config, scratch), beta=config.beta),
                train_dataset=train_dataset,
                eval_dataset=eval_dataset,
                processing_class=tokenizer,
                peft_config=None if config.full_finetune else lora_config(config),
                callbacks=[progress_callback(progress)],
            )

        return train_and_save(
            make_trainer,
            rows,
            config=config,
            tokenizer=tokenizer,
            kind="dpo",
            unit="pairs",
            base_model=base_model,
            output_dir=output_dir,
            progress=progress,
            started=started,
        )
