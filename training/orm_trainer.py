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

import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from engine.config import ConfigError
from engine.critics.generative import ORM_SYSTEM, orm_prompt
from engine.types import TrajectoryRequest
from training.checkpoints import TrainResult
from training.common import (
    ProgressFn,
    balance_labels,
    check_examples,
    load_base_model,
    lora_config,
    progress_callback,
    prompt_renderer,
    quiet_progress_bars,
    save_merged_model,
    say,
    split_eval,
    trl_arguments,
    verdict_token_ids,
)
from training.orm_config import ORMTrainConfig


def train_orm(
    examples: Sequence[dict],
    *,
    base_model: str,
    output_dir: str | Path,
    config: ORMTrainConfig,
    progress: ProgressFn | None = None,
) -> TrainResult:
    """Train ``base_model`` as an ORM on orm payloads (``question``, ``steps``,
    ``label``) and save the merged model to ``output_dir`` (replaced
    atomically; a failed run leaves the old one intact).

    Raises:
        ConfigError: no examples, a payload without ``question``/``steps``/``label``
            or without steps, or labels that are all the same.
    """
    from datasets import Dataset
    from transformers import PrinterCallback
    from trl import SFTConfig, SFTTrainer

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
        verdicts = verdict_token_ids(renderer)
        rows = []
        for example, label in zip(examples, labels, strict=True):
            request = TrajectoryRequest(
                question=example["question"], steps=tuple(example["steps"]), finished=True
            )
            prompt_ids = list(renderer.chat_ids(ORM_SYSTEM, orm_prompt(request)))
            rows.append(
                {"input_ids": prompt_ids + [verdicts[label]], "completion_mask": [0] * len(prompt_ids) + [1]}
            )
        if config.balance_classes:
            rows = balance_labels(rows, labels, config.seed)
        train_rows, eval_rows = split_eval(rows, config.eval_fraction, config.seed)

        with tempfile.TemporaryDirectory(prefix="canopy-orm-") as scratch:
            trainer = SFTTrainer(
                model=model,
                args=SFTConfig(**trl_arguments(config, scratch), completion_only_loss=True),
                train_dataset=Dataset.from_list(train_rows),
                eval_dataset=Dataset.from_list(eval_rows) if eval_rows else None,
                processing_class=tokenizer,
                peft_config=None if config.full_finetune else lora_config(config),
                callbacks=[progress_callback(progress)],
            )
            trainer.remove_callback(PrinterCallback)
            say(progress, f"training on {len(train_rows)} examples ({len(eval_rows)} held out)")
            output = trainer.train()
            eval_loss = trainer.evaluate()["eval_loss"] if eval_rows else None

        say(progress, f"saving {output_dir}")
        metrics = {"train_loss": output.training_loss, "eval_loss": eval_loss, "steps": output.global_step}
        output_dir = save_merged_model(
            trainer.model, tokenizer, output_dir, kind="orm", base_model=base_model, metrics=metrics
        )
    return TrainResult(
        output_dir=output_dir,
        examples=len(rows),
        steps=output.global_step,
        train_loss=output.training_loss,
        eval_loss=eval_loss,
        seconds=time.monotonic() - started,
    )
