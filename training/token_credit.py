"""Which tokens a DPO round rewarded: the implicit per-token reward of its
policy on the options of a stored tree.

DPO trains a policy pi against a reference pi_ref so that
``beta * log pi(y|x) / pi_ref(y|x)`` acts as the reward of a whole option. "From
r to Q*" (Rafailov et al., 2024) shows that the same quantity splits over the
option's tokens: ``beta * log pi(a_t|s_t) / pi_ref(a_t|s_t)`` is a token-level
reward whose sum is the option's, because a DPO-trained model is a token-level Q
function. Each option of the tree is read under both models by teacher forcing
(the state's tokens as the search stored them, then the option's), and each
token gets that reward, scaled by the round's own beta so the numbers are the
rewards DPO's loss saw (TRL logs their sums as ``rewards/chosen``).

The reference is the model the round's DPO started from, which its checkpoint's
marker names (``base_model``): the round's SFT policy, or the previous policy
when SFT was skipped. A LoRA run's reference was that model with the adapter
off, i.e. the same weights. Both run on the ``hf`` backend's loader in fp32.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.engine import Engine

from engine.config import ConfigError
from store.iterations import IterationMetrics
from store.queries import load_iteration
from store.tokens import DPORound, NodeTokens, dpo_round, tree_tokens
from training.checkpoints import read_marker


@dataclass(frozen=True)
class TokenCredit:
    """Per-token log-probs of a tree's options under a DPO round's policy and
    its reference, and the implicit reward they give.

    Attributes:
        tree_id: the tree read.
        iteration_id: the DPO round.
        beta: that round's DPO beta (> 0).
        policy: the DPO policy's checkpoint directory.
        reference: the model DPO started from (a preset, directory or file).
        policy_logprobs: node index -> each option token's log-prob under the
            policy, in (-inf, 0]; every node but the root.
        reference_logprobs: the same under the reference.
    """

    tree_id: int
    iteration_id: int
    beta: float
    policy: str
    reference: str
    policy_logprobs: dict[int, tuple[float, ...]]
    reference_logprobs: dict[int, tuple[float, ...]]

    def rewards(self, index: int) -> tuple[float, ...]:
        """``beta * (log pi - log pi_ref)`` of each token of node ``index``'s option
        (positive: DPO made the token likelier than its reference did)."""
        return tuple(
            self.beta * (mine - theirs)
            for mine, theirs in zip(self.policy_logprobs[index], self.reference_logprobs[index], strict=True)
        )

    def to_dict(self) -> dict[str, Any]:
        """The JSON ``canopy credit --json`` prints (node indices as strings)."""
        return {
            "tree_id": self.tree_id,
            "iteration_id": self.iteration_id,
            "beta": self.beta,
            "policy": self.policy,
            "reference": self.reference,
            "nodes": {
                str(index): {
                    "policy": list(logprobs),
                    "reference": list(self.reference_logprobs[index]),
                    "reward": list(self.rewards(index)),
                }
                for index, logprobs in self.policy_logprobs.items()
            },
        }


def dpo_token_credit(engine: Engine, *, tree_id: int, iteration_id: int, device: str = "cpu") -> TokenCredit:
    """Teacher-force every option of tree ``tree_id`` under iteration
    ``iteration_id``'s DPO policy and its reference, one model at a time.

    Raises:
        ConfigError: the iteration trained no DPO policy, its checkpoint is gone,
            or the tree's token ids are not the models' vocabulary.
        StoreError: no such tree or iteration.
        ModelError: the reference model cannot be loaded.
    """
    round_ = _dpo_round(engine, iteration_id)
    marker = read_marker(round_.policy)
    if marker is None or marker.get("kind") != "dpo":
        raise ConfigError(
            f"iteration {iteration_id}'s DPO checkpoint {round_.policy} is missing or incomplete on this "
            "machine; run the credit where the improve loop wrote its checkpoints"
        )
    reference = str(marker["base_model"])
    nodes = tree_tokens(engine, tree_id)
    return TokenCredit(
        tree_id=tree_id,
        iteration_id=iteration_id,
        beta=round_.beta,
        policy=round_.policy,
        reference=reference,
        policy_logprobs=_teacher_forced(round_.policy, nodes, device, tree_id),
        reference_logprobs=_teacher_forced(reference, nodes, device, tree_id),
    )


def _dpo_round(engine: Engine, iteration_id: int) -> DPORound:
    row = load_iteration(engine, iteration_id)
    found = dpo_round(row.id, row.name, IterationMetrics.from_dict(row.metrics))
    if found is None:
        raise ConfigError(
            f"iteration {iteration_id} trained no policy with DPO; pick one whose round ran with "
            "`canopy improve --dpo true` and had preference pairs to train on"
        )
    return found


def _teacher_forced(
    model_name: str, nodes: Sequence[NodeTokens], device: str, tree_id: int
) -> dict[int, tuple[float, ...]]:
    """Each option token's log-prob under ``model_name``, reading the tree one
    root-to-leaf path at a time (each forward pass covers every node on its path)."""
    import torch

    from engine.models import load_causal_lm, resolve_model

    model, _ = load_causal_lm(resolve_model(model_name), device=device)
    vocabulary = model.get_output_embeddings().weight.shape[0]
    largest = max((max(node.token_ids, default=0) for node in nodes), default=0)
    if largest >= vocabulary:
        raise ConfigError(
            f"tree {tree_id} holds token id {largest}, beyond {model_name}'s vocabulary of {vocabulary}; "
            "pick a tree searched by a model with the same tokenizer"
        )
    parents = {node.index: node.parent for node in nodes}
    by_index = {node.index: node for node in nodes}
    leaves = sorted(set(parents) - set(parents.values()) - {0})
    found: dict[int, tuple[float, ...]] = {}
    for leaf in leaves:
        path = [leaf]
        while parents[path[-1]] >= 0:
            path.append(parents[path[-1]])
        path.reverse()
        sequence = [token for index in path for token in by_index[index].token_ids]
        with torch.inference_mode():
            logits = model(input_ids=torch.tensor([sequence], device=device)).logits[0].float()
        start = len(by_index[path[0]].token_ids)
        read = torch.log_softmax(logits[start - 1 : -1], dim=-1)
        targets = torch.tensor(sequence[start:], device=read.device)[:, None]
        chosen = read.gather(1, targets).squeeze(1).tolist()
        offset = 0
        for index in path[1:]:
            count = len(by_index[index].token_ids)
            found.setdefault(index, tuple(chosen[offset : offset + count]))
            offset += count
    return found
