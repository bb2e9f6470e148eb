"""Running a model-written program without trusting it.

Model output is data, never code for this process: a program is handed, as
text, to a separate Python process that runs it in ``asteval``'s restricted
interpreter (a maintained AST walker with no imports, no dunder attributes,
no ``eval``/``exec``) under OS limits on CPU time, address space, file size and
open files, with a wall-clock timeout enforced from outside and a cap on what
it may print. Whatever the program does — loops forever, allocates without
end, recurses, tries to import or open a file, prints a flood — the answer is a
``ProgramRun`` whose ``verdict`` is None ("no verdict"), never an exception or
a hang in the caller.

The interpreter offers arithmetic, ``round``/``abs``/``min``/``max``/``sum``,
containers and loops, the ``math`` functions by name and as ``math.<name>``
(models write ``import math``; those import lines are dropped before the run,
since the names are already there), and ``print``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass

from engine.answers import normalize_number

CPU_SECONDS = 2
"""CPU time a program may use (RLIMIT_CPU)."""

WALL_SECONDS = 5.0
"""Wall time after which the worker is killed (covers sleeping and startup)."""

MEMORY_BYTES = 768 << 20
"""Address space of the worker process (RLIMIT_AS), interpreter included."""

MAX_OUTPUT_CHARS = 2000
"""What a program may print; more ends the run as "output too long"."""

MAX_PROGRAM_CHARS = 6000
"""Longer programs are refused without running."""

_IMPORT_LINE = re.compile(r"^\s*(?:import\s+math\b.*|from\s+math\s+import\s+.*)$", re.MULTILINE)
_LAST_NUMBER = re.compile(r"-?\$?\d[\d,]*(?:\.\d+)?(?:/\d+)?")


@dataclass(frozen=True)
class ProgramRun:
    """What one sandboxed run gave.

    Attributes:
        status: "ok", "error" (the program raised or was refused by the
            interpreter), "timeout", "memory", "output" (printed too much),
            "refused" (too long, empty) or "crashed" (the worker died otherwise).
        output: what the program printed (at most ``MAX_OUTPUT_CHARS``).
        error: the interpreter's or the worker's error text, for inspection.
        verdict: the last number the program printed, normalised
            (``engine.answers.normalize_number``), or None: no verdict.
        seconds: wall seconds the run took.
    """

    status: str
    output: str
    error: str
    verdict: str | None
    seconds: float

    def to_dict(self) -> dict:
        return dict(vars(self))


def prepare(source: str) -> str:
    """The program as it will run: ``import math`` lines dropped (the interpreter
    has the names), tabs kept. Nothing else is rewritten."""
    return _IMPORT_LINE.sub("", source)


def last_number(output: str) -> str | None:
    """The last number printed, normalised; None when nothing numeric was printed."""
    for match in reversed(_LAST_NUMBER.findall(output)):
        value = normalize_number(match)
        if value is not None:
            return value
    return None


def run_program(source: str) -> ProgramRun:
    """Run ``source`` in a fresh restricted worker process and read its verdict."""
    started = time.monotonic()
    program = prepare(source)
    if not program.strip() or len(program) > MAX_PROGRAM_CHARS:
        why = "empty program" if not program.strip() else f"program longer than {MAX_PROGRAM_CHARS} chars"
        return ProgramRun("refused", "", why, None, 0.0)
    try:
        done = subprocess.run(
            [sys.executable, "-I", "-S", "-c", _WORKER, _asteval_path()],
            input=program,
            capture_output=True,
            text=True,
            timeout=WALL_SECONDS,
            env={"PATH": "/usr/bin:/bin"},
            cwd="/",
        )
    except subprocess.TimeoutExpired:
        return ProgramRun("timeout", "", f"no result within {WALL_SECONDS:g} s", None, _since(started))
    return _read(done, _since(started))


def _read(done: subprocess.CompletedProcess, seconds: float) -> ProgramRun:
    try:
        reply = json.loads(done.stdout.splitlines()[-1]) if done.stdout.strip() else None
    except json.JSONDecodeError:
        reply = None
    if not isinstance(reply, dict):
        if done.returncode in (-9, -24, 137, 152) or "CPU time" in done.stderr:  # SIGKILL / SIGXCPU
            return ProgramRun("timeout", "", "CPU time limit reached", None, seconds)
        if "MemoryError" in done.stderr:
            return ProgramRun("memory", "", "memory limit reached", None, seconds)
        tail = done.stderr.strip().splitlines()[-1:] or [f"exit status {done.returncode}"]
        return ProgramRun("crashed", "", tail[0][:500], None, seconds)
    status, output, error = str(reply["status"]), str(reply["output"]), str(reply["error"])
    verdict = last_number(output) if status == "ok" else None
    if status == "ok" and verdict is None:
        error = "printed no number" if output.strip() else "printed nothing"
    return ProgramRun(status, output, error[:2000], verdict, seconds)


def _since(started: float) -> float:
    return round(time.monotonic() - started, 3)


def _asteval_path() -> str:
    """The folder holding the ``asteval`` package, the only import the worker makes."""
    import asteval

    return os.path.dirname(os.path.dirname(asteval.__file__))


_WORKER = f"""
import io, json, math, resource, sys, types
resource.setrlimit(resource.RLIMIT_CPU, ({CPU_SECONDS}, {CPU_SECONDS + 1}))
resource.setrlimit(resource.RLIMIT_AS, ({MEMORY_BYTES}, {MEMORY_BYTES}))
resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
source = sys.stdin.read()
sys.path.insert(0, sys.argv[1])
from asteval import Interpreter
resource.setrlimit(resource.RLIMIT_NOFILE, (4, 4))
sys.setrecursionlimit(200)

class Capped(io.StringIO):
    def write(self, text):
        if self.tell() + len(text) > {MAX_OUTPUT_CHARS}:
            raise OverflowError("printed more than {MAX_OUTPUT_CHARS} characters")
        return super().write(text)

out, err = Capped(), io.StringIO()
interpreter = Interpreter(use_numpy=False, writer=out, err_writer=err, max_statement_length=20000)
for name in ("open", "dir", "id", "type", "input", "exit", "quit", "help", "vars", "globals", "locals"):
    interpreter.symtable.pop(name, None)
names = {{n: getattr(math, n) for n in dir(math) if not n.startswith("_")}}
interpreter.symtable["math"] = types.SimpleNamespace(**names)
status, error = "ok", ""
try:
    interpreter(source, show_errors=False, raise_errors=True)
except OverflowError as exc:
    status, error = ("output", str(exc)) if "printed more" in str(exc) else ("error", repr(exc))
except MemoryError:
    status, error = "memory", "memory limit reached"
except RecursionError:
    status, error = "error", "recursion too deep"
except BaseException as exc:
    status, error = "error", (type(exc).__name__ + ": " + str(exc))[:2000]
sys.stdout = sys.__stdout__
print(json.dumps({{"status": status, "output": out.getvalue(), "error": error}}))
"""


__all__ = ["ProgramRun", "last_number", "prepare", "run_program"]
