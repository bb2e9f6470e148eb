"""What MCTS costs next to self-consistency at equal generated tokens, on one
backend, side by side in one process. Prints one JSON object (also written to
``--out`` when given).

    python bench/search_cost.py --n-problems 30 --model qwen2.5-coder-0.5b --backend llamacpp \\
        --task gsm8k --data ../shared/data/gsm8k_train.jsonl --offset 100 --parallel-simulations 3

On the same problems it runs greedy, MCTS with ``--parallel-simulations K``
("batched"), the same MCTS one simulation at a time ("sequential", K = 1), and
self-consistency with as many samples as make its generated tokens about the
batched MCTS's (``round(MCTS tokens / greedy tokens)``, as ``canopy eval
--equal-tokens`` does). Search settings are the task's defaults
(``engine/defaults.py``) unless ``--config FILE`` names others. Then it times
the backend's raw batched decode (``policy.complete`` of one state, no
termination, at the mean batch size the batched search reached) as the
ceiling a search could decode at.

Keys: ``mcts_s_per_problem``, ``sc_s_per_problem``, ``mcts_over_sc``,
``all_tokens_per_s_over_raw`` (generated + prefill + critic prefill tokens per
second inside the batched search, over raw decode tokens per second),
``speedup_vs_sequential``, ``accuracy_mcts``, ``accuracy_sc``,
``accuracy_greedy``, ``peak_rss_mb``, ``mean_batch``, and the settings. Run it
on an idle machine: it reports the load average it started and ended with.

``critic_prefill`` counts tokens, not seconds (so any load will do): MCTS with
the generative PRM and ORM on (weight 1) over the first ``--critic-problems``
problems, the prompt tokens the critics read per scored prompt against the
tokens of the step each prompt is about (the newest step), with each rubric's
prefix kept (``llamacpp``'s rubric sequences) and, on ``llamacpp``, without.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.api import build_components  # noqa: E402
from engine.baselines import EvalSettings  # noqa: E402
from engine.config import SearchConfig, load_config_file  # noqa: E402
from engine.defaults import eval_defaults, search_defaults  # noqa: E402
from engine.evaluate import EvalResult, evaluate  # noqa: E402
from engine.policies import load_policy  # noqa: E402
from engine.tasks import load_problems  # noqa: E402
from store.db import make_engine  # noqa: E402


def _never(_text: str) -> None:
    return None


def _run(engine, method: str, problems, components, settings: EvalSettings) -> tuple[EvalResult, dict]:
    """Evaluate ``method`` and the policy's work counters over it."""
    before = components.policy.stats()
    started = time.perf_counter()
    result = evaluate(engine, method=method, problems=problems, components=components, settings=settings)
    after = components.policy.stats()
    work = {
        field.name: getattr(after, field.name) - getattr(before, field.name)
        for field in dataclasses.fields(after)
    }
    work["wall_seconds"] = time.perf_counter() - started
    return result, work


def _raw_tokens_per_s(policy, state: tuple[int, ...], batch: int, tokens: int) -> float:
    """Tokens/s of ``batch`` samples of ``tokens`` each from ``state``, decoded together."""
    policy.complete([state], n=batch, termination=_never, max_tokens=1, temperature=0.8, seed=0)
    started = time.perf_counter()
    [options] = policy.complete(
        [state], n=batch, termination=_never, max_tokens=tokens, temperature=0.8, seed=1
    )
    return sum(len(option.token_ids) for option in options) / (time.perf_counter() - started)


class _PromptCounter:
    """Counts the prompts a critic scores and the tokens of the newest step each is about."""

    def __init__(self, policy) -> None:
        self.policy, self.prompts, self.step_tokens = policy, 0, 0

    def wrap(self, score):
        def counted(requests):
            self.prompts += len(requests)
            self.step_tokens += sum(
                len(self.policy.extend((), r.steps[-1] if r.steps else "")) for r in requests
            )
            return score(requests)

        return counted


def _critic_prefill(args: argparse.Namespace, problems, search: SearchConfig) -> dict:
    """Critic prompt tokens read per scored prompt, with and without rubric prefixes kept."""
    config = search.with_overrides(weight_prm=1.0, weight_orm=1.0, parallel_simulations=1)
    settings = EvalSettings(**eval_defaults(args.task), search=config)
    report = {"problems": min(args.critic_problems, len(problems))}
    variants = (
        {"kept": {}, "not_kept": {"rubric_sequences": 0}} if args.backend == "llamacpp" else {"kept": {}}
    )
    for name, options in variants.items():
        policy = load_policy(args.model, backend=args.backend, **options)
        components = build_components(config, model=args.model, policy=policy)
        counts = _PromptCounter(policy)
        prm, orm = components.critics.prm, components.critics.orm
        prm.score_steps = counts.wrap(prm.score_steps)
        orm.score_outcomes = counts.wrap(orm.score_outcomes)
        with tempfile.TemporaryDirectory() as folder:
            engine = make_engine(f"sqlite:///{Path(folder) / 'critics.db'}")
            _, work = _run(engine, "mcts", problems[: report["problems"]], components, settings)
        prompts = max(counts.prompts, 1)
        report[name] = {
            "scored_prompts": counts.prompts,
            "prefill_per_prompt": round(work["scoring_prefill_tokens"] / prompts, 1),
            "step_tokens_per_prompt": round(counts.step_tokens / prompts, 1),
            "prefill_over_step_tokens": round(work["scoring_prefill_tokens"] / max(counts.step_tokens, 1), 3),
        }
        del policy, components
    return report


def measure(args: argparse.Namespace) -> dict:
    load_at_start = os.getloadavg()
    problems = load_problems(args.task, data=args.data, count=args.offset + args.n_problems)[args.offset :]
    search = {**search_defaults(args.task), **(load_config_file(args.config) if args.config else {})}
    batched = SearchConfig.from_dict({**search, "parallel_simulations": args.parallel_simulations})
    sequential = batched.with_overrides(parallel_simulations=1)
    baseline = EvalSettings(**eval_defaults(args.task), search=batched)
    policy = load_policy(args.model, backend=args.backend)
    components = build_components(batched, model=args.model, policy=policy)
    with tempfile.TemporaryDirectory() as folder:
        engine = make_engine(f"sqlite:///{Path(folder) / 'cost.db'}")
        greedy, _ = _run(engine, "greedy", problems, components, baseline)
        mcts, mcts_work = _run(engine, "mcts", problems, components, baseline)
        one_by_one, _ = _run(
            engine, "mcts", problems, components, dataclasses.replace(baseline, search=sequential)
        )
        samples = max(1, round(mcts.generated_tokens / max(greedy.generated_tokens, 1.0)))
        sc, _ = _run(
            engine, "self-consistency", problems, components, dataclasses.replace(baseline, samples=samples)
        )
    mean_batch = mcts_work["decode_rows"] / mcts_work["decode_steps"] if mcts_work["decode_steps"] else None
    raw = _raw_tokens_per_s(
        policy, policy.root_state(problems[0].question), max(1, round(mean_batch or 1)), args.raw_tokens
    )
    all_tokens = sum(
        mcts_work[key] for key in ("generated_tokens", "prefill_tokens", "scoring_prefill_tokens")
    )
    n = len(problems)
    critic_prefill = _critic_prefill(args, problems, batched) if args.critic_problems > 0 else None
    return {
        "model": args.model,
        "backend": args.backend,
        "task": args.task,
        "problems": n,
        "offset": args.offset,
        "parallel_simulations": args.parallel_simulations,
        "sc_samples": samples,
        "mcts_s_per_problem": round(mcts.seconds / n, 2),
        "sequential_s_per_problem": round(one_by_one.seconds / n, 2),
        "sc_s_per_problem": round(sc.seconds / n, 2),
        "greedy_s_per_problem": round(greedy.seconds / n, 2),
        "mcts_over_sc": round(mcts.seconds / sc.seconds, 3) if sc.seconds else None,
        "speedup_vs_sequential": round(one_by_one.seconds / mcts.seconds, 3) if mcts.seconds else None,
        "generated_tokens_per_problem": {
            "mcts": round(mcts.generated_tokens, 1),
            "sequential": round(one_by_one.generated_tokens, 1),
            "sc": round(sc.generated_tokens, 1),
            "greedy": round(greedy.generated_tokens, 1),
        },
        "all_tokens_per_s": round(all_tokens / mcts_work["wall_seconds"], 2),
        "raw_tokens_per_s": round(raw, 2),
        "all_tokens_per_s_over_raw": round(all_tokens / mcts_work["wall_seconds"] / raw, 3),
        "mean_batch": round(mean_batch, 2) if mean_batch else None,
        "accuracy_mcts": mcts.accuracy,
        "accuracy_sequential": one_by_one.accuracy,
        "accuracy_sc": sc.accuracy,
        "accuracy_greedy": greedy.accuracy,
        "critic_prefill": critic_prefill,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "search": batched.to_dict(),
        "load_average": {"start": load_at_start, "end": os.getloadavg()},
    }


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-problems", type=int, default=30)
    parser.add_argument("--offset", type=int, default=100, help="First problem (default: the dev slice).")
    parser.add_argument("--model", default="qwen2.5-coder-0.5b")
    parser.add_argument("--backend", default="llamacpp")
    parser.add_argument("--task", default="gsm8k")
    parser.add_argument("--data", help="GSM8K-format JSONL file (task gsm8k).")
    parser.add_argument("--parallel-simulations", type=int, default=3)
    parser.add_argument("--config", help="TOML/JSON search settings instead of the task's defaults.")
    parser.add_argument("--raw-tokens", type=int, default=128, help="Length of the raw decode samples.")
    parser.add_argument(
        "--critic-problems", type=int, default=3, help="Problems of the critic-prefill count (0: skip it)."
    )
    parser.add_argument(
        "--only-critic-prefill", action="store_true", help="Count critic prefill only (no timings)."
    )
    parser.add_argument("--out", help="Also write the JSON here.")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    if args.only_critic_prefill:
        problems = load_problems(args.task, data=args.data, count=args.offset + args.n_problems)[
            args.offset :
        ]
        search = {**search_defaults(args.task), **(load_config_file(args.config) if args.config else {})}
        report = {
            "model": args.model,
            "backend": args.backend,
            "task": args.task,
            "offset": args.offset,
            "critic_prefill": _critic_prefill(args, problems, SearchConfig.from_dict(search)),
        }
    else:
        report = measure(args)
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
