"""Jobs the app starts: the ``canopy`` CLI as a subprocess (the app itself never
loads a model). Progress is read from the store; the process handle only tells
whether the job is alive, its exit code and its console output.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd

from app.engine_info import ROOT


@dataclass
class Job:
    """A CLI subprocess started by this browser session."""

    kind: str
    command: list[str]
    process: subprocess.Popen
    log_path: Path
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    run_id: int | None = None

    @property
    def returncode(self) -> int | None:
        return self.process.poll()

    @property
    def alive(self) -> bool:
        return self.returncode is None

    def output_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        """SIGTERM: the CLI marks its run "interrupted" and exits."""
        if self.alive:
            self.process.send_signal(signal.SIGTERM)


def start_job(kind: str, arguments: list[str], *, db_url: str) -> Job:
    """Run ``python -m canopy <arguments>`` from the repository root with output
    going to a log file (a pipe nobody reads would block the child)."""
    command = [sys.executable, "-m", "canopy", *arguments]
    handle, name = tempfile.mkstemp(prefix=f"canopy-{kind}-", suffix=".log")
    env = {**os.environ, "CANOPY_DB": db_url, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"}
    with os.fdopen(handle, "wb") as log:
        process = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
    return Job(kind=kind, command=command, process=process, log_path=Path(name))


def find_run(job: Job, runs: pd.DataFrame) -> int | None:
    """The run the job created: the one carrying its pid, else the newest run
    created after it started (the CLI creates the run once the model is loaded)."""
    if job.run_id is not None:
        return job.run_id
    if runs.empty:
        return None
    mine = runs[runs["pid"] == job.process.pid]
    if mine.empty:
        since = job.started_at - timedelta(seconds=2)
        mine = runs[[created is not None and created >= since for created in runs["created_at"]]]
    if mine.empty:
        return None
    job.run_id = int(mine["id"].max())
    return job.run_id


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def config_arguments(values: dict[str, Any], defaults: Any) -> list[str]:
    """CLI flags for the settings that differ from ``defaults`` (a ``SearchConfig``);
    simulations and seed are always passed so the command reads completely."""
    arguments: list[str] = []
    for spec in fields(defaults):
        value, default = values.get(spec.name, getattr(defaults, spec.name)), getattr(defaults, spec.name)
        both_lists = isinstance(value, tuple | list) and isinstance(default, tuple | list)
        same = list(value) == list(default) if both_lists else value == default
        if same and spec.name not in ("simulations", "seed"):
            continue
        if value is None:
            continue
        if isinstance(value, bool):
            arguments += [flag(spec.name), "true" if value else "false"]
        elif isinstance(value, tuple | list):
            arguments += [flag(spec.name), *[str(v) for v in value]]
        else:
            arguments += [flag(spec.name), str(value)]
    return arguments


def search_arguments(
    *,
    db_url: str,
    model: str,
    task: str,
    index: int | None = None,
    question: str | None = None,
    answer: str | None = None,
    data_path: str | None = None,
    rollout_model: str | None = None,
    config_flags: list[str] | None = None,
) -> list[str]:
    """The ``canopy search`` arguments for one problem."""
    arguments = ["search", "--model", model, "--task", task, "--db", db_url, "--json"]
    if data_path:
        arguments += ["--data", data_path]
    if question:
        arguments += ["--question", question]
        if answer:
            arguments += ["--answer", answer]
    else:
        arguments += ["--index", str(index or 0)]
    if rollout_model:
        arguments += ["--rollout-model", rollout_model]
    return arguments + (config_flags or [])
