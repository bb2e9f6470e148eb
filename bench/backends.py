"""The CPU backends side by side on one model and one prompt: raw decode
tokens/s (one row, and a batch of siblings), tokens/s inside a search, prefill
recompute, and peak memory.

    python bench/backends.py [--model smollm2-135m] [--backends hf,llamacpp] [--batch 4]

Prints one JSON object. Each backend runs in its own process, so its peak RSS
is its own. "Raw" is the library's own generation from the root prompt with
sampling at temperature 0.8: ``model.generate`` for hf; ``Llama.create_completion``
for llamacpp, where a "batch" is that many completions one after another
(llama-cpp-python samples one sequence at a time), the prompt read untimed
first. Raw rows either run to a fixed length (an upper bound) or stop at a
newline like options do (the fair baseline for the search). The search runs
with every critic off and no rollouts, as in ``bench/search_throughput.py``,
from a cold cache; the recompute ratio is prefill minus the root prompt's
length, over generated tokens.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from engine.config import SearchConfig
from engine.critics import Critics
from engine.search import run_search
from engine.tasks import get_problem


def _llamacpp_raw(policy, prompt: tuple[int, ...], *, batch: int, new_tokens: int, stop: bool) -> float:
    """Tokens/s of ``batch`` completions, one after another, by llama-cpp-python itself."""
    policy.reset_cache()
    # Read the prompt untimed: raw decode speed, like the search's, excludes the root's prefill.
    policy.llama.create_completion(list(prompt), max_tokens=1)
    generated = 0
    started = time.perf_counter()
    for row in range(batch):
        out = policy.llama.create_completion(
            list(prompt),
            max_tokens=new_tokens,
            temperature=0.8,
            top_k=0,
            top_p=1.0,
            min_p=0.0,
            repeat_penalty=1.0,
            seed=row,
            stop=["\n"] if stop else [],
        )
        generated += out["usage"]["completion_tokens"]
    seconds = time.perf_counter() - started
    policy.reset_cache()
    return generated / seconds


def raw_rates(policy, backend: str, prompt, *, batch: int, new_tokens: int, repeats: int) -> dict:
    """Median tokens/s of raw generation: one row, and ``batch`` rows, fixed length and stop at newline."""
    rates: dict[str, list[float]] = {}
    for label, rows, stop in (
        ("single", 1, False),
        ("batched", batch, False),
        ("batched_stop_at_newline", batch, True),
    ):
        runs = []
        for _ in range(repeats):
            if backend == "hf":
                from search_throughput import raw_generate

                result = raw_generate(
                    policy, prompt, batch=rows, new_tokens=new_tokens, repeats=1, stop_at_newline=stop
                )
                runs.append(result["tokens_per_s"])
            else:
                runs.append(_llamacpp_raw(policy, prompt, batch=rows, new_tokens=new_tokens, stop=stop))
        rates[label] = runs
    return {label: round(statistics.median(runs), 2) for label, runs in rates.items()}


def search_rates(policy, backend: str, question: str, config: SearchConfig) -> dict:
    """Generation throughput and prefill of one search from a cold cache."""
    if backend == "hf":
        from engine.policies.hf import PrefixCache

        policy.cache = PrefixCache(policy.cache.max_bytes)
    else:
        policy.reset_cache()
    before = policy.stats()
    started = time.perf_counter()
    tree = run_search(question=question, policy=policy, critics=Critics(), config=config, similarity=None)
    wall = time.perf_counter() - started
    after = policy.stats()
    generated = after.generated_tokens - before.generated_tokens
    seconds = after.generate_seconds - before.generate_seconds
    prefill = after.prefill_tokens - before.prefill_tokens
    recompute = prefill - len(policy.root_state(question))
    return {
        "nodes": len(tree.nodes),
        "generated_tokens": generated,
        "tokens_per_s_in_generation": round(generated / seconds, 2),
        "tokens_per_s_wall": round(generated / wall, 2),
        "prefill_tokens": prefill,
        "cached_tokens": after.cached_tokens - before.cached_tokens,
        "recompute_prefill_tokens": recompute,
        "recompute_per_generated_token": round(recompute / generated, 4),
    }


def one_backend(args: argparse.Namespace) -> dict:
    from engine.policies import load_policy

    started = time.perf_counter()
    policy = load_policy(args.model, backend=args.one)
    load_seconds = time.perf_counter() - started
    problem = get_problem("arithmetic", 0, steps=3)
    prompt = policy.root_state(problem.question)
    width = {
        "root_min_children": args.batch,
        "root_max_children": args.batch,
        "min_children": args.batch,
        "max_children": args.batch,
    }
    config = SearchConfig(
        simulations=args.simulations,
        max_option_tokens=args.option_tokens,
        similarity="off",
        rollouts=0,
        weight_prm=0.0,
        weight_orm=0.0,
        weight_tool=0.0,
        **width,
    )
    raw_kwargs = {"batch": args.batch, "new_tokens": args.option_tokens, "repeats": args.repeats}
    raw_rates(policy, args.one, prompt, batch=1, new_tokens=4, repeats=1)  # warm-up
    raw_before = raw_rates(policy, args.one, prompt, **raw_kwargs)
    search = search_rates(policy, args.one, problem.question, config)
    raw_after = raw_rates(policy, args.one, prompt, **raw_kwargs)
    raw = {label: round((raw_before[label] + raw_after[label]) / 2, 2) for label in raw_before}
    return {
        "backend": args.one,
        "load_seconds": round(load_seconds, 2),
        "prompt_tokens": len(prompt),
        "raw_tokens_per_s": raw,
        "raw_runs": {"before_search": raw_before, "after_search": raw_after},
        "search": search,
        "search_vs_raw_batched_stop_at_newline": round(
            search["tokens_per_s_in_generation"] / raw["batched_stop_at_newline"], 3
        ),
        "search_vs_raw_batched_fixed_length": round(search["tokens_per_s_in_generation"] / raw["batched"], 3),
        "prefill_recompute_ratio": search["recompute_per_generated_token"],
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--backends", default="hf,llamacpp", help="Comma-separated CPU backends.")
    parser.add_argument("--batch", type=int, default=4, help="Children per expansion = raw batch size.")
    parser.add_argument("--option-tokens", type=int, default=32, help="Option token cap = raw new tokens.")
    parser.add_argument("--simulations", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--one", help=argparse.SUPPRESS)  # run one backend in this process
    return parser


def main(args: argparse.Namespace) -> dict:
    if args.one:
        return one_backend(args)
    results = {}
    for backend in args.backends.split(","):
        command = [sys.executable, str(Path(__file__).resolve()), "--one", backend, "--model", args.model]
        command += ["--batch", str(args.batch), "--option-tokens", str(args.option_tokens)]
        command += ["--simulations", str(args.simulations), "--repeats", str(args.repeats)]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            results[backend] = {"error": done.stderr.strip().splitlines()[-1:] or ["failed"]}
        else:
            results[backend] = json.loads(done.stdout)
    return {
        "model": args.model,
        "batch": args.batch,
        "option_tokens": args.option_tokens,
        "simulations": args.simulations,
        "machine": platform.machine(),
        "backends": results,
        "aims": {"search_vs_raw_batched_stop_at_newline": ">= 0.9"},
    }


if __name__ == "__main__":
    print(json.dumps(main(make_parser().parse_args()), indent=2))
