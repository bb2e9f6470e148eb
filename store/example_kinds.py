"""The kinds of mined training examples. This module imports nothing, so the
CLI can offer them without loading the database layer."""

EXAMPLE_KINDS: dict[str, str] = {
    "sft": "prompt → best trajectory found by the search (supervised fine-tuning)",
    "dpo": "prompt → a preferred and a rejected sibling step (preference training)",
    "value": "partial solution → its backed-up return (value function)",
    "prm": "step → whether it was correct (process reward model)",
    "orm": "finished solution → whether the answer was right (outcome reward model)",
}
"""Each ``TrainingExample.kind``, with what one example teaches, in the order the
miner writes and the app lists them (``training.mine`` documents each kind's payload)."""
