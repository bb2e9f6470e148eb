"""What every backend shows the model and reads back, in one place (kept free
of torch). The PRM/ORM trainers and the search depend on all backends
rendering these identically."""

from __future__ import annotations

SYSTEM_PROMPT = (
    "You are a careful math tutor. Solve the problem step by step, one short step per line, "
    "writing each calculation out (e.g. 3 * 4 = 12). Finish with a line 'The answer is N.'"
)

PROGRAM_SYSTEM = (
    "You are an expert Python programmer. Write a short Python program that solves the math word "
    "problem and prints the final numeric answer. Use plain arithmetic and variables; do not import "
    "anything and do not read input."
)
"""What the program-aided verifier asks the policy for (one fenced Python program)."""

TRUE_WORDS = ("True", " True", "true", " true")
"""Reply tokens that count as a critic's "True" (p("True") sums over them)."""

FALSE_WORDS = ("False", " False", "false", " false")
"""Reply tokens that count as "False"."""


def plain_chat_text(system: str, user: str) -> str:
    """A chat turn for a model without a chat template, ready for the reply."""
    return f"{system}\n\nQuestion: {user}\nAnswer:\n"


def hf_chat_text(tokenizer, system: str, user: str) -> str:
    """A chat turn through a transformers tokenizer's chat template (the plain
    layout when it has none), with special tokens written out, ready for the reply."""
    if not getattr(tokenizer, "chat_template", None):
        return plain_chat_text(system, user)
    messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
