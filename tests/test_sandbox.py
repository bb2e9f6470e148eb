"""The sandbox that runs model-written programs: answers come back, escapes end as "no verdict"."""

from __future__ import annotations

import time

import pytest

from engine.sandbox import MAX_OUTPUT_CHARS, WALL_SECONDS, last_number, prepare, run_program


def test_a_plain_program_gives_its_last_printed_number() -> None:
    run = run_program("import math\napples = 48 / 2\nprint('half:', apples)\nprint(math.ceil(apples) + 1)\n")
    assert (run.status, run.verdict, run.output) == ("ok", "25", "half: 24.0\n25\n")
    assert run_program("total = sum(range(10))\nprint(f'The answer is ${total:,}.')").verdict == "45"


@pytest.mark.parametrize(
    ("program", "status", "error"),
    [
        ("import os\nprint(os.listdir('/'))", "error", "Import not supported"),
        ("from subprocess import run\nrun(['ls'])", "error", "ImportFrom not supported"),
        ("print(__import__('os'))", "error", "__import__"),
        ("print((1).__class__.__bases__[0].__subclasses__())", "error", "AttributeError"),
        ("print('{0.__class__}'.format(1))", "error", "AttributeError"),
        ("print(getattr(print, '__globals__'))", "error", "getattr"),
        ("print(open('/etc/passwd').read())", "error", "'open' is not defined"),
        ("eval('1 + 1')", "error", "'eval' is not defined"),
        ("exec('import os')", "error", "'exec' is not defined"),
        ("print(type('X', (), {}))", "error", "'type' is not defined"),
        ("def f(n):\n    return f(n + 1)\nprint(f(0))", "error", "recursion"),
        ("print(9 ** 9 ** 9)", "error", "exponent"),
        ("print(1 +", "error", "SyntaxError"),
        ("x = [0] * (10 ** 9)\nprint(len(x))", "memory", "memory limit"),
        ("for i in range(10 ** 6):\n    print(i)", "output", f"more than {MAX_OUTPUT_CHARS}"),
        ("x = 1", "ok", "printed nothing"),
        ("print('hello world')", "ok", "printed no number"),
        ("", "refused", "empty program"),
        ("x = 1\n" * 2000, "refused", "longer than"),
    ],
)
def test_escapes_and_bad_programs_give_no_verdict(program: str, status: str, error: str) -> None:
    run = run_program(program)
    assert (run.status, run.verdict) == (status, None), run
    assert error in run.error, run.error


def test_a_busy_loop_is_stopped_by_the_cpu_limit() -> None:
    started = time.monotonic()
    run = run_program("while True:\n    pass")
    assert (run.status, run.verdict) == ("timeout", None)
    assert time.monotonic() - started < WALL_SECONDS + 2


def test_the_program_cannot_write_files(tmp_path) -> None:
    target = tmp_path / "written.txt"
    run = run_program(f"f = open({str(target)!r}, 'w')\nf.write('x')")
    assert run.verdict is None and not target.exists()


def test_import_math_lines_are_dropped_and_others_kept() -> None:
    assert prepare("import math\nfrom math import ceil\nimport os\nx = 1") == "\n\nimport os\nx = 1"


@pytest.mark.parametrize(
    ("output", "number"),
    [("24\n", "24"), ("The answer is $1,250.50\n", "1250.5"), ("a 3 b -7", "-7"), ("none", None), ("", None)],
)
def test_last_number(output: str, number: str | None) -> None:
    assert last_number(output) == number
