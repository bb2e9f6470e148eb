"""A throw-away PostgreSQL cluster for the test session: ``initdb`` in a
temporary folder, a server on a free localhost port, one fresh database per
test. The binaries come from Debian's ``postgresql`` package (README step 1);
as root the server runs as the ``postgres`` user, which PostgreSQL requires."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import uuid
from pathlib import Path

SKIP_ENV = "CANOPY_TEST_POSTGRES"
"""Set to 0 to run only the SQLite side of the store tests."""


def postgres_bin() -> Path | None:
    """The folder of ``initdb`` and ``pg_ctl``: on PATH, else Debian's newest
    ``/usr/lib/postgresql/*/bin``; None when PostgreSQL is not installed."""
    if found := shutil.which("initdb"):
        return Path(found).parent
    folders = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name))
    return Path(folders[-1]) if folders else None


class Cluster:
    """A running server; ``database()`` makes an empty database and returns its URL."""

    def __init__(self, folder: Path) -> None:
        bindir = postgres_bin()
        if bindir is None:
            raise RuntimeError(
                "PostgreSQL is not installed (apt-get install -y postgresql, README step 1); "
                f"or set {SKIP_ENV}=0 to test on SQLite only"
            )
        self.folder = folder
        self.data = folder / "data"
        self.pg_ctl = str(bindir / "pg_ctl")
        self.as_owner: list[str] = []
        if os.geteuid() == 0:  # PostgreSQL refuses to run as root
            shutil.chown(folder, "postgres", "postgres")
            self.as_owner = ["runuser", "-u", "postgres", "--"]
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self._run(
            str(bindir / "initdb"),
            "-D",
            str(self.data),
            "-U",
            "canopy",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-sync",
            "--no-instructions",
        )
        options = (
            f"-p {self.port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off"
        )
        self._run(
            self.pg_ctl, "-D", str(self.data), "-o", options, "-l", str(folder / "server.log"), "-w", "start"
        )
        self.url = f"postgresql+psycopg://canopy@127.0.0.1:{self.port}"

    def _run(self, *command: str) -> None:
        done = subprocess.run([*self.as_owner, *command], capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(
                f"{Path(command[0]).name} failed: {done.stderr.strip() or done.stdout.strip()}"
            )

    def database(self) -> str:
        import psycopg

        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(
            f"host=127.0.0.1 port={self.port} user=canopy dbname=postgres", autocommit=True
        ) as c:
            c.execute(f'CREATE DATABASE "{name}"')
        return f"{self.url}/{name}"

    def stop(self) -> None:
        self._run(self.pg_ctl, "-D", str(self.data), "-m", "immediate", "stop")
