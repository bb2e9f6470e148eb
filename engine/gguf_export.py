"""Hugging Face checkpoints into GGUF files, so the ``llamacpp`` backend runs
what the improve loop trains.

The conversion is llama.cpp's own ``convert_hf_to_gguf.py`` (with its
``conversion`` package and the ``gguf-py`` it was written against, newer than
the ``gguf`` release on PyPI), taken from the llama-cpp-python sdist of the
installed version: it is not installed with the wheel, so it is fetched once
from PyPI into ``<cache>/llama.cpp-<version>`` (or read from a llama.cpp
source tree named by ``$CANOPY_LLAMA_CPP_DIR``). It runs as a subprocess of
this interpreter: trusted converter code, never model output.

Every file is written under a temporary name and renamed into place when
complete, so a killed conversion leaves nothing under a final name.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tarfile
import tempfile
import uuid
from pathlib import Path

from engine.errors import ModelError

CONVERTER = "convert_hf_to_gguf.py"
"""llama.cpp's converter script, at the top of its source tree."""

CONVERTER_PARTS = (CONVERTER, "conversion", "gguf-py")
"""What a usable converter tree holds, relative to llama.cpp's source root."""

OUTTYPES = ("f32", "f16", "bf16", "q8_0")
"""Weight types the converter writes. ``q8_0`` is the default: half of f16's size,
for little loss (``f32`` where a test compares backends exactly)."""


def converter_dir() -> Path:
    """A llama.cpp source tree holding ``CONVERTER_PARTS``.

    ``$CANOPY_LLAMA_CPP_DIR`` when set; else ``<cache>/llama.cpp-<version>``,
    extracted on first use from the sdist of the installed llama-cpp-python
    (downloaded with pip, about 77 MB).

    Raises:
        ModelError: the variable names no converter, llama-cpp-python is not
            installed, or the sdist cannot be downloaded or lacks the files.
    """
    if os.environ.get("CANOPY_LLAMA_CPP_DIR"):
        tree = Path(os.environ["CANOPY_LLAMA_CPP_DIR"]).expanduser()
        if not (tree / CONVERTER).is_file():
            raise ModelError(
                f"CANOPY_LLAMA_CPP_DIR={tree} holds no {CONVERTER}; name a llama.cpp source tree"
            )
        return tree
    from engine.models import cache_dir

    version = _llama_cpp_version()
    tree = cache_dir() / f"llama.cpp-{version}"
    if _complete(tree):
        return tree
    tree.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=tree.parent, prefix=".llama.cpp-download-") as scratch:
        print(
            f"canopy: fetching llama.cpp's GGUF converter (llama-cpp-python {version} sdist) ...",
            file=sys.stderr,
        )
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--quiet",
                "--no-deps",
                "--no-binary",
                ":all:",
                f"llama-cpp-python=={version}",
                "--dest",
                scratch,
            ],
            capture_output=True,
            text=True,
        )
        sdists = list(Path(scratch).glob("llama_cpp_python-*.tar.gz"))
        if done.returncode != 0 or not sdists:
            raise ModelError(
                f"could not download the llama-cpp-python {version} sdist for its GGUF converter "
                f"({_last_line(done.stderr)}); set CANOPY_LLAMA_CPP_DIR to a llama.cpp source tree"
            )
        staging = Path(scratch) / "tree"
        _extract_converter(sdists[0], staging)
        if tree.exists() and not _complete(tree):  # an older, partial extraction
            os.rename(tree, Path(scratch) / "stale")
        try:
            os.rename(staging, tree)
        except OSError:
            if not _complete(tree):  # not another process's finished copy
                raise
    return tree


def hf_to_gguf(hf_dir: Path, out: Path, *, outtype: str = "q8_0") -> Path:
    """Convert the HF checkpoint ``hf_dir`` into the GGUF file ``out``.

    Raises:
        ModelError: an unknown ``outtype``, no converter, or a failed
            conversion (the converter's last line says why).
    """
    if outtype not in OUTTYPES:
        raise ModelError(f"unknown GGUF weight type {outtype!r}; choose from {', '.join(OUTTYPES)}")
    tree = converter_dir()
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.with_name(f".{out.name}-tmp-{uuid.uuid4().hex}")
    print(f"canopy: converting {hf_dir} to GGUF ({outtype}) ...", file=sys.stderr)
    try:
        done = subprocess.run(
            [
                sys.executable,
                str(tree / CONVERTER),
                str(hf_dir),
                "--outfile",
                str(staging),
                "--outtype",
                outtype,
            ],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0 or not staging.is_file():
            raise ModelError(f"converting {hf_dir} to GGUF failed: {_last_line(done.stderr)}")
        os.replace(staging, out)
    finally:
        staging.unlink(missing_ok=True)
    return out


def converted_gguf(hf_dir: Path, *, outtype: str = "q8_0") -> Path:
    """The GGUF of checkpoint ``hf_dir``, converted once into
    ``<hf_dir>/gguf/model-<outtype>.gguf`` (deleted with the checkpoint), or into
    ``<cache>/models/hf-<key>/`` when ``hf_dir`` is not writable. A stamp beside
    the file records the checkpoint's files (names, sizes, mtimes), so a
    retrained checkpoint converts again."""
    hf_dir = hf_dir.resolve()
    fingerprint = "\n".join(
        sorted(f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in hf_dir.iterdir() if p.is_file())
    )
    folder = hf_dir / "gguf"
    if not os.access(hf_dir, os.W_OK):
        from engine.models import cache_dir

        key = hashlib.sha256(f"{hf_dir}\n{fingerprint}".encode()).hexdigest()[:16]
        folder = cache_dir() / "models" / f"hf-{key}"
    out = folder / f"model-{outtype}.gguf"
    stamp = out.with_name(out.name + ".source")
    if out.is_file() and stamp.is_file() and stamp.read_text() == fingerprint:
        return out
    hf_to_gguf(hf_dir, out, outtype=outtype)
    stamp.write_text(fingerprint)
    return out


def _llama_cpp_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("llama-cpp-python")
    except PackageNotFoundError:
        raise ModelError(
            "llama-cpp-python is not installed, so there is no GGUF converter; "
            "install the [cpu] extra (README)"
        ) from None


def _complete(tree: Path) -> bool:
    return all((tree / part).exists() for part in CONVERTER_PARTS)


def _extract_converter(sdist: Path, target: Path) -> None:
    """``CONVERTER_PARTS`` from ``vendor/llama.cpp/`` of ``sdist`` into ``target``."""
    with tarfile.open(sdist) as archive:
        wanted = []
        for member in archive.getmembers():
            parts = Path(member.name).parts
            if (
                len(parts) < 4
                or parts[1:3] != ("vendor", "llama.cpp")
                or not (member.isfile() or member.isdir())
            ):
                continue
            inner = Path(*parts[3:])
            if inner.parts[0] in CONVERTER_PARTS:
                member.name = inner.as_posix()
                wanted.append(member)
        missing = [part for part in CONVERTER_PARTS if not any(m.name.split("/")[0] == part for m in wanted)]
        if missing:
            raise ModelError(f"{sdist.name} holds no vendor/llama.cpp/{', '.join(missing)}")
        archive.extractall(target, members=wanted, filter="data")


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no output"
