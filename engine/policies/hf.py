"""The ``hf`` backend: transformers on CPU or GPU, with a prefix cache.

Every state the search reaches is a token-id prefix of its children's states.
The backend keeps the KV cache (and last logits and hidden state) of recent
states in a byte-bounded LRU ``PrefixCache``: expanding a node starts from its
own cached state, and anything else (a rollout by another path, a critic
prompt) starts from the longest cached prefix, so the shared part is never
prefilled twice. Siblings are sampled as one batch, and so are the options of
several leaves (``propose_many``) and the rollouts of several states, left-padded
to the longest; a row that finishes an option is fed its last token once more,
so the child's state is cached whole and its own expansion needs no prefill at
all.
"""

from __future__ import annotations

import itertools
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import DynamicCache

from engine.prompts import FALSE_WORDS, SYSTEM_PROMPT, TRUE_WORDS, hf_chat_text
from engine.termination import stop_reason
from engine.types import Option, PolicyStats, ProposeRequest, TerminationFn

KV = list[tuple[torch.Tensor, torch.Tensor]]


@dataclass
class CacheEntry:
    """The model's view after reading a state: per-layer keys/values of shape
    [1, heads, length, head_dim], the next-token logits [1, vocab] and the last
    hidden state [1, hidden]."""

    kv: KV
    logits: torch.Tensor
    hidden: torch.Tensor

    @property
    def nbytes(self) -> int:
        return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in self.kv)


class PrefixCache:
    """Byte-bounded LRU map from token-id states to ``CacheEntry``."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.nbytes = 0
        self._entries: OrderedDict[tuple[int, ...], CacheEntry] = OrderedDict()
        self._lengths: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, state: tuple[int, ...]) -> CacheEntry | None:
        entry = self._entries.get(state)
        if entry is not None:
            self._entries.move_to_end(state)
        return entry

    def longest_prefix(self, state: tuple[int, ...]) -> tuple[int, CacheEntry | None]:
        """The longest cached state that is a proper prefix of ``state``."""
        for length in sorted(self._lengths, reverse=True):
            if length < len(state) and (entry := self.get(state[:length])) is not None:
                return length, entry
        return 0, None

    def put(self, state: tuple[int, ...], entry: CacheEntry) -> None:
        if state in self._entries:
            return
        self._entries[state] = entry
        self._lengths[len(state)] = self._lengths.get(len(state), 0) + 1
        self.nbytes += entry.nbytes
        while self.nbytes > self.max_bytes and len(self._entries) > 1:
            old_state, old = self._entries.popitem(last=False)
            self.nbytes -= old.nbytes
            self._lengths[len(old_state)] -= 1
            if not self._lengths[len(old_state)]:
                del self._lengths[len(old_state)]


def _kv_of(cache: DynamicCache) -> KV:
    return [(layer.keys, layer.values) for layer in cache.layers]


def _row(cache: DynamicCache, position: int) -> KV:
    return [
        (k[position : position + 1].clone(), v[position : position + 1].clone()) for k, v in _kv_of(cache)
    ]


class HFPolicy:
    """A transformers causal LM as a ``Policy`` and as a True/False scorer.

    Args:
        model: a loaded ``AutoModelForCausalLM`` in eval mode.
        tokenizer: its tokenizer (a chat template is used when present).
        name: shown in logs and stored with runs.
        cache_bytes: budget of the prefix cache (default 3 GiB).
    """

    backend = "hf"
    """The ``load_policy`` backend name, stored with each run."""

    def __init__(self, model, tokenizer, *, name: str, cache_bytes: int = 3 << 30) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        self.device = next(model.parameters()).device
        self.cache = PrefixCache(cache_bytes)
        self._stats = PolicyStats()
        self.eos_ids = self._eos_ids()
        self.true_ids = self._word_ids(TRUE_WORDS)
        self.false_ids = self._word_ids(FALSE_WORDS)

    # -- prompts -------------------------------------------------------------

    def chat_ids(self, system: str, user: str) -> tuple[int, ...]:
        """Token ids of a chat turn ready for the assistant's reply."""
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

    def reset_cache(self) -> None:
        """Forget every cached state (see ``Components.reset_caches``)."""
        self.cache = PrefixCache(self.cache.max_bytes)

    # -- the model -----------------------------------------------------------

    def _forward(
        self,
        input_ids: torch.Tensor,
        cache: DynamicCache,
        *,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run ``input_ids`` [B, T] after ``cache`` (updated in place); last logits and hidden.

        ``attention_mask`` (over cache and input) and ``position_ids`` are needed
        only when rows are left-padded.
        """
        extra = {}
        if attention_mask is not None:
            extra = {
                "attention_mask": attention_mask.to(self.device),
                "position_ids": position_ids.to(self.device),
            }
        with torch.inference_mode():
            out = self.model(
                input_ids=input_ids.to(self.device),
                cache=cache,
                use_cache=True,
                logits_to_keep=1,
                output_hidden_states=True,
                **extra,
            )
        return out.logits[:, -1, :].float(), out.hidden_states[-1][:, -1, :].float()

    def state_entry(self, state: tuple[int, ...], *, scoring: bool = False) -> CacheEntry:
        """The cached view of ``state``, prefilling only what no cached prefix covers.

        ``scoring`` counts the prefill as the critics' rather than generation's.
        """
        entry = self.cache.get(state)
        if entry is not None:
            self._stats.cached_tokens += len(state)
            return entry
        start, base = self.cache.longest_prefix(state)
        cache = DynamicCache(ddp_cache_data=base.kv) if base is not None else DynamicCache()
        logits, hidden = self._forward(torch.tensor([state[start:]]), cache)
        if scoring:
            self._stats.scoring_prefill_tokens += len(state) - start
        else:
            self._stats.prefill_tokens += len(state) - start
        self._stats.cached_tokens += start
        entry = CacheEntry(_kv_of(cache), logits, hidden)
        self.cache.put(state, entry)
        return entry

    # -- sampling ------------------------------------------------------------

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
        generators = [torch.Generator(self.device).manual_seed(seed)]
        [options] = self._sample(
            [state], [k], generators, termination, max_tokens, temperature, keep_states=True
        )
        return options

    def propose_many(
        self,
        requests: Sequence[ProposeRequest],
        *,
        termination: TerminationFn,
        max_tokens: int,
        temperature: float,
    ) -> list[list[Option]]:
        """``propose`` for several states in one batch: request ``i``'s rows draw
        from the generator ``propose(..., seed=requests[i].seed)`` would seed, so
        they sample what that call would, up to the rounding that left padding
        brings to the logits."""
        return self._sample(
            [request.state for request in requests],
            [request.k for request in requests],
            [torch.Generator(self.device).manual_seed(request.seed) for request in requests],
            termination,
            max_tokens,
            temperature,
            keep_states=True,
        )

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
        generators = [torch.Generator(self.device).manual_seed(seed)]
        return self._sample(
            states, [n] * len(states), generators, termination, max_tokens, temperature, keep_states=False
        )

    def _batch_cache(
        self, entries: list[CacheEntry], counts: list[int]
    ) -> tuple[DynamicCache, torch.Tensor | None]:
        """One cache holding ``counts[i]`` rows of entry ``i``, left-padded to the
        longest state, and the attention mask over it (None when no row is padded)."""
        lengths = [entry.kv[0][0].shape[2] for entry in entries]
        width = max(lengths)
        if len(entries) == 1:
            cache = DynamicCache(ddp_cache_data=entries[0].kv)
            cache.batch_repeat_interleave(counts[0])
            return cache, None
        layers = []
        for layer in range(len(entries[0].kv)):
            keys, values = [], []
            for entry, length, count in zip(entries, lengths, counts, strict=True):
                k, v = entry.kv[layer]
                pad = (0, 0, width - length, 0)
                keys.append(torch.nn.functional.pad(k, pad).expand(count, -1, -1, -1))
                values.append(torch.nn.functional.pad(v, pad).expand(count, -1, -1, -1))
            layers.append((torch.cat(keys), torch.cat(values)))
        mask = torch.tensor(
            [
                [0] * (width - length) + [1] * length
                for length, count in zip(lengths, counts, strict=True)
                for _ in range(count)
            ]
        )
        return DynamicCache(ddp_cache_data=layers), mask

    def _sample(
        self,
        states: Sequence[tuple[int, ...]],
        counts: Sequence[int],
        generators: Sequence[torch.Generator],
        termination: TerminationFn,
        max_tokens: int,
        temperature: float,
        *,
        keep_states: bool,
    ) -> list[list[Option]]:
        """Sample ``counts[i]`` continuations of state ``i``, all rows in one batch.

        States of different lengths are left-padded (masked, with per-row
        positions). ``generators`` holds one generator for all states (the
        rows draw together, as ``complete`` does) or one per state (each
        state's rows draw apart, as its own ``propose`` would). With
        ``keep_states`` each continuation that did not end the solution is fed
        its last token once more and its state is cached for expansion.
        """
        started = time.perf_counter()
        entries = [self.state_entry(state) for state in states]
        cache, mask = self._batch_cache(entries, list(counts))
        owner = [i for i, count in enumerate(counts) for _ in range(count)]
        stream = owner if len(generators) > 1 else [0] * len(owner)
        lengths = [len(states[i]) for i in owner]
        width = max(lengths)
        logits = torch.cat(
            [entry.logits.expand(count, -1) for entry, count in zip(entries, counts, strict=True)]
        )
        total = len(owner)
        tokens: list[list[int]] = [[] for _ in range(total)]
        token_logprobs: list[list[float]] = [[] for _ in range(total)]
        logprobs = [0.0] * total
        reasons: list[str | None] = [None] * total
        stored = [False] * total
        rows = list(range(total))  # batch position -> row
        while True:
            active = [pos for pos, row in enumerate(rows) if reasons[row] is None]
            for index, generator in enumerate(generators):
                drawing = [pos for pos in active if stream[rows[pos]] == index]
                if not drawing:
                    continue
                picked, picked_logprobs = self._draw(logits[drawing], temperature, generator)
                for pos, token, logprob in zip(drawing, picked, picked_logprobs, strict=True):
                    row = rows[pos]
                    tokens[row].append(token)
                    token_logprobs[row].append(logprob)
                    logprobs[row] += logprob
                    reasons[row] = stop_reason(
                        tokens[row],
                        eos_ids=self.eos_ids,
                        termination=termination,
                        decode=self.decode,
                        max_tokens=max_tokens,
                    )
            feed = [
                pos
                for pos, row in enumerate(rows)
                if reasons[row] is None or (keep_states and reasons[row] != "eos" and not stored[row])
            ]
            if not feed:
                break
            if len(feed) < len(rows):
                cache.batch_select_indices(torch.tensor(feed))
                mask = mask[feed] if mask is not None else None
                rows = [rows[pos] for pos in feed]
            last = torch.tensor([[tokens[row][-1]] for row in rows])
            if mask is not None:
                mask = torch.cat([mask, torch.ones(len(rows), 1, dtype=mask.dtype)], dim=1)
                positions = torch.tensor([[lengths[row] + len(tokens[row]) - 1] for row in rows])
                logits, hidden = self._forward(last, cache, attention_mask=mask, position_ids=positions)
            else:
                logits, hidden = self._forward(last, cache)
            for pos, row in enumerate(rows):
                if reasons[row] is not None:
                    kv = [
                        (
                            k[pos : pos + 1, :, width - lengths[row] :].clone(),
                            v[pos : pos + 1, :, width - lengths[row] :].clone(),
                        )
                        for k, v in _kv_of(cache)
                    ]
                    child_state = states[owner[row]] + tuple(tokens[row])
                    self.cache.put(child_state, CacheEntry(kv, logits[pos : pos + 1], hidden[pos : pos + 1]))
                    stored[row] = True
        self._stats.generated_tokens += sum(len(row_tokens) for row_tokens in tokens)
        self._stats.generate_seconds += time.perf_counter() - started
        options = [
            Option.sampled(
                self.decode(tokens[row]), tokens[row], logprobs[row], reasons[row], token_logprobs[row]
            )
            for row in range(total)
        ]
        ends = list(itertools.accumulate(counts))
        return [options[end - count : end] for end, count in zip(ends, counts, strict=True)]

    @staticmethod
    def _draw(
        logits: torch.Tensor, temperature: float, generator: torch.Generator
    ) -> tuple[list[int], list[float]]:
        """Sample one token per row at ``temperature`` (0: the argmax, exactly);
        log-probs at temperature 1."""
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        if temperature == 0:
            picked = logits.argmax(dim=-1)
        else:
            probs = torch.softmax(logits / temperature, dim=-1)
            picked = torch.multinomial(probs, 1, generator=generator).squeeze(1)
        logprobs = torch.log_softmax(logits, dim=-1).gather(1, picked[:, None]).squeeze(1)
        return picked.tolist(), logprobs.tolist()

    # -- scoring -------------------------------------------------------------

    def score_true(self, prompts: Sequence[tuple[str, str]]) -> list[float]:
        """p("True") / (p("True") + p("False")) as the reply to each (system, user) prompt.

        The prompts' common token prefix is read once (and cached); the
        differing tails run as one right-padded batch.
        """
        hidden = self._read_batch([self.chat_ids(system, user) for system, user in prompts])
        with torch.inference_mode():
            head = self.model.get_output_embeddings()
            logits = head(hidden.to(self.device, head.weight.dtype)).float()
        probs = torch.softmax(logits, dim=-1)
        p_true = probs[:, self.true_ids].sum(dim=-1)
        p_false = probs[:, self.false_ids].sum(dim=-1)
        return (p_true / (p_true + p_false).clamp_min(1e-12)).tolist()

    def last_hidden(self, states: Sequence[tuple[int, ...]]) -> torch.Tensor:
        """The final hidden state [len(states), hidden] after reading each state."""
        return self._read_batch(list(states))

    def _read_batch(self, states: list[tuple[int, ...]]) -> torch.Tensor:
        prefix_len = min(len(state) for state in states) - 1
        first = states[0]
        for state in states[1:]:
            same = 0
            while same < prefix_len and state[same] == first[same]:
                same += 1
            prefix_len = same
        if prefix_len > 0:
            cache = DynamicCache(ddp_cache_data=self.state_entry(first[:prefix_len], scoring=True).kv)
            cache.batch_repeat_interleave(len(states))
        else:
            cache = DynamicCache()
        tails = [state[prefix_len:] for state in states]
        width = max(len(tail) for tail in tails)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        # Right padding: a row's real tokens never attend to the pads after them.
        batch = torch.tensor([list(tail) + [pad] * (width - len(tail)) for tail in tails])
        with torch.inference_mode():
            out = self.model(
                input_ids=batch.to(self.device),
                cache=cache,
                use_cache=True,
                logits_to_keep=1,
                output_hidden_states=True,
            )
        self._stats.scoring_prefill_tokens += sum(len(tail) for tail in tails)
        last = torch.tensor([len(tail) - 1 for tail in tails])
        return out.hidden_states[-1][torch.arange(len(states)), last].float()

    # -- set-up --------------------------------------------------------------

    def _eos_ids(self) -> frozenset[int]:
        ids = set()
        for source in (
            self.tokenizer.eos_token_id,
            getattr(self.model.generation_config, "eos_token_id", None),
        ):
            if isinstance(source, int):
                ids.add(source)
            elif source:
                ids.update(source)
        for token in ("<|im_end|>", "<|endoftext|>", "<|eot_id|>"):
            token_id = self.tokenizer.convert_tokens_to_ids(token)
            if isinstance(token_id, int) and token_id != self.tokenizer.unk_token_id:
                ids.add(token_id)
        return frozenset(ids)

    def _word_ids(self, words: Sequence[str]) -> list[int]:
        ids = set()
        for word in words:
            encoded = self.tokenizer(word, add_special_tokens=False)["input_ids"]
            if len(encoded) == 1:
                ids.add(encoded[0])
        if not ids:
            raise ValueError(f"the tokenizer has no single token for any of {list(words)}")
        return sorted(ids)
