"""``canopy credit``: which tokens of a tree's options a DPO round rewarded
(``training.token_credit``), as a table per node or as JSON, which the studio's
token view reads. The models are loaded inside ``cmd_credit``, so building the
parser (every ``canopy`` start) does not import torch.
"""

from __future__ import annotations

import argparse
import json

from canopy.common import add_db_flag


def add_credit_parser(subcommands) -> argparse.ArgumentParser:
    """Add the ``credit`` subcommand to ``subcommands`` (argparse's subparsers)."""
    parser = subcommands.add_parser(
        "credit",
        help="Each option token's implicit DPO reward, beta * log pi/pi_ref, for a stored tree.",
    )
    add_db_flag(parser)
    parser.add_argument("--tree", type=int, required=True, metavar="TREE_ID", help="The tree to read.")
    parser.add_argument(
        "--iteration",
        type=int,
        required=True,
        metavar="ID",
        help="An improve iteration whose round trained the policy with DPO (its policy and reference).",
    )
    parser.add_argument("--device", default="cpu", help="Where the two models run (default: cpu).")
    parser.add_argument("--json", action="store_true", help="Print every token's numbers as one JSON object.")
    return parser


def cmd_credit(args: argparse.Namespace) -> int:
    from store.db import make_engine
    from training.token_credit import dpo_token_credit

    credit = dpo_token_credit(
        make_engine(args.db, create=False), tree_id=args.tree, iteration_id=args.iteration, device=args.device
    )
    if args.json:
        print(json.dumps(credit.to_dict()))
        return 0
    print(
        f"tree {credit.tree_id}, iteration {credit.iteration_id}: beta {credit.beta} * "
        f"log pi/pi_ref, pi = {credit.policy}, pi_ref = {credit.reference}"
    )
    print(f"{'node':>5} {'tokens':>6} {'sum':>9} {'max':>9} {'min':>9}")
    for index in sorted(credit.policy_logprobs):
        rewards = credit.rewards(index)
        if rewards:
            numbers = " ".join(f"{value:>+9.4f}" for value in (sum(rewards), max(rewards), min(rewards)))
            print(f"{index:>5} {len(rewards):>6} {numbers}")
    return 0
