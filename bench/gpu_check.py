"""The GPU path in one call: the hf backend and the trainers on CUDA, on random
weights of the real SmolLM2-135M and Qwen2.5-0.5B architectures, in bf16.

No weights travel: ``--prepare`` copies only the config and tokenizer files of
the two presets (a few MB; Qwen2.5-Coder-0.5B has Qwen2.5-0.5B's architecture),
and each model is built from its config with seeded random weights. Random
weights make the numbers meaningless as answers but not as checks: a prefix
cache, a left-padded batch or a resumed tree that computes anything else than
the plain forward pass shows up just the same. Per model it checks and measures:

- prefix cache: each child state the backend cached while sampling (alone and
  in a left-padded batch of leaves of different lengths) against a fresh
  forward pass of that state: next-token logits, last hidden state and every
  layer's keys and values, as max |cached - fresh| / max |fresh|, at most
  ``TOLERANCE`` (bf16: 0.05, about 13 bf16 steps of 2**-8; fp32: 1e-3); and
  expanding a cached child prefills nothing;
- batched vs one at a time: ``propose_many`` against ``propose`` per leaf,
  greedy: rows must be equal, or part where the two picks are a near-tie of
  the fresh forward pass (both within the tolerance of its best logit), which
  is all that rounding can explain; sampled rows are reported, not required
  (bf16 rounding of a padded row can move a draw);
- resume: a stored search stopped half way and resumed (``search_problem``,
  ``resume_search``) equals the uninterrupted one node for node; the same
  resumed from a cold prefix cache, as a new process would, is reported;
- tokens/s inside a search against raw batched ``generate`` at each batch
  size (``bench/search_throughput.py``'s measures; batch = children per
  expansion), and peak memory (CUDA: ``max_memory_allocated``; CPU: RSS);
- one LoRA SFT step, one DPO step and one value-head step through
  ``training``'s trainers (on CUDA: fp32 weights under bf16 autocast, the
  trainers' own setting), each must report a finite loss and change weights.

It prints one JSON object and writes it to ``--out`` after every section, so a
run cut short still leaves what it did. ``ok`` is false and the exit status 1
when a check failed; ``failures`` says which and why.

Run it (from the repository root)::

    python bench/gpu_check.py --prepare bench/gpu_assets  # once, where the presets are prepared
    python bench/gpu_check.py --device cpu --out /tmp/gpu_check.json  # tiny configs, ~35 s
    bash bench/gpu_check.sh  # on the lent GPU machine, with both folders carried

On the lent machine (Python 3.12, torch 2.11, transformers 5.17, accelerate,
peft, pytest, no network) the project's pins need these wheels beyond what it
has, the versions tested here; all pure Python but pydantic-core and
SQLAlchemy (built for CPython 3.12). Fetch them into the git-ignored
``bench/gpu_wheels`` (23 MB; with the 15 MB of assets and the work tree the
call carries about 39 of its 64 MiB)::

    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \\
      --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \\
      --platform manylinux2014_x86_64 -d bench/gpu_wheels \\
      transformers==5.24.0 trl==1.16.0 peft==0.21.2 datasets==5.2.0 dill==0.4.1 \\
      multiprocess==0.70.19 sqlmodel==0.0.50 sqlalchemy==2.1.9 pydantic==2.14.4 \\
      pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 \\
      typing-extensions==4.16.0

``bench/gpu_check.sh`` installs them with ``pip install --no-index --no-deps
--target`` into a folder put first on ``PYTHONPATH``, so they win over the
machine's own versions without touching them. The machine's huggingface-hub
1.33, tokenizers 0.23.2 and accelerate 1.15 meet these wheels' needs (checked
here by running the CPU check under huggingface-hub 1.33). Not needed there:
vLLM, llama-cpp-python, streamlit, sentence-transformers, asteval, gguf.

transformers 5.17 is too old: its models take ``past_key_values=`` and
silently ignore the ``cache=`` keyword (5.24's name) that the hf backend
passes, so nothing would be cached. The check refuses to run on versions
outside ``pyproject.toml``'s pins and names the wheel to bring.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PRESETS = {"smollm2-135m": "SmolLM2-135M", "qwen2.5-coder-0.5b": "Qwen2.5-0.5B"}
"""The presets whose architectures are checked, and what each stands for."""

ASSET_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
)
"""What ``--prepare`` copies of a preset's HF directory, where present: never weights."""

CARRY_LIMIT = 64 << 20
"""Bytes one device call carries: the working tree plus the carried folders."""

CHECKED_PACKAGES = ("torch", "transformers", "accelerate", "trl", "peft", "datasets", "sqlmodel")
"""The project's dependencies this check imports; each must meet pyproject.toml's pin."""

TOLERANCE = {"bfloat16": 5e-2, "float32": 1e-3}
"""Max |cached - fresh| / max |fresh| allowed per dtype (bf16 keeps 8 bits: steps of 2**-8)."""

TINY = {
    "num_hidden_layers": 2,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
}
"""Config overrides that shrink either architecture for the CPU run (vocabulary kept)."""

QUESTION = "Sam has 4 boxes with 6 pens in each box. He gives away 5 pens. How many pens does he have left?"
LEAF_TEXTS = ("Step 1:", "He starts with 4 boxes of 6 pens, which makes")
"""Two extensions of the root of different lengths, so a batch of them is left-padded."""

SFT_EXAMPLES = [
    {"question": QUESTION, "steps": ["4 * 6 = 24\n", "24 - 5 = 19\n", "The answer is 19."]},
    {"question": "What is 5 + 6?", "steps": ["5 + 6 = 11\n", "The answer is 11."]},
]
DPO_EXAMPLES = [
    {"question": QUESTION, "prefix": [], "chosen": "4 * 6 = 24\n", "rejected": "4 * 6 = 20\n"},
    {"question": "What is 5 + 6?", "prefix": ["5 + 6 = 11\n"], "chosen": "The answer is 11.",
     "rejected": "The answer is 12."},
]  # fmt: skip
VALUE_EXAMPLES = [
    {"question": QUESTION, "steps": steps, "target": target}
    for steps, target in (
        (["4 * 6 = 24\n"], 0.9),
        (["4 * 6 = 20\n"], 0.1),
        ([], 0.5),
        (["24 - 5 = 19\n"], 0.8),
    )
]
LORA_PROBE = "model.layers.0.self_attn.q_proj.weight"
"""A weight every LoRA adapter here targets: merged, it must differ from the base."""


@dataclass(frozen=True)
class Sizes:
    """How big the check runs on one device.

    Attributes:
        shrink: config overrides (``TINY``), or None for the real architecture.
        batches: batch sizes (children per expansion) of the throughput runs.
        option_tokens: token cap of an option (and raw ``generate``'s new tokens).
        throughput_simulations: simulations of each throughput search.
        resume_simulations: simulations of the resumed search (stopped at half).
        raw_repeats: timed ``generate`` calls per batch size (median kept).
    """

    shrink: dict[str, int] | None
    batches: tuple[int, ...]
    option_tokens: int
    throughput_simulations: int
    resume_simulations: int
    raw_repeats: int


SIZES = {
    "cuda": Sizes(None, (4, 16, 64), 32, 4, 6, 2),
    "cpu": Sizes(TINY, (2, 4), 8, 2, 4, 1),
}


class CheckFailed(Exception):
    """A check ran and its result is wrong; the message says how."""


class Interrupted(Exception):
    """Raised from a search's progress callback to stop it half way."""


# -- preparing what travels ----------------------------------------------------------


def prepare(assets: Path, wheels: Path) -> dict[str, Any]:
    """Copy the config and tokenizer files of each preset's prepared HF
    directory into ``assets/<preset>/`` and check that the assets, the wheels
    (if fetched) and the working tree fit one device call."""
    from engine.models import prepare_hf_dir, resolve_model

    copied = {}
    for preset in PRESETS:
        source = prepare_hf_dir(resolve_model(preset))
        target = assets / preset
        target.mkdir(parents=True, exist_ok=True)
        names = [name for name in ASSET_FILES if (source / name).is_file()]
        if "config.json" not in names or "tokenizer.json" not in names:
            raise CheckFailed(
                f"{source} lacks config.json or tokenizer.json; run `canopy models prepare {preset}`"
            )
        for name in names:
            shutil.copy2(source / name, target / name)
        copied[preset] = names
    sizes = {
        "assets": _folder_bytes(assets),
        "wheels": _folder_bytes(wheels),
        "work_tree": _work_tree_bytes(),
    }
    total = sum(size or 0 for size in sizes.values())
    if total > CARRY_LIMIT:
        raise CheckFailed(
            f"the call would carry {total / 2**20:.1f} MiB ({sizes}), over the {CARRY_LIMIT >> 20} MiB limit"
        )
    return {"copied": copied, "bytes": sizes, "total_mib": round(total / 2**20, 1)}


def _folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file()) if folder.is_dir() else 0


def _work_tree_bytes() -> int | None:
    """Bytes of the files git would send (tracked, and untracked but not ignored);
    None outside a git checkout."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=False,
    )
    if listed.returncode != 0:
        return None
    paths = {ROOT / name for name in listed.stdout.decode().split("\0") if name}
    return sum(path.stat().st_size for path in paths if path.is_file())


# -- the environment -----------------------------------------------------------------


def environment(device: str) -> dict[str, Any]:
    """Versions of what the check imports, and those outside pyproject.toml's pins."""
    from importlib.metadata import PackageNotFoundError, version

    import torch
    from packaging.requirements import Requirement

    pins = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    specifiers = {Requirement(pin).name: Requirement(pin).specifier for pin in pins}
    versions: dict[str, str | None] = {}
    for name in CHECKED_PACKAGES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = None
    return {
        "python": platform.python_version(),
        "gpu": torch.cuda.get_device_name(0) if device == "cuda" else None,
        "cuda": torch.version.cuda,
        "versions": versions,
        "outside_pins": [
            f"{name} {installed} (pinned {specifiers[name]})"
            for name, installed in versions.items()
            if installed is None or not specifiers[name].contains(installed, prereleases=True)
        ],
    }


# -- the models ----------------------------------------------------------------------


def build_model(asset_dir: Path, *, device: str, dtype: str, shrink: dict[str, int] | None, seed: int):
    """A seeded random-weight model of ``asset_dir``'s architecture on ``device``
    and its tokenizer, set up as ``engine.models.load_causal_lm`` sets them up."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(asset_dir)
    if shrink:
        values = {**config.to_dict(), **shrink}
        if values.get("layer_types"):
            values["layer_types"] = values["layer_types"][: shrink["num_hidden_layers"]]
        config = type(config).from_dict(values)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype)).to(device)
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(asset_dir)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def describe(model) -> dict[str, Any]:
    config = model.config
    return {
        "architecture": type(model).__name__,
        "layers": config.num_hidden_layers,
        "hidden_size": config.hidden_size,
        "vocab_size": config.vocab_size,
        "parameters_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 1),
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
    }


def fresh_view(model, state: Sequence[int]):
    """A plain forward pass over ``state``: last logits [1, vocab], last hidden
    state [1, hidden] (both float) and per-layer (keys, values)."""
    import torch

    with torch.inference_mode():
        out = model(
            input_ids=torch.tensor([list(state)], device=model.device),
            use_cache=True,
            output_hidden_states=True,
        )
    kv = [(layer.keys, layer.values) for layer in out.cache.layers]
    return out.logits[:, -1].float(), out.hidden_states[-1][:, -1].float(), kv


def relative_error(got, want) -> float:
    """max |got - want| / max |want|, in float32."""
    want = want.float()
    return ((got.float() - want).abs().max() / want.abs().max().clamp_min(1e-12)).item()


# -- the checks ----------------------------------------------------------------------


def check_prefix_cache(policy, *, tolerance: float, option_tokens: int) -> dict[str, Any]:
    """Every child state cached while sampling matches a fresh forward pass."""
    from engine.termination import make_termination
    from engine.types import ProposeRequest

    root = policy.root_state(QUESTION)
    sampling = {"termination": make_termination(["newline"]), "max_tokens": option_tokens, "temperature": 0.8}
    alone = policy.propose(root, k=4, seed=5, **sampling)
    leaves = [policy.extend(root, text) for text in LEAF_TEXTS]
    batched = policy.propose_many(
        [ProposeRequest(leaf, 3, 7 + i) for i, leaf in enumerate(leaves)], **sampling
    )
    children = [root + option.token_ids for option in alone if not option.finished]
    for leaf, options in zip(leaves, batched, strict=True):
        children += [leaf + option.token_ids for option in options if not option.finished]
    if not children:
        raise CheckFailed("every sampled option ended the solution; no child state to compare")
    worst = {"logits": 0.0, "hidden": 0.0, "kv": 0.0}
    logits_max_abs_diff = 0.0
    for child in children:
        entry = policy.cache.get(child)
        if entry is None:
            raise CheckFailed(f"child state of {len(child)} tokens was not cached whole")
        logits, hidden, kv = fresh_view(policy.model, child)
        if len(entry.kv) != len(kv) or any(
            k.shape != fk.shape for (k, _), (fk, _) in zip(entry.kv, kv, strict=True)
        ):
            raise CheckFailed(
                f"cached keys have shape {tuple(entry.kv[0][0].shape)}, a fresh pass {tuple(kv[0][0].shape)}"
            )
        worst["logits"] = max(worst["logits"], relative_error(entry.logits, logits))
        logits_max_abs_diff = max(logits_max_abs_diff, (entry.logits - logits).abs().max().item())
        worst["hidden"] = max(worst["hidden"], relative_error(entry.hidden, hidden))
        for (key, value), (fresh_key, fresh_value) in zip(entry.kv, kv, strict=True):
            worst["kv"] = max(worst["kv"], relative_error(key, fresh_key), relative_error(value, fresh_value))
    before = policy.stats().prefill_tokens
    policy.propose(children[0], k=2, seed=11, **sampling)
    child_prefill = policy.stats().prefill_tokens - before
    result = {
        "children": len(children),
        "logits_max_abs_diff": round(logits_max_abs_diff, 6),
        **{f"{name}_rel_error": round(error, 6) for name, error in worst.items()},
        "tolerance": tolerance,
        "cached_child_prefill_tokens": child_prefill,
    }
    over = [name for name, error in worst.items() if error > tolerance]
    if over or child_prefill:
        raise CheckFailed(
            f"prefix cache: {over} over {tolerance}, cached child prefilled {child_prefill} tokens"
        )
    return result


def check_batched_vs_single(policy, *, tolerance: float, option_tokens: int) -> dict[str, Any]:
    """``propose_many`` over left-padded leaves samples what ``propose`` does per leaf."""
    from engine.termination import make_termination
    from engine.types import ProposeRequest

    root = policy.root_state(QUESTION)
    requests = [ProposeRequest(root, 2, 3)] + [
        ProposeRequest(policy.extend(root, text), 3, 9 + i) for i, text in enumerate(LEAF_TEXTS)
    ]
    newline = make_termination(["newline"])
    result = {}
    for mode, temperature in (("greedy", 0.0), ("sampled", 0.8)):
        sampling = {"termination": newline, "max_tokens": option_tokens, "temperature": temperature}
        batched = policy.propose_many(requests, **sampling)
        rows, equal, near_ties, mismatches = 0, 0, 0, []
        for request, options in zip(requests, batched, strict=True):
            single = policy.propose(request.state, k=request.k, seed=request.seed, **sampling)
            for one, other in zip(options, single, strict=True):
                rows += 1
                if one.token_ids == other.token_ids:
                    equal += 1
                elif mode == "greedy":
                    gap = _pick_gap(policy.model, request.state, one.token_ids, other.token_ids)
                    if gap <= tolerance:
                        near_ties += 1
                    else:
                        mismatches.append(round(gap, 4))
        result[mode] = {"rows": rows, "equal": equal}
        if mode == "greedy":
            result[mode] |= {"near_ties": near_ties, "mismatch_gaps": mismatches}
    result["tolerance"] = tolerance
    if result["greedy"]["mismatch_gaps"]:
        raise CheckFailed(f"greedy rows differ beyond a near-tie: {result['greedy']}")
    return result


def _pick_gap(model, state: tuple[int, ...], one: Sequence[int], other: Sequence[int]) -> float:
    """Where two greedy rows part, how far the lower of the two picks lies below
    the best logit of a fresh forward pass, relative to max |logit|."""
    # Termination reads only the tokens so far, so the rows part before the shorter one ends.
    split = next(i for i, (a, b) in enumerate(zip(one, other, strict=False)) if a != b)
    logits, _, _ = fresh_view(model, state + tuple(one[:split]))
    best = logits.max()
    lower = min(logits[0, one[split]], logits[0, other[split]])
    return ((best - lower) / logits.abs().max()).item()


def check_resume(model, tokenizer, *, name: str, simulations: int, option_tokens: int, db: Path) -> dict:
    """A stored search stopped half way and resumed equals the uninterrupted one."""
    from engine.api import build_components, resume_search, search_problem
    from engine.config import SearchConfig
    from engine.persist import load_tree
    from engine.policies.hf import HFPolicy
    from engine.types import Problem
    from store.db import make_engine

    config = SearchConfig(
        simulations=simulations,
        parallel_simulations=2,
        seed=7,
        similarity="off",
        max_option_tokens=option_tokens,
        rollout_max_tokens=2 * option_tokens,
        root_min_children=2,
        root_max_children=3,
        min_children=2,
        max_children=2,
    )
    problem = Problem(question=QUESTION, answer="19")
    engine = make_engine(str(db))

    def components():
        policy = HFPolicy(model, tokenizer, name=name)
        return build_components(config, model=name, policy=policy)

    def stopped_half_way(parts) -> int:
        run_ids: list[int] = []

        def stop(tree) -> None:
            if tree.simulations_done >= simulations // 2:
                raise Interrupted

        try:
            search_problem(
                engine,
                problem,
                model=name,
                config=config,
                components=parts,
                on_run_created=run_ids.append,
                on_simulation=stop,
            )
        except Interrupted:
            return run_ids[0]
        raise CheckFailed("the search was not stopped half way")

    whole = search_problem(engine, problem, model=name, config=config, components=components())
    warm_parts = components()
    warm = resume_search(engine, stopped_half_way(warm_parts), components=warm_parts, config=config)
    cold = resume_search(engine, stopped_half_way(components()), components=components(), config=config)
    reference = _nodes(load_tree(engine, whole.tree_id)[0])
    warm_difference = _tree_difference(reference, _nodes(load_tree(engine, warm.tree_id)[0]))
    cold_difference = _tree_difference(reference, _nodes(load_tree(engine, cold.tree_id)[0]))
    result = {
        "simulations": simulations,
        "stopped_after": simulations // 2,
        "nodes": whole.nodes,
        "equal": warm_difference is None,
        "cold_cache_equal": cold_difference is None,
        "cold_cache_difference": cold_difference,
    }
    if warm_difference is not None:
        raise CheckFailed(f"resumed tree differs from the uninterrupted one: {warm_difference}")
    return result


def _nodes(tree) -> list[dict[str, Any]]:
    return [dataclasses.asdict(node) for node in tree.nodes] + [
        {"filtered": record.option.text, "collided_with": record.collided_with} for record in tree.filtered
    ]


def _tree_difference(want: list[dict], got: list[dict]) -> str | None:
    """None when the trees are equal, else how many nodes differ and how the first does."""
    if len(want) != len(got):
        return f"{len(got)} nodes, not {len(want)}"
    differing = [index for index, (a, b) in enumerate(zip(want, got, strict=True)) if a != b]
    if not differing:
        return None
    first = differing[0]
    fields = sorted(key for key in want[first] if want[first][key] != got[first].get(key))
    return f"{len(differing)} of {len(want)} nodes differ; node {first}: {', '.join(fields)}"


def measure_throughput(policy, *, name: str, sizes: Sizes) -> list[dict[str, Any]]:
    """Generation tokens/s of a search (every critic off, no rollouts) against
    raw fixed-length ``generate`` at each batch size (random weights rarely
    write a newline, so options run to the token cap like the raw rows)."""
    # A sibling script (bench/ leads sys.path when this runs as one): the same measures.
    from search_throughput import raw_generate, search_run

    from engine.config import SearchConfig

    prompt = policy.root_state(QUESTION)
    rows = []
    for batch in sizes.batches:
        config = SearchConfig(
            simulations=sizes.throughput_simulations,
            max_option_tokens=sizes.option_tokens,
            similarity="off",
            rollouts=0,
            weight_prm=0.0,
            weight_orm=0.0,
            weight_tool=0.0,
            root_min_children=batch,
            root_max_children=batch,
            min_children=batch,
            max_children=batch,
        )
        raw_generate(policy, prompt, batch=batch, new_tokens=4, repeats=1, stop_at_newline=False)  # warm-up
        raw = raw_generate(
            policy,
            prompt,
            batch=batch,
            new_tokens=sizes.option_tokens,
            repeats=sizes.raw_repeats,
            stop_at_newline=False,
        )
        search = search_run(policy, QUESTION, config, model=name)
        rows.append(
            {
                "batch": batch,
                "search_tokens_per_s": search["tokens_per_s_in_generation"],
                "search_wall_tokens_per_s": search["tokens_per_s_wall"],
                "raw_generate_tokens_per_s": raw["tokens_per_s"],
                "search_vs_raw": round(search["tokens_per_s_in_generation"] / raw["tokens_per_s"], 3),
                "search_generated_tokens": search["generated_tokens"],
            }
        )
    return rows


def check_trainers(base_dir: Path, work: Path, *, device: str) -> dict[str, Any]:
    """One LoRA SFT step, one DPO step and one value-head step on ``base_dir``."""
    import torch

    from engine.critics.value import ValueHead, load_value_head
    from training.dpo_config import DPOTrainConfig
    from training.dpo_trainer import train_dpo
    from training.sft_config import SFTTrainConfig
    from training.sft_trainer import train_sft
    from training.value_config import ValueTrainConfig
    from training.value_trainer import train_value

    one_step = {"max_steps": 1, "batch_size": 2, "max_length": 128, "eval_fraction": 0.0}
    precision = "fp32 weights, bf16 autocast" if device == "cuda" else "fp32"
    results = {}
    for kind, train, config, examples in (
        ("sft", train_sft, SFTTrainConfig(**one_step), SFT_EXAMPLES),
        ("dpo", train_dpo, DPOTrainConfig(**one_step), DPO_EXAMPLES),
    ):
        started = time.monotonic()
        trained = train(examples, base_model=str(base_dir), output_dir=work / kind, config=config)
        change = (_tensor(work / kind, LORA_PROBE) - _tensor(base_dir, LORA_PROBE)).abs().max().item()
        results[kind] = {
            "steps": trained.steps,
            "train_loss": round(trained.train_loss, 5),
            "lora_weight_max_change": change,
            "precision": precision,
            "seconds": round(time.monotonic() - started, 1),
        }
        if trained.steps != 1 or not math.isfinite(trained.train_loss) or change == 0:
            raise CheckFailed(f"{kind} step did not train: {results[kind]}")
    started = time.monotonic()
    config = ValueTrainConfig(max_steps=1, batch_size=4, eval_fraction=0.0)
    trained = train_value(VALUE_EXAMPLES, base_model=str(base_dir), output_dir=work / "value", config=config)
    head, _ = load_value_head(work / "value")
    torch.manual_seed(config.seed)
    initial = ValueHead(head.hidden_size, config.inner_size)
    change = (head.mlp[0].weight - initial.mlp[0].weight).abs().max().item()
    results["value"] = {
        "steps": trained.steps,
        "train_loss": round(trained.train_loss, 5),
        "head_weight_max_change": change,
        "seconds": round(time.monotonic() - started, 1),
    }
    if trained.steps != 1 or not math.isfinite(trained.train_loss) or change == 0:
        raise CheckFailed(f"value step did not train: {results['value']}")
    return results


def _tensor(directory: Path, name: str):
    from safetensors import safe_open

    for path in sorted(directory.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as weights:
            if name in weights.keys():
                return weights.get_tensor(name).float()
    raise CheckFailed(f"no {name} in {directory}")


# -- running it ----------------------------------------------------------------------


class Report:
    """The JSON being built, written to ``out`` after every section."""

    def __init__(self, out: Path | None, device: str, deadline: float) -> None:
        self.out = out
        self.device = device
        self.deadline = deadline
        self.started = time.monotonic()
        self.data: dict[str, Any] = {"ok": False, "failures": [], "device": device}

    def section(self, where: dict[str, Any], name: str, label: str, work: Callable[[], Any]) -> Any:
        """Run ``work`` into ``where[name]`` with its seconds and peak memory; a
        failure is recorded (``label``: ``name``: why) and the run goes on."""
        if time.monotonic() > self.deadline:
            self.fail(f"{label}: {name}: skipped, the time budget was spent")
            return None
        _reset_peak_memory(self.device)
        started = time.monotonic()
        try:
            value = work()
        except Exception as error:  # every failure is a result here, the next section still runs
            value = {"error": f"{type(error).__name__}: {error}"}
            if not isinstance(error, CheckFailed):
                value["traceback"] = traceback.format_exc(limit=-4).splitlines()[-12:]
            self.fail(f"{label}: {name}: {value['error']}")
        if isinstance(value, dict):
            peak = _peak_memory_mib(self.device)
            value = {**value, "seconds": round(time.monotonic() - started, 2), "peak_memory_mib": peak}
            self.data["peak_memory_mib"] = max(self.data.get("peak_memory_mib", 0.0), peak)
        where[name] = value
        self.write()
        return value

    def fail(self, message: str) -> None:
        self.data["failures"].append(message)

    def write(self) -> None:
        self.data["seconds"] = round(time.monotonic() - self.started, 1)
        self.data["ok"] = not self.data["failures"]
        if self.out is not None:
            self.out.parent.mkdir(parents=True, exist_ok=True)
            staging = self.out.with_suffix(".partial")
            staging.write_text(json.dumps(self.data, indent=2) + "\n")
            staging.replace(self.out)


def _reset_peak_memory(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()


def _peak_memory_mib(device: str) -> float:
    """CUDA: the most memory allocated since the last reset; CPU: the process's peak RSS so far."""
    import torch

    if device == "cuda":
        return round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def check_model(report: Report, preset: str, args: argparse.Namespace, work: Path) -> None:
    from engine.policies.hf import HFPolicy

    sizes = SIZES[args.device]
    tolerance = TOLERANCE[args.dtype]
    result: dict[str, Any] = {"stands_for": PRESETS[preset]}
    report.data["models"][preset] = result
    loaded = {}

    def build() -> dict[str, Any]:
        loaded["model"], loaded["tokenizer"] = build_model(
            args.assets / preset, device=args.device, dtype=args.dtype, shrink=sizes.shrink, seed=args.seed
        )
        return describe(loaded["model"])

    report.section(result, "model", preset, build)
    if not loaded:
        return
    model, tokenizer = loaded.pop("model"), loaded.pop("tokenizer")

    def policy() -> HFPolicy:
        return HFPolicy(model, tokenizer, name=preset)

    sampling = {"tolerance": tolerance, "option_tokens": sizes.option_tokens}
    report.section(result, "prefix_cache", preset, lambda: check_prefix_cache(policy(), **sampling))
    report.section(result, "batched_vs_single", preset, lambda: check_batched_vs_single(policy(), **sampling))
    report.section(
        result,
        "resume",
        preset,
        lambda: check_resume(
            model,
            tokenizer,
            name=preset,
            simulations=sizes.resume_simulations,
            option_tokens=sizes.option_tokens,
            db=work / f"{preset}.db",
        ),
    )
    report.section(
        result, "throughput", preset, lambda: {"rows": measure_throughput(policy(), name=preset, sizes=sizes)}
    )

    def train() -> dict[str, Any]:
        base_dir = work / f"{preset}-base"
        model.save_pretrained(base_dir)
        tokenizer.save_pretrained(base_dir)
        return check_trainers(base_dir, work / f"{preset}-trained", device=args.device)

    report.section(result, "trainers", preset, train)
    peaks = [
        part["peak_memory_mib"]
        for part in result.values()
        if isinstance(part, dict) and "peak_memory_mib" in part
    ]
    result["peak_memory_mib"] = max(peaks)


def _release(device: str) -> None:
    import gc

    import torch

    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


def run_check(args: argparse.Namespace) -> dict[str, Any]:
    """The whole check; the report is written to ``args.out`` as it grows."""
    if args.device == "cpu":
        # The trainers pick CUDA whenever it is visible.
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    report = Report(args.out, args.device, time.monotonic() + args.budget_s)
    env = report.section(report.data, "environment", "environment", lambda: environment(args.device))
    if env is None or "error" in env:
        return report.data
    import torch

    if args.device == "cpu":
        # Tiny matrices: one thread beats handing each one to a pool (by far, on a busy machine).
        torch.set_num_threads(1)
    report.data |= {
        "gpu": env["gpu"],
        "dtype": args.dtype,
        "tolerance": TOLERANCE[args.dtype],
        "sizes": dataclasses.asdict(SIZES[args.device]),
        "models": {},
    }
    missing = [preset for preset in args.models if not (args.assets / preset / "config.json").is_file()]
    if env["outside_pins"]:
        report.fail(
            f"environment: outside pyproject.toml's pins: {', '.join(env['outside_pins'])}; "
            "carry the wheels in bench/gpu_wheels (see this script's docstring)"
        )
    elif args.device == "cuda" and not torch.cuda.is_available():
        report.fail("environment: --device cuda but torch sees no CUDA device")
    elif missing:
        report.fail(f"environment: no config.json for {missing} in {args.assets}; run --prepare first")
    else:
        with tempfile.TemporaryDirectory(prefix="canopy-gpu-check-") as scratch:
            for preset in args.models:
                check_model(report, preset, args, Path(scratch))
                _release(args.device)
    report.write()
    return report.data


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=sorted(SIZES), default="cuda", help="cpu runs tiny configs.")
    parser.add_argument("--dtype", choices=sorted(TOLERANCE), default="bfloat16", help="Weights' dtype.")
    parser.add_argument("--assets", type=Path, default=ROOT / "bench" / "gpu_assets", help="From --prepare.")
    parser.add_argument("--models", nargs="+", choices=list(PRESETS), default=list(PRESETS))
    parser.add_argument("--out", type=Path, help="Also write the JSON here (rewritten after each section).")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the random weights.")
    parser.add_argument(
        "--budget-s", type=float, default=420.0, help="Sections not started by then are skipped (failures)."
    )
    parser.add_argument(
        "--prepare",
        type=Path,
        metavar="DIR",
        help="Instead of checking: copy the presets' config and tokenizer files into DIR and check the size.",
    )
    return parser


def main(args: argparse.Namespace) -> int:
    if args.prepare is not None:
        print(json.dumps(prepare(args.prepare, ROOT / "bench" / "gpu_wheels"), indent=2))
        return 0
    data = run_check(args)
    print(json.dumps(data, indent=2))
    return 0 if data["ok"] else 1


if __name__ == "__main__":
    sys.exit(main(make_parser().parse_args()))
