"""Termination functions: when an option (a run of tokens) is complete.

Each is ``text_so_far -> reason | None``; ``make_termination`` composes the
configured ones. The token cap is applied by the policy itself.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Container, Sequence

from engine.answers import extract_answer
from engine.types import TerminationFn

# A computation is complete once "= <number>" is followed by a space or a
# line end, e.g. "3 + 4 = 7 " or "3 * 4 = 12.\n", or a GSM8K "<<...>>" closes.
_FORMULA_DONE = re.compile(r"=\s*\$?-?\d[\d,]*(?:\.\d+)?%?[.,;:!?)]?\s|>>")


def newline(text: str) -> str | None:
    """Fires at the first line break that follows some non-blank text."""
    stripped = text.lstrip()
    return "newline" if "\n" in stripped else None


_LIST_MARKER = re.compile(
    r"^\s*(?:[-*#>]+\s*|\**\s*(?:step\s*)?\d+\s*[.):]\**\s*)+", re.IGNORECASE | re.MULTILINE
)
"""Markdown and list markers at a line's start ("1. ", "Step 2:", "- ", "### "), not reasoning."""


def step(text: str) -> str | None:
    """Fires at the first line break after a line that does some work: one that
    holds a number (list numbering aside) or states the answer. Lines that carry
    no reasoning ("Let's solve this step by step:", "1. Find the total:") join
    the step after them, so every option moves the solution forward."""
    if "\n" not in text.lstrip():
        return None
    finished = text[: text.rstrip("\n").rfind("\n") + 1] if not text.endswith("\n") else text
    return "step" if _DIGIT.search(_LIST_MARKER.sub("", finished)) else None


_DIGIT = re.compile(r"\d")


def blank_line(text: str) -> str | None:
    """Fires at the first blank line that follows some non-blank text."""
    stripped = text.lstrip()
    return "blank_line" if "\n\n" in stripped or "\n \n" in stripped else None


def formula(text: str) -> str | None:
    """Fires once an equation in the option has its result written out."""
    return "formula" if _FORMULA_DONE.search(text) else None


def answer_stated(text: str) -> str | None:
    """Fires at the end of the line that states the final answer (for rollouts)."""
    return "answer" if text.endswith("\n") and extract_answer(text) is not None else None


def stop_reason(
    tokens: Sequence[int],
    *,
    eos_ids: Container[int],
    termination: TerminationFn,
    decode: Callable[[Sequence[int]], str],
    max_tokens: int | None = None,
) -> str | None:
    """Why a continuation ends after its newest token, or None to go on.

    End-of-sequence first, then the termination rule on the decoded text, then
    the token cap; every backend's sampling loop asks this after each token.
    """
    if tokens[-1] in eos_ids:
        return "eos"
    if reason := termination(decode(tokens)):
        return reason
    if max_tokens is not None and len(tokens) >= max_tokens:
        return "token_cap"
    return None


def code_block(text: str) -> str | None:
    """Fires at a code fence: the end of a program begun inside an opened fenced
    block (the program-aided verifier opens it in the prompt)."""
    return "code" if "```" in text else None


RULES = {
    "newline": newline,
    "step": step,
    "blank_line": blank_line,
    "formula": formula,
    "answer": answer_stated,
    "code": code_block,
}


def make_termination(names: Sequence[str]) -> TerminationFn:
    """The rule that fires when any of ``names`` fires (reports the first that did)."""
    unknown = [name for name in names if name not in RULES]
    if unknown or not names:
        raise ValueError(f"unknown termination {unknown}; choose from {sorted(RULES)}")
    rules = [RULES[name] for name in names]

    def terminate(text: str) -> str | None:
        for rule in rules:
            if reason := rule(text):
                return reason
        return None

    return terminate
