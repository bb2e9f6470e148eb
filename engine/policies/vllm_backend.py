"""The ``vllm`` backend: vLLM on CUDA GPUs (the extra ``[gpu]``).

``LLM(..., enable_prefix_caching=True)`` keeps the KV blocks of every state it
has read, so siblings and children share their prefix without any work here.
Siblings are one request with ``SamplingParams(n=k, logprobs=1, seed=...)``;
rollouts of all leaves go in one ``generate`` call. vLLM cannot run our
termination functions, so each sample runs to ``max_tokens`` (or end of
sequence) and the option is cut on the token where the termination fires.
Generative critics read the first reply token's top-20 log-probs.

The value head runs as its own HF model (see ``engine.policies``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

from engine.prompts import FALSE_WORDS, SYSTEM_PROMPT, TRUE_WORDS, hf_chat_text
from engine.termination import stop_reason
from engine.types import Option, PolicyStats, TerminationFn


class VLLMPolicy:
    """A model under vLLM as a ``Policy`` and a True/False scorer.

    Args:
        model: an HF directory, hub id, or GGUF file vLLM can load.
        name: shown in logs and stored with runs.
        tensor_parallel_size: GPUs to split the model over (for models larger
            than one GPU), >= 1.
        gpu_memory_utilization: share of GPU memory vLLM may take, in (0, 1].
        seed: vLLM's engine seed (sampling uses the per-call seed).
        llm_options: anything else for ``vllm.LLM``.
    """

    backend = "vllm"
    """The ``load_policy`` backend name, stored with each run."""

    def __init__(
        self,
        model: str,
        *,
        name: str,
        tensor_parallel_size: int = 1,
        gpu_memory_utilization: float = 0.85,
        seed: int = 0,
        **llm_options,
    ) -> None:
        from vllm import LLM

        self.llm = LLM(
            model=model,
            enable_prefix_caching=True,
            tensor_parallel_size=tensor_parallel_size,
            gpu_memory_utilization=gpu_memory_utilization,
            seed=seed,
            **llm_options,
        )
        self.tokenizer = self.llm.get_tokenizer()
        self.name = name
        self._stats = PolicyStats()
        self.eos_ids = frozenset(
            token
            for token in (
                self.tokenizer.eos_token_id,
                *(self.tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")),
            )
            if isinstance(token, int) and token != self.tokenizer.unk_token_id
        )
        self.true_ids = self._single_ids(TRUE_WORDS)
        self.false_ids = self._single_ids(FALSE_WORDS)

    def _single_ids(self, words: Sequence[str]) -> frozenset[int]:
        encoded = (self.tokenizer(word, add_special_tokens=False)["input_ids"] for word in words)
        return frozenset(ids[0] for ids in encoded if len(ids) == 1)

    def chat_ids(self, system: str, user: str) -> tuple[int, ...]:
        text = hf_chat_text(self.tokenizer, system, user)
        return tuple(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def root_state(self, question: str) -> tuple[int, ...]:
        return self.chat_ids(SYSTEM_PROMPT, question)

    def extend(self, state: tuple[int, ...], text: str) -> tuple[int, ...]:
        return state + tuple(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def decode(self, token_ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(token_ids), skip_special_tokens=True)

    def stats(self) -> PolicyStats:
        return PolicyStats(**vars(self._stats))

    def propose(
        self,
        state: tuple[int, ...],
        *,
        k: int,
        termination: TerminationFn,
        max_tokens: int,
        temperature: float,
        seed: int,
    ) -> list[Option]:
        return self.complete(
            [state], n=k, termination=termination, max_tokens=max_tokens, temperature=temperature, seed=seed
        )[0]

    def complete(
        self,
        states: Sequence[tuple[int, ...]],
        *,
        n: int,
        termination: TerminationFn,
        max_tokens: int,
        temperature: float,
        seed: int,
    ) -> list[list[Option]]:
        from vllm import SamplingParams

        started = time.perf_counter()
        params = SamplingParams(n=n, temperature=temperature, max_tokens=max_tokens, logprobs=1, seed=seed)
        prompts = [{"prompt_token_ids": list(state)} for state in states]
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        results = []
        for state, output in zip(states, outputs, strict=True):
            cached = getattr(output, "num_cached_tokens", None) or 0
            self._stats.cached_tokens += cached
            self._stats.prefill_tokens += len(state) - cached
            results.append([self._option(sample, termination) for sample in output.outputs])
        self._stats.generate_seconds += time.perf_counter() - started
        return results

    def _option(self, sample, termination: TerminationFn) -> Option:
        """The option in one vLLM sample, cut where ``termination`` fires; a
        token vLLM gave no finite log-prob for counts 0."""
        tokens: list[int] = []
        logprobs: list[float] = []
        total = 0.0
        reason: str | None = None
        for index, token in enumerate(sample.token_ids):
            tokens.append(token)
            entry = (sample.logprobs or [{}] * (index + 1))[index].get(token)
            logprobs.append(entry.logprob if entry is not None and math.isfinite(entry.logprob) else 0.0)
            total += logprobs[-1]
            reason = stop_reason(tokens, eos_ids=self.eos_ids, termination=termination, decode=self.decode)
            if reason:
                break
        self._stats.generated_tokens += len(tokens)
        reason = reason or ("eos" if sample.finish_reason == "stop" else "token_cap")
        return Option.sampled(self.decode(tokens), tokens, min(total, 0.0), reason, logprobs)

    def score_true(self, prompts: Sequence[tuple[str, str]]) -> list[float]:
        """p("True") / (p("True") + p("False")) of the first reply token, from its
        top-20 log-probs (0.5 when neither word is among them)."""
        from vllm import SamplingParams

        states = [self.chat_ids(system, user) for system, user in prompts]
        params = SamplingParams(n=1, temperature=0.0, max_tokens=1, logprobs=20)
        outputs = self.llm.generate([{"prompt_token_ids": list(s)} for s in states], params, use_tqdm=False)
        scores = []
        for state, output in zip(states, outputs, strict=True):
            self._stats.scoring_prefill_tokens += len(state) - (getattr(output, "num_cached_tokens", 0) or 0)
            top = output.outputs[0].logprobs[0]
            p_true = sum(math.exp(top[token].logprob) for token in self.true_ids if token in top)
            p_false = sum(math.exp(top[token].logprob) for token in self.false_ids if token in top)
            scores.append(p_true / (p_true + p_false) if p_true + p_false > 0 else 0.5)
        return scores
