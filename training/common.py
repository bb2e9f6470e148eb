"""What every trainer needs: the base model loaded for training, the prompts
rendered exactly as the search renders them, TRL's arguments for a CPU, and a
merged model saved as a checkpoint.

Trained policies and generative critics are saved as ordinary Hugging Face
directories (LoRA merged into the weights, tokenizer and chat template kept), so
they load in the ``hf`` and ``vllm`` backends. The ``llamacpp`` backend reads
only GGUF files: converting a checkpoint needs llama.cpp's
``convert_hf_to_gguf.py``, which llama-cpp-python does not ship, so trained
checkpoints run on the hf (or vllm) backend.
"""

from __future__ import annotations

import contextlib
import random
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.config import ConfigError
from training.checkpoints import TrainResult, atomic_directory, write_marker

if TYPE_CHECKING:
    from engine.policies.hf import HFPolicy
    from training.base_config import FineTuneConfig, TrainConfig

ProgressFn = Callable[[str], None]
"""Called with one human-readable line per event (loading, each logged step, saving)."""


def check_examples(examples: Sequence[dict], required: Sequence[str], kind: str) -> None:
    """Raise ConfigError on no examples or on a payload that lacks a key."""
    if not examples:
        raise ConfigError(f"no {kind} examples to train on; mine some trees first (training.mine)")
    for index, example in enumerate(examples):
        if not isinstance(example, dict):
            raise ConfigError(f"{kind} example {index} is a {type(example).__name__}, not a payload dict")
        missing = [key for key in required if key not in example]
        if missing:
            raise ConfigError(
                f"{kind} example {index} lacks {', '.join(missing)}; a {kind} payload has keys "
                f"{', '.join(required)} (see training.mine)"
            )
        if "steps" in required and not isinstance(example["steps"], list | tuple):
            raise ConfigError(f"{kind} example {index}: 'steps' must be a list of option texts")


def say(progress: ProgressFn | None, message: str) -> None:
    if progress is not None:
        progress(message)


def training_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_base_model(base_model: str):
    """The policy ``base_model`` (a preset, HF directory, GGUF file or hub id) in
    fp32, with its tokenizer, ready to train. GGUF sources are converted once to
    an ordinary HF directory first (a model loaded with ``gguf_file=`` refuses to
    train or save)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from engine.models import prepare_hf_dir, resolve_model

    spec = resolve_model(base_model)
    source = spec.path if spec.kind == "hub" else str(prepare_hf_dir(spec))
    tokenizer = AutoTokenizer.from_pretrained(source)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    model.to(training_device())
    return model, tokenizer


def prompt_renderer(model, tokenizer, base_model: str) -> HFPolicy:
    """An ``HFPolicy`` over the training model, used only for its prompt
    rendering (``root_state``, ``extend``, ``chat_ids``, ``true_ids``), so
    training sees exactly the token ids the search feeds the model."""
    from engine.policies.hf import HFPolicy

    return HFPolicy(model, tokenizer, name=base_model, cache_bytes=0)


def split_eval(rows: list[dict], eval_fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """Shuffle and hold out ``eval_fraction`` of rows (none when that rounds to 0,
    and never all of them)."""
    rows = list(rows)
    random.Random(seed).shuffle(rows)
    held_out = min(int(len(rows) * eval_fraction), len(rows) - 1)
    return rows[held_out:], rows[:held_out]


def balance_labels(rows: list[dict], labels: Sequence[bool], seed: int) -> list[dict]:
    """Oversample the rarer label (drawing its rows again at random, seeded)
    until both labels have as many rows, so a critic trained on skewed labels
    does not learn just the majority answer."""
    positive = [row for row, label in zip(rows, labels, strict=True) if label]
    negative = [row for row, label in zip(rows, labels, strict=True) if not label]
    minority, majority = sorted((positive, negative), key=len)
    extra = random.Random(seed).choices(minority, k=len(majority) - len(minority))
    return rows + extra


def verdict_token_ids(renderer: HFPolicy) -> dict[bool, int]:
    """The single tokens "True" and "False" a generative critic is trained to
    reply with; ``score_true`` reads their probabilities (among its
    ``true_ids`` and ``false_ids``) right after the generation prompt."""
    ids: dict[bool, int] = {}
    for label, word, accepted in ((True, "True", renderer.true_ids), (False, "False", renderer.false_ids)):
        encoded = renderer.tokenizer(word, add_special_tokens=False)["input_ids"]
        if len(encoded) != 1 or encoded[0] not in accepted:
            raise ConfigError(
                f"the tokenizer splits {word!r} into {len(encoded)} tokens; a generative critic needs it "
                "to be one token (pick a policy model whose tokenizer has it)"
            )
        ids[label] = encoded[0]
    return ids


def lora_config(config: FineTuneConfig):
    from peft import LoraConfig

    return LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=list(config.lora_target_modules),
        task_type="CAUSAL_LM",
    )


def trl_arguments(config: FineTuneConfig, scratch_dir: str | Path) -> dict[str, Any]:
    """The ``TrainingArguments`` every TRL trainer here shares: fp32 on a CPU,
    no activation (gradient) checkpointing, which TRL turns on by default and
    which on a CPU with a small model costs time and saves little (set under
    its transformers 5 name: TRL's ``gradient_checkpointing`` default is a
    deprecated alias), no reporting, no tqdm, no saving (checkpoints are written
    atomically by the trainer functions)."""
    import torch

    on_cuda = torch.cuda.is_available()
    return {
        "output_dir": str(scratch_dir),
        "learning_rate": config.learning_rate,
        "num_train_epochs": config.epochs,
        "max_steps": config.max_steps,
        "per_device_train_batch_size": config.batch_size,
        "per_device_eval_batch_size": config.batch_size,
        "gradient_accumulation_steps": config.gradient_accumulation_steps,
        "max_length": config.max_length,
        "seed": config.seed,
        "activation_checkpointing": False,
        "bf16": on_cuda and torch.cuda.is_bf16_supported(),
        "use_cpu": not on_cuda,
        "report_to": "none",
        "disable_tqdm": True,
        "logging_steps": 1,
        "save_strategy": "no",
        "eval_strategy": "no",
        "dataloader_num_workers": 0,
    }


@contextlib.contextmanager
def quiet_progress_bars() -> Iterator[None]:
    """Silence the tqdm bars of transformers (loading, saving) and datasets
    (every ``map``) for the duration; the progress callback reports instead."""
    import datasets
    from transformers.utils import logging as transformers_logging

    transformers_on = transformers_logging.is_progress_bar_enabled()
    datasets_on = datasets.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if transformers_on:
            transformers_logging.enable_progress_bar()
        if datasets_on:
            datasets.enable_progress_bars()


def progress_callback(progress: ProgressFn | None):
    """A ``TrainerCallback`` that reports each logged step as one line."""
    from transformers import TrainerCallback

    class _Report(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if progress is None or not logs:
                return
            shown = ", ".join(
                f"{key} {value:.4g}" if isinstance(value, float) else f"{key} {value}"
                for key, value in logs.items()
                if key in ("loss", "eval_loss", "learning_rate", "rewards/accuracies", "rewards/margins")
            )
            if shown:
                progress(f"step {state.global_step}/{state.max_steps}: {shown}")

    return _Report()


def save_merged_model(
    model, tokenizer, output_dir: str | Path, *, kind: str, base_model: str, metrics: dict[str, Any]
) -> Path:
    """Merge LoRA weights (if any) into the model and write it, its tokenizer
    and the completion marker, atomically, to ``output_dir``."""
    from peft import PeftModel

    if isinstance(model, PeftModel):
        model = model.merge_and_unload()
    model.eval()
    output_dir = Path(output_dir)
    with atomic_directory(output_dir) as staging:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        write_marker(staging, kind=kind, base_model=base_model, metrics=metrics)
    return output_dir


def verdict_rows(
    renderer: HFPolicy,
    examples: Sequence[dict],
    labels: Sequence[bool],
    *,
    system: str,
    prompt: Callable[[Any], str],
    finished: bool,
) -> list[dict]:
    """Pre-tokenized rows teaching a generative critic its verdicts: the rubric
    chat turn (``system``, ``prompt(request)``) as ``HFPolicy.chat_ids`` renders
    it, then the single token "True" or "False" (no EOS: ``score_true`` reads
    only that first token), with the loss on the verdict only."""
    from engine.types import TrajectoryRequest

    verdicts = verdict_token_ids(renderer)
    rows = []
    for example, label in zip(examples, labels, strict=True):
        request = TrajectoryRequest(
            question=example["question"], steps=tuple(example["steps"]), finished=finished
        )
        prompt_ids = list(renderer.chat_ids(system, prompt(request)))
        rows.append(
            {"input_ids": prompt_ids + [verdicts[label]], "completion_mask": [0] * len(prompt_ids) + [1]}
        )
    return rows


def train_on_completions(
    model,
    tokenizer,
    rows: list[dict],
    *,
    config: FineTuneConfig,
    kind: str,
    base_model: str,
    output_dir: str | Path,
    progress: ProgressFn | None,
    started: float,
) -> TrainResult:
    """Fine-tune on pre-tokenized rows (``input_ids``, ``completion_mask``) with
    TRL's ``SFTTrainer``, loss on the completion only, and save the merged model
    as checkpoint ``kind``. TRL gets token ids rather than strings: given strings
    it tokenizes prompt and completion as one text, which can merge tokens across
    the boundary and differ from what the search feeds the model."""
    from trl import SFTConfig, SFTTrainer

    def make_trainer(scratch: str, train_dataset, eval_dataset):
        return SFTTrainer(
            model=model,
            args=SFTConfig(**trl_arguments(config, scratch), completion_only_loss=True),
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
        kind=kind,
        base_model=base_model,
        output_dir=output_dir,
        progress=progress,
        started=started,
    )


def train_and_save(
    make_trainer: Callable[[str, Any, Any], Any],
    rows: list[dict],
    *,
    config: TrainConfig,
    tokenizer,
    kind: str,
    base_model: str,
    output_dir: str | Path,
    progress: ProgressFn | None,
    started: float,
    unit: str = "examples",
) -> TrainResult:
    """Hold out ``config.eval_fraction`` of ``rows``, train the TRL trainer that
    ``make_trainer(scratch_dir, train_dataset, eval_dataset)`` builds, and save
    its merged model as checkpoint ``kind``."""
    from datasets import Dataset
    from transformers import PrinterCallback

    train_rows, eval_rows = split_eval(rows, config.eval_fraction, config.seed)
    with tempfile.TemporaryDirectory(prefix=f"canopy-{kind}-") as scratch:
        trainer = make_trainer(
            scratch, Dataset.from_list(train_rows), Dataset.from_list(eval_rows) if eval_rows else None
        )
        trainer.remove_callback(PrinterCallback)
        say(progress, f"training on {len(train_rows)} {unit} ({len(eval_rows)} held out)")
        output = trainer.train()
        eval_loss = trainer.evaluate()["eval_loss"] if eval_rows else None

    say(progress, f"saving {output_dir}")
    metrics = {"train_loss": output.training_loss, "eval_loss": eval_loss, "steps": output.global_step}
    output_dir = save_merged_model(
        trainer.model, tokenizer, output_dir, kind=kind, base_model=base_model, metrics=metrics
    )
    return TrainResult(
        output_dir=output_dir,
        examples=len(rows),
        steps=output.global_step,
        train_loss=output.training_loss,
        eval_loss=eval_loss,
        seconds=time.monotonic() - started,
    )
