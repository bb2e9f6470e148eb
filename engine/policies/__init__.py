"""Policy backends. ``load_policy`` builds one from a model name and a backend name.

- ``hf``: transformers on CPU or GPU (``engine.policies.hf``); also what training uses.
- ``llamacpp``: GGUF files through llama-cpp-python on a CPU (``engine.policies.llamacpp``),
  the extra ``[cpu]``.
- ``openai``: any OpenAI-compatible completions server by base URL
  (``engine.policies.openai_compat``), tokenized locally with the same model.
- ``vllm``: vLLM on CUDA GPUs (``engine.policies.vllm_backend``), the extra ``[gpu]``.

Only ``hf`` reads hidden states. With any other backend the value head runs on
its own HF model: load ``load_policy(model, backend="hf")`` and pass it as
``ValueHeadCritic``'s reader; the generative PRM/ORM use ``score_true`` of
whichever policy they are given, so every backend supports all three critics.
"""

from __future__ import annotations

import importlib.util

from engine.errors import BackendError

BACKENDS = ("hf", "llamacpp", "openai", "vllm")

CPU_INSTALL = (
    'CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON" '
    "pip install -e '.[cpu]'"
)


def load_policy(
    model: str,
    *,
    backend: str = "hf",
    device: str | None = None,
    base_url: str | None = None,
    **options,
):
    """A ``Policy`` for ``model`` (a preset, local HF dir, .gguf file, or hub id).

    Args:
        model: the model name; for ``openai`` it names the local tokenizer of
            the served model (a GGUF preset or file, an HF directory or hub id).
        backend: one of ``BACKENDS``.
        device: torch device for ``hf`` (default: CUDA when present).
        base_url: the server for ``openai`` (required there, unused elsewhere).
        options: passed to the backend's constructor (``n_ctx``, ``timeout``,
            ``tensor_parallel_size``, ...).

    Raises:
        BackendError: an unknown backend, a missing extra, no CUDA for vllm, a
            model the backend cannot read, or a missing base URL.
        ModelError: a model name that resolves to nothing.
    """
    from engine.models import ModelError, resolve_model

    if backend not in BACKENDS:
        raise BackendError(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")
    if backend == "openai" and not base_url:
        raise BackendError("the openai backend needs a server; pass --base-url http://HOST:PORT")
    spec = resolve_model(model)
    if backend == "hf":
        import torch

        from engine.models import load_causal_lm
        from engine.policies.hf import HFPolicy

        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        hf_model, tokenizer = load_causal_lm(spec, device=device)
        return HFPolicy(hf_model, tokenizer, name=model, **options)
    if backend == "llamacpp":
        _require("llama_cpp", f"llama-cpp-python is not installed; {CPU_INSTALL} (see README)")
        from engine.policies.llamacpp import LlamaCppPolicy

        return LlamaCppPolicy(_gguf(spec, backend), name=model, **options)
    if backend == "openai":
        from engine.policies.openai_compat import OpenAIPolicy

        return OpenAIPolicy(base_url, tokenizer=_local_tokenizer(spec), name=model, **options)
    _require("vllm", "vllm is not installed; on a CUDA machine run pip install -e '.[gpu]' (see README)")
    import torch

    if not torch.cuda.is_available():
        raise BackendError(
            "the vllm backend needs a CUDA GPU and none is visible; use --backend llamacpp or hf"
        )
    from engine.policies.vllm_backend import VLLMPolicy

    try:
        path = spec.path if spec.kind in ("hf_dir", "hub") else str(_gguf(spec, backend))
    except ModelError as error:
        raise BackendError(str(error)) from None
    return VLLMPolicy(path, name=model, **options)


def _require(module: str, message: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise BackendError(message)


def _gguf(spec, backend: str):
    from engine.models import ModelError, gguf_path

    try:
        path = gguf_path(spec)
    except ModelError as error:
        raise BackendError(f"the {backend} backend reads GGUF files: {error}") from None
    with path.open("rb") as file:
        if file.read(4) != b"GGUF":
            raise BackendError(f"{path} is not a GGUF file (no GGUF magic); pass a .gguf model or a preset")
    return path


def _local_tokenizer(spec):
    """The served model's tokenizer, read locally: a GGUF's vocabulary through a
    vocab-only llama.cpp, else the HF tokenizer."""
    if spec.kind in ("preset", "gguf") and importlib.util.find_spec("llama_cpp") is not None:
        import llama_cpp

        from engine.policies.llamacpp import GGUFVocab

        llama = llama_cpp.Llama(model_path=str(_gguf(spec, "openai")), vocab_only=True, verbose=False)
        return GGUFVocab(llama)
    from transformers import AutoTokenizer

    from engine.models import prepare_hf_dir
    from engine.policies.openai_compat import HFTokenizer

    path = spec.path if spec.kind == "hub" else prepare_hf_dir(spec)
    return HFTokenizer(AutoTokenizer.from_pretrained(path))
