"""Policy backends. ``load_policy`` builds one from a model name and a backend name."""

from __future__ import annotations

BACKENDS = ("hf",)


class BackendError(ValueError):
    """A backend cannot be used as asked; the message names the fix."""


def load_policy(model: str, *, backend: str = "hf", device: str | None = None):
    """A ``Policy`` for ``model`` (a preset, local HF dir, .gguf file, or hub id)."""
    from engine.models import load_causal_lm, resolve_model

    if backend not in BACKENDS:
        raise BackendError(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")
    spec = resolve_model(model)
    import torch

    from engine.policies.hf import HFPolicy

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    hf_model, tokenizer = load_causal_lm(spec, device=device)
    return HFPolicy(hf_model, tokenizer, name=model)
