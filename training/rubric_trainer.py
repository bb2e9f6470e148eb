"""Training the generative critics, PRM and ORM, on labels mined from trees.

Each is the policy asked a rubric question (``engine.critics.generative``): its
score is p("True") / (p("True") + p("False")) of the reply's first token. So it
is trained as SFT whose prompt is that rubric chat turn (the PRM's or the ORM's
system prompt and user prompt), tokenized as ``HFPolicy.chat_ids`` does, and
whose completion is the single token "True" or "False" (no EOS: the score reads
only that first token). Skewed labels are balanced by oversampling the rarer
one (``balance_classes``). The PRM's label is about the newest step of a
partial solution, the ORM's about a finished one.

The result is a merged Hugging Face directory (see ``training.common`` for the
backends that load it; llama.cpp needs a GGUF conversion first).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from engine.config import ConfigError
from engine.critics.generative import ORM_SYSTEM, PRM_SYSTEM, orm_prompt, prm_prompt
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


@dataclass(frozen=True)
class _Rubric:
    """What differs between the PRM and the ORM: the prompt, and what a label is about."""

    system: str
    prompt: Callable[..., str]
    finished: bool
    label_about: str
    both_kinds: str
    one_kind_fix: str


RUBRICS = {
    "prm": _Rubric(
        system=PRM_SYSTEM,
        prompt=prm_prompt,
        finished=False,
        label_about="a PRM label is about the newest step",
        both_kinds="a PRM needs both correct and incorrect steps",
        one_kind_fix="mine more trees, or lower the threshold that labels steps",
    ),
    "orm": _Rubric(
        system=ORM_SYSTEM,
        prompt=orm_prompt,
        finished=True,
        label_about="an ORM label is about a finished solution",
        both_kinds="an ORM needs both correct and incorrect solutions",
        one_kind_fix="mine more trees, or harder problems",
    ),
}


def train_rubric(
    kind: str,
    examples: Sequence[dict],
    *,
    base_model: str,
    output_dir: str | Path,
    config: RubricTrainConfig,
    progress: ProgressFn | None = None,
) -> TrainResult:
    """Train ``base_model`` as the ``kind`` critic ("prm" or "orm") on its payloads
    (``question``, ``steps``, ``label``) and save the merged model to
    ``output_dir`` (replaced atomically; a failed run leaves the old one intact).

    Raises:
        ConfigError: no examples, a payload without ``question``/``steps``/``label``
            or without steps, or labels that are all the same.
    """
    rubric = RUBRICS[kind]
    started = time.monotonic()
    check_examples(examples, ("question", "steps", "label"), kind)
    for index, example in enumerate(examples):
        if not example["steps"]:
            raise ConfigError(f"{kind} example {index} has no steps; {rubric.label_about}")
    labels = [bool(example["label"]) for example in examples]
    if len(set(labels)) < 2:
        raise ConfigError(f"every {kind} label is {labels[0]}; {rubric.both_kinds} ({rubric.one_kind_fix})")

    with quiet_progress_bars():
        say(progress, f"loading {base_model}")
        model, tokenizer = load_base_model(base_model)
        renderer = prompt_renderer(model, tokenizer, base_model)
        rows = verdict_rows(
            renderer, examples, labels, system=rubric.system, prompt=rubric.prompt, finished=rubric.finished
        )
        if config.balance_classes:
            rows = balance_labels(rows, labels, config.seed)
        return train_on_completions(
            model,
            tokenizer,
            rows,
            config=config,
            kind=kind,
            base_model=base_model,
            output_dir=output_dir,
            progress=progress,
            started=started,
        )


def train_prm(examples: Sequence[dict], **kwargs) -> TrainResult:
    """``train_rubric("prm", ...)``: the process reward model, on step labels."""
    return train_rubric("prm", examples, **kwargs)


def train_orm(examples: Sequence[dict], **kwargs) -> TrainResult:
    """``train_rubric("orm", ...)``: the outcome reward model, on outcome labels."""
    return train_rubric("orm", examples, **kwargs)


__all__ = ["RUBRICS", "train_orm", "train_prm", "train_rubric"]
