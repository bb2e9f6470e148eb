"""Settings every trainer shares, as TRL's configs share ``TrainingArguments``.

``TrainConfig`` holds what all five trainers have (learning rate, epochs,
steps, batch size, held-out share, seed); ``FineTuneConfig`` adds what the four
that fine-tune the language model with TRL have (sequence length, gradient
accumulation, LoRA). A method's config subclasses one of them, adds its own
fields and overrides a default where the method needs another (as TRL's
``DPOConfig`` overrides ``learning_rate``). Every field carries
``metadata={"help": ...}``: ``canopy improve`` builds ``--<method>-<field>``
flags from them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from engine.config import ConfigError

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _help(text: str) -> dict[str, Any]:
    return {"help": text}


def need(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


@dataclass(frozen=True)
class TrainConfig:
    """What every trainer's settings have. Validated on construction."""

    learning_rate: float = field(
        default=2e-4, metadata=_help("AdamW learning rate (> 0); ~2e-5 when full_finetune.")
    )
    epochs: float = field(default=2.0, metadata=_help("Passes over the data (> 0); max_steps wins when set."))
    max_steps: int = field(
        default=-1, metadata=_help("Stop after this many optimizer steps (>= 1), or -1 for epochs.")
    )
    batch_size: int = field(default=4, metadata=_help("Examples per device per step (>= 1)."))
    eval_fraction: float = field(
        default=0.1, metadata=_help("Share of examples held out for an eval loss, in [0, 1); 0 turns it off.")
    )
    seed: int = field(default=0, metadata=_help("Random seed of the split, shuffling and initialisation."))

    def __post_init__(self) -> None:
        need(
            self.learning_rate > 0,
            f"learning_rate must be > 0, got {self.learning_rate}; the default is {type(self).learning_rate}",
        )
        need(self.epochs > 0, f"epochs must be > 0, got {self.epochs}")
        need(
            self.max_steps == -1 or self.max_steps >= 1,
            f"max_steps must be >= 1, or -1 to run whole epochs; got {self.max_steps}",
        )
        need(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        need(0 <= self.eval_fraction < 1, f"eval_fraction must be in [0, 1), got {self.eval_fraction}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class FineTuneConfig(TrainConfig):
    """What the TRL trainers' settings (SFT, DPO, PRM, ORM) add. Validated on construction."""

    gradient_accumulation_steps: int = field(default=1, metadata=_help("Batches per optimizer step (>= 1)."))
    max_length: int = field(default=512, metadata=_help("Tokens kept per example, prompt included (>= 16)."))
    full_finetune: bool = field(
        default=False, metadata=_help("Train every weight instead of a LoRA adapter.")
    )
    lora_r: int = field(default=16, metadata=_help("LoRA rank (>= 1)."))
    lora_alpha: float = field(default=32.0, metadata=_help("LoRA scaling alpha (> 0), usually 2 * lora_r."))
    lora_dropout: float = field(default=0.05, metadata=_help("Dropout on the LoRA path, in [0, 1)."))
    lora_target_modules: tuple[str, ...] = field(
        default=LORA_TARGETS, metadata=_help("Linear layers that get LoRA adapters.")
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "lora_target_modules", tuple(self.lora_target_modules))
        super().__post_init__()
        need(
            self.gradient_accumulation_steps >= 1,
            f"gradient_accumulation_steps must be >= 1, got {self.gradient_accumulation_steps}",
        )
        need(self.max_length >= 16, f"max_length must be >= 16 tokens, got {self.max_length}")
        if not self.full_finetune:
            need(self.lora_r >= 1, f"lora_r must be >= 1, got {self.lora_r}; 16 is a good default")
            need(self.lora_alpha > 0, f"lora_alpha must be > 0, got {self.lora_alpha}; usually 2 * lora_r")
            need(0 <= self.lora_dropout < 1, f"lora_dropout must be in [0, 1), got {self.lora_dropout}")
            need(
                len(self.lora_target_modules) > 0,
                "lora_target_modules is empty; name the linear layers to adapt, e.g. "
                + ", ".join(LORA_TARGETS),
            )

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "lora_target_modules": list(self.lora_target_modules)}
