"""Checkpoint directories that are either complete or absent.

A trainer writes into a staging directory next to its target and renames it into
place only when every file is written, so a crash (or a kill) mid-training or
mid-save leaves the previous checkpoint as it was. The completion marker
``canopy_checkpoint.json`` is written last; ``is_complete`` trusts nothing else.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

MARKER_FILE = "canopy_checkpoint.json"


@dataclass(frozen=True)
class TrainResult:
    """What one training run produced.

    Attributes:
        output_dir: the finished checkpoint directory.
        examples: training examples used (after class balancing, before the
            held-out split was taken out).
        steps: optimizer steps taken.
        train_loss: mean training loss over the run.
        eval_loss: loss on the held-out split; None when there was none.
        seconds: wall time of the whole run, loading and saving included.
    """

    output_dir: Path
    examples: int
    steps: int
    train_loss: float
    eval_loss: float | None
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["output_dir"] = str(self.output_dir)
        return data


@contextlib.contextmanager
def atomic_directory(target: str | Path) -> Iterator[Path]:
    """Yield an empty staging directory beside ``target``; on a clean exit it
    replaces ``target`` (an existing one is moved aside, then removed), on an
    exception it is removed and ``target`` is left untouched."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.staging-", dir=target.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; a checkpoint is an ordinary directory
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if target.exists():
        retired = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(target, retired)
        os.replace(staging, target)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        os.replace(staging, target)


def write_marker(directory: str | Path, *, kind: str, base_model: str, metrics: dict[str, Any]) -> Path:
    """Write the completion marker; call it after every other file is written."""
    marker = Path(directory) / MARKER_FILE
    record = {"kind": kind, "base_model": base_model, "created": time.time(), "metrics": metrics}
    marker.write_text(json.dumps(record, indent=2))
    return marker


def read_marker(directory: str | Path) -> dict[str, Any] | None:
    """The marker's record, or None when the directory holds no readable marker."""
    try:
        record = json.loads((Path(directory) / MARKER_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return record if isinstance(record, dict) else None


def is_complete(directory: str | Path) -> bool:
    """Whether ``directory`` holds a checkpoint whose writer finished."""
    return read_marker(directory) is not None
