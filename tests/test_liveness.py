"""Whether a run still has a writer: one rule (``store.schema.run_is_live``) for
the app's run states and the engine's refusal to resume a run someone writes."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from engine.persist import writer_alive
from store.schema import HEARTBEAT_TIMEOUT, Run, run_is_live


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen]:
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    yield process
    process.kill()
    process.wait()


def test_a_heartbeat_counts_until_the_timeout() -> None:
    now = datetime.now(UTC)
    assert run_is_live("running", now - HEARTBEAT_TIMEOUT, None, now=now)
    assert not run_is_live("running", now - HEARTBEAT_TIMEOUT - timedelta(seconds=1), None, now=now)
    assert run_is_live("running", (now - timedelta(seconds=5)).replace(tzinfo=None), None, now=now)
    assert not run_is_live("running", None, None, now=now)


@pytest.mark.parametrize("status", ["completed", "failed", "interrupted"])
def test_a_finished_run_is_not_live(status: str) -> None:
    assert not run_is_live(status, datetime.now(UTC), os.getpid())


def test_a_fresh_heartbeat_without_its_process_is_not_live(sleeper: subprocess.Popen) -> None:
    beat = datetime.now(UTC)
    assert run_is_live("running", beat, sleeper.pid)
    sleeper.kill()
    sleeper.wait()
    assert not run_is_live("running", beat, sleeper.pid)
    assert not run_is_live("running", beat, 0), "0 names a process group, not a process"


def test_writer_alive_is_run_is_live_for_another_process(sleeper: subprocess.Popen) -> None:
    run = Run(model="m", task="arithmetic", pid=sleeper.pid, heartbeat_at=datetime.now(UTC))
    assert writer_alive(run)
    run.pid = os.getpid()
    assert run_is_live(run.status, run.heartbeat_at, run.pid)
    assert not writer_alive(run), "the process asking is not another writer"
    run.pid = None
    assert writer_alive(run), "a run without a pid is judged by its heartbeat alone"
    run.heartbeat_at = datetime.now(UTC) - 2 * HEARTBEAT_TIMEOUT
    assert not writer_alive(run)
