"""Generated tokens/s inside a search vs raw batched ``generate``, same model,
same batch size, same process; and prefill computed per generated token.

    python bench/search_throughput.py [--model smollm2-135m] [--batch 4] [--simulations 8]

Prints one JSON object. The search runs with every critic off and no rollouts
(``policy_only``) so that its tokens/s measure the generation machinery (batch
sampling, termination checks, prefix cache), then once more with the default
critics and one rollout (``with_critics``) to show where the rest of the time
goes. Raw ``generate`` is timed two ways, before and after the searches (the
ratios use the mean, which cancels slow drifts in machine load): rows of a
fixed length (an upper bound no search reaches, since options end at different
times) and rows that stop at a newline like options do (the fair baseline).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time

import torch

from engine.api import build_components
from engine.config import SearchConfig
from engine.policies.hf import PrefixCache
from engine.search import run_search
from engine.tasks import get_problem
from engine.termination import make_termination


def _useful_tokens(policy, row: list[int], stop) -> int:
    """Tokens up to and including the one where an option would have ended."""
    for count in range(1, len(row) + 1):
        if row[count - 1] in policy.eos_ids or stop(policy.decode(row[:count])):
            return count
    return len(row)


def raw_generate(
    policy, prompt_ids: tuple[int, ...], *, batch: int, new_tokens: int, repeats: int, stop_at_newline: bool
) -> dict:
    """Tokens/s of ``model.generate`` sampling ``batch`` rows.

    Without ``stop_at_newline`` every row makes exactly ``new_tokens`` (the
    upper bound); with it rows stop where an option would (HF ``stop_strings``)
    and only the tokens before each row's stop count, as in a search.
    """
    input_ids = torch.tensor([prompt_ids] * batch).to(policy.device)
    attention = torch.ones_like(input_ids)
    stop = make_termination(["newline"])
    length = {"stop_strings": ["\n"], "tokenizer": policy.tokenizer} if stop_at_newline else {}
    rates = []
    for repeat in range(repeats):
        torch.manual_seed(repeat)
        started = time.perf_counter()
        with torch.inference_mode():
            out = policy.model.generate(
                input_ids=input_ids,
                attention_mask=attention,
                do_sample=True,
                temperature=0.8,
                top_k=0,
                max_new_tokens=new_tokens,
                min_new_tokens=1 if stop_at_newline else new_tokens,
                pad_token_id=policy.tokenizer.pad_token_id,
                **length,
            )
        seconds = time.perf_counter() - started
        rows = out[:, input_ids.shape[1] :].tolist()
        generated = (
            sum(_useful_tokens(policy, row, stop) for row in rows)
            if stop_at_newline
            else len(rows[0]) * batch
        )
        rates.append(generated / seconds)
    return {"tokens_per_s": round(statistics.median(rates), 2), "runs": [round(r, 2) for r in rates]}


def search_run(policy, question: str, config: SearchConfig, *, model: str) -> dict:
    """One search; its generation throughput and prefill against a cold prefix cache."""
    policy.cache = PrefixCache(policy.cache.max_bytes)
    components = build_components(config, model=model, policy=policy)
    before = policy.stats()
    started = time.perf_counter()
    tree = run_search(
        question=question,
        policy=policy,
        critics=components.critics,
        config=config,
        similarity=components.similarity,
    )
    wall = time.perf_counter() - started
    after = policy.stats()
    generated = after.generated_tokens - before.generated_tokens
    gen_seconds = after.generate_seconds - before.generate_seconds
    prefill = after.prefill_tokens - before.prefill_tokens
    # The root prompt must be read once; everything else prefilled is recompute.
    recompute = prefill - len(policy.root_state(question))
    return {
        "nodes": len(tree.nodes),
        "filtered": len(tree.filtered),
        "generated_tokens": generated,
        "generate_seconds": round(gen_seconds, 3),
        "wall_seconds": round(wall, 3),
        "tokens_per_s_in_generation": round(generated / gen_seconds, 2),
        "tokens_per_s_wall": round(generated / wall, 2),
        "prefill_tokens": prefill,
        "prefill_per_generated_token": round(prefill / generated, 4),
        "recompute_prefill_tokens": recompute,
        "recompute_per_generated_token": round(recompute / generated, 4),
        "scoring_prefill_tokens": after.scoring_prefill_tokens - before.scoring_prefill_tokens,
        "cached_tokens": after.cached_tokens - before.cached_tokens,
    }


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--batch", type=int, default=4, help="Children per expansion = raw batch size.")
    parser.add_argument("--option-tokens", type=int, default=32, help="Option token cap = raw new tokens.")
    parser.add_argument("--simulations", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    return parser


def main(args: argparse.Namespace) -> dict:
    from engine.policies import load_policy

    policy = load_policy(args.model)
    problem = get_problem("arithmetic", 0, steps=3)
    prompt = policy.root_state(problem.question)
    width = {
        "root_min_children": args.batch,
        "root_max_children": args.batch,
        "min_children": args.batch,
        "max_children": args.batch,
    }
    policy_only = SearchConfig(
        simulations=args.simulations,
        max_option_tokens=args.option_tokens,
        similarity="edit",
        rollouts=0,
        weight_prm=0.0,
        weight_orm=0.0,
        weight_tool=0.0,
        **width,
    )
    with_critics = SearchConfig(
        simulations=args.simulations,
        max_option_tokens=args.option_tokens,
        similarity="edit",
        rollouts=1,
        **width,
    )
    raw = {"batch": args.batch, "new_tokens": args.option_tokens, "repeats": args.repeats}
    raw_generate(policy, prompt, batch=args.batch, new_tokens=4, repeats=1, stop_at_newline=False)  # warm-up
    fixed_before = raw_generate(policy, prompt, **raw, stop_at_newline=False)
    stop_before = raw_generate(policy, prompt, **raw, stop_at_newline=True)
    search = search_run(policy, problem.question, policy_only, model=args.model)
    fixed_after = raw_generate(policy, prompt, **raw, stop_at_newline=False)
    stop_after = raw_generate(policy, prompt, **raw, stop_at_newline=True)
    critics = search_run(policy, problem.question, with_critics, model=args.model)
    fixed_rate = round((fixed_before["tokens_per_s"] + fixed_after["tokens_per_s"]) / 2, 2)
    stop_rate = round((stop_before["tokens_per_s"] + stop_after["tokens_per_s"]) / 2, 2)
    return {
        "model": args.model,
        "batch": args.batch,
        "option_tokens": args.option_tokens,
        "simulations": args.simulations,
        "torch_threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "raw_generate_fixed_length": {
            "before": fixed_before,
            "after": fixed_after,
            "tokens_per_s": fixed_rate,
        },
        "raw_generate_stop_at_newline": {
            "before": stop_before,
            "after": stop_after,
            "tokens_per_s": stop_rate,
        },
        "policy_only": search,
        "with_critics": critics,
        "search_vs_raw_same_stop": round(search["tokens_per_s_in_generation"] / stop_rate, 3),
        "search_vs_raw_fixed_length": round(search["tokens_per_s_in_generation"] / fixed_rate, 3),
        "search_wall_vs_raw_same_stop": round(search["tokens_per_s_wall"] / stop_rate, 3),
        "recompute_per_generated_token": search["recompute_per_generated_token"],
        "aims": {"search_vs_raw_same_stop": ">= 0.9", "recompute_per_generated_token": "<= 0.10"},
    }


if __name__ == "__main__":
    print(json.dumps(main(make_parser().parse_args()), indent=2))
    sys.exit(0)
