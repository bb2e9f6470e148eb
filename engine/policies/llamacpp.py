"""The ``llamacpp`` backend: GGUF files on a CPU through ``llama-cpp-python``.

One llama.cpp context holds a few sequences in one shared ("unified") KV
buffer. Sequence 0 holds the state being worked on: reaching a state reuses the
longest common prefix of what it holds (llama.cpp drops the rest with
``llama_memory_seq_rm``, as ``Llama.generate`` does) and evaluates only the
tail. Two byte-bounded LRU maps keep what a later visit needs:

- next-token logits per state, so a state whose tokens are still in the KV
  cache (a node's siblings share it) costs no evaluation at all;
- KV snapshots of the children that a ``propose`` made
  (``llama_state_seq_get_data`` for the child's one sequence, not the whole
  context, restored into sequence 0), so that expanding a child restores its
  cache instead of re-reading its option.

The samples of one state decode together: the state, read once on sequence 0,
is shared with sequences 1..w by ``llama_memory_seq_cp`` (which only tags the
cells: the prefix is stored once), and each step feeds the newest token of
every still-running sample in one ``llama_decode`` batch; afterwards sequences
1..w are dropped, leaving sequence 0 on the state. At most ``max_parallel``
samples run at once, fewer when the KV buffer (``n_ctx`` cells for all
sequences together) could not hold that many continuations of ``max_tokens``;
the rest follow in further rounds. Each sample draws its tokens from the logits
with its own numpy ``Generator`` seeded by (seed, state, sample), so runs are
deterministic under a seed whatever the batching, and every token carries its
log-probability at temperature 1.

``propose_many`` decodes the options of several leaves together (one step of
parallel simulations), each leaf's samples from the streams its own ``propose``
would use. llama.cpp is not batch-invariant: on quantized weights a token's
logits shift slightly with the shape of the batch it is read in, so a leaf
expanded with others may draw other options than alone, and a search with
``parallel_simulations > 1`` may differ from one-at-a-time beyond the
selection order; both stay deterministic under the seed (F32 weights give
the same draws, see tests/test_backend_llamacpp.py).

The value head reads hidden states from this same context (``last_hidden``:
the state's last token is read again with llama.cpp's embedding output on), so
a value critic costs one token per node and no second model; they match the
``hf`` backend's hidden states of the same weights (F32: cosine 1.0, see
tests/test_backend_llamacpp.py).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import time
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from engine.prompts import FALSE_WORDS, SYSTEM_PROMPT, TRUE_WORDS, plain_chat_text
from engine.termination import stop_reason
from engine.types import Option, PolicyStats, ProposeRequest, TerminationFn

_STOP_WORDS = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end|>")


class ByteLRU:
    """LRU map from token-id states to values of known size, bounded in bytes."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.nbytes = 0
        self._entries: OrderedDict[tuple[int, ...], tuple[Any, int]] = OrderedDict()
        self._lengths: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, state: tuple[int, ...]) -> Any | None:
        found = self._entries.get(state)
        if found is None:
            return None
        self._entries.move_to_end(state)
        return found[0]

    def longest_prefix(self, state: tuple[int, ...]) -> tuple[int, Any | None]:
        """The longest stored state that is a prefix of ``state`` (itself included)."""
        for length in sorted(self._lengths, reverse=True):
            if length <= len(state) and (value := self.get(state[:length])) is not None:
                return length, value
        return 0, None

    def put(self, state: tuple[int, ...], value: Any, nbytes: int) -> None:
        if state in self._entries or nbytes > self.max_bytes:
            return
        self._entries[state] = (value, nbytes)
        self._lengths[len(state)] = self._lengths.get(len(state), 0) + 1
        self.nbytes += nbytes
        while self.nbytes > self.max_bytes:
            old_state, (_, old_bytes) = self._entries.popitem(last=False)
            self.nbytes -= old_bytes
            self._lengths[len(old_state)] -= 1
            if not self._lengths[len(old_state)]:
                del self._lengths[len(old_state)]


class GGUFVocab:
    """The tokenizer and chat template of a GGUF model, read by llama.cpp.

    Serves ``LlamaCppPolicy`` and, through a vocab-only ``Llama``, clients of
    remote servers that need the same token ids and prompts.

    Args:
        llama: a ``llama_cpp.Llama`` (``vocab_only=True`` is enough).
    """

    def __init__(self, llama) -> None:
        import llama_cpp

        self.llama = llama
        self.n_vocab = llama.n_vocab()
        self._chat = self._chat_formatter()
        vocab = llama_cpp.llama_model_get_vocab(llama.model)
        ids = {token for token in range(self.n_vocab) if llama_cpp.llama_vocab_is_eog(vocab, token)}
        ids.add(llama.token_eos())
        for word in _STOP_WORDS:
            encoded = llama.tokenize(word.encode(), add_bos=False, special=True)
            if len(encoded) == 1 and self.decode(encoded, special=True) == word:
                ids.add(encoded[0])
        self.eos_ids = frozenset(token for token in ids if token >= 0)
        self.true_ids = self._word_ids(TRUE_WORDS)
        self.false_ids = self._word_ids(FALSE_WORDS)

    def _chat_formatter(self):
        template = self.llama.metadata.get("tokenizer.chat_template")
        if not template:
            return None
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        model = self.llama._model

        def token_text(token: int) -> str:
            return model.token_get_text(token) if token >= 0 else ""

        return Jinja2ChatFormatter(
            template,
            eos_token=token_text(self.llama.token_eos()),
            bos_token=token_text(self.llama.token_bos()),
            add_generation_prompt=True,
        )

    def chat_text(self, system: str, user: str) -> str:
        """A chat turn ready for the assistant's reply, as text with its special
        tokens written out (the GGUF's own template, rendered with jinja2 as
        transformers does; a plain layout when the GGUF has none)."""
        if self._chat is None:
            return plain_chat_text(system, user)
        messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
        return self._chat(messages=messages).prompt

    def chat_ids(self, system: str, user: str) -> tuple[int, ...]:
        return tuple(self.llama.tokenize(self.chat_text(system, user).encode(), add_bos=False, special=True))

    def encode(self, text: str) -> tuple[int, ...]:
        """Ids of plain ``text`` (special-token spellings stay text)."""
        return tuple(self.llama.tokenize(text.encode("utf-8"), add_bos=False, special=False))

    def decode(self, token_ids: Sequence[int], *, special: bool = False) -> str:
        """Text of ``token_ids``; ``special`` writes special tokens out (for prompts)."""
        return self.llama.detokenize(list(token_ids), special=special).decode("utf-8", errors="ignore")

    def _word_ids(self, words: Sequence[str]) -> list[int]:
        ids = set()
        for word in words:
            encoded = self.encode(word)
            if len(encoded) == 1:
                ids.add(encoded[0])
        if not ids:
            raise ValueError(f"the tokenizer has no single token for any of {list(words)}")
        return sorted(ids)


class LlamaCppPolicy:
    """A GGUF model under llama.cpp as a ``Policy`` and as a True/False scorer.

    Args:
        model_path: the ``.gguf`` file.
        name: shown in logs and stored with runs.
        n_ctx: context window in tokens (prompt plus every option of a path).
        n_threads: CPU threads for decoding and prompt reading; None uses half
            the cores, as llama-cpp-python does. More threads than idle cores is
            a trap: llama.cpp's threads spin-wait on each other, and on this
            2-core machine with one other busy process 2 threads decoded 0.6
            tok/s where 1 thread decoded 22.
        seed: llama.cpp's seed (our sampling uses the per-call ``seed``).
        logits_bytes: budget of the per-state logits LRU.
        snapshot_bytes: budget of the per-child KV snapshots; 0 turns them off.
        max_parallel: samples decoded together in one batch (each on its own
            llama.cpp sequence), of one state or of several (rollouts,
            ``propose_many``); 1 decodes them one after another.
        rubric_sequences: sequences kept for the True/False critics'
            prompts (``score_true``), apart from the policy's: a prompt is read
            on the one holding the longest prefix of it (extending it, or
            starting a free or least recently used one from a shared copy of
            that prefix, so the other branch stays cached), and never evicts the
            policy's state. 0 reads the prompts on sequence 0, as sampling does.
    """

    backend = "llamacpp"
    """The ``load_policy`` backend name, stored with each run."""

    def __init__(
        self,
        model_path: str | Path,
        *,
        name: str,
        n_ctx: int = 8192,
        n_threads: int | None = None,
        seed: int = 0,
        logits_bytes: int = 256 << 20,
        snapshot_bytes: int = 1 << 30,
        max_parallel: int = 8,
        rubric_sequences: int = 4,
    ) -> None:
        import llama_cpp
        from llama_cpp import _internals

        self._llama_cpp = llama_cpp
        # Sequence 0 holds the state; one batch row per sample within Llama's n_batch.
        limit = min(llama_cpp.llama_max_parallel_sequences() - 1, n_ctx, 512)
        if not 1 <= max_parallel <= limit:
            raise ValueError(f"max_parallel must be in [1, {limit}], got {max_parallel}")
        if not 0 <= rubric_sequences <= 8:
            raise ValueError(f"rubric_sequences must be in [0, 8], got {rubric_sequences}")
        threads = n_threads or max(1, (os.cpu_count() or 1) // 2)
        self.llama = llama_cpp.Llama(
            model_path=str(model_path),
            n_ctx=n_ctx,
            logits_all=False,
            verbose=False,
            seed=seed,
            n_threads=threads,
            n_threads_batch=threads,
        )
        self._open_context(max_parallel + 1 + rubric_sequences)
        self.max_parallel = max_parallel
        self.rubric_sequences = rubric_sequences
        self._batch = _internals.LlamaBatch(n_tokens=max_parallel, embd=0, n_seq_max=1, verbose=False)
        self._prompt_batch = _internals.LlamaBatch(
            n_tokens=self.llama.n_batch, embd=0, n_seq_max=1, verbose=False
        )
        # The tokens each rubric sequence holds (sequence max_parallel + 1 + i), and when each was last used.
        self._held: list[list[int]] = [[] for _ in range(rubric_sequences)]
        self._used = [0] * rubric_sequences
        self.name = name
        self.n_vocab = self.llama.n_vocab()
        self.n_ctx = n_ctx
        self.logits = ByteLRU(logits_bytes)
        self.snapshots = ByteLRU(snapshot_bytes)
        self._kv: list[int] = []  # the tokens whose keys/values sequence 0 holds, in order
        self._stats = PolicyStats()
        self.vocab = GGUFVocab(self.llama)
        self.eos_ids = self.vocab.eos_ids

    # -- prompts -------------------------------------------------------------

    def chat_ids(self, system: str, user: str) -> tuple[int, ...]:
        """Token ids of a chat turn ready for the assistant's reply."""
        return self.vocab.chat_ids(system, user)

    def root_state(self, question: str) -> tuple[int, ...]:
        return self.vocab.chat_ids(SYSTEM_PROMPT, question)

    def extend(self, state: tuple[int, ...], text: str) -> tuple[int, ...]:
        return state + self.vocab.encode(text)

    def decode(self, token_ids: Sequence[int]) -> str:
        return self.vocab.decode(token_ids)

    def stats(self) -> PolicyStats:
        return PolicyStats(**vars(self._stats))

    # -- the KV cache --------------------------------------------------------

    def _open_context(self, n_seq: int) -> None:
        """Replace the one-sequence context ``Llama`` made (its constructor has no
        say in this) by one with ``n_seq`` sequences in one unified KV buffer.

        Unified, ``n_ctx`` cells serve all sequences together and a copied prefix
        is stored once; split per sequence, each would get ``n_ctx / n_seq``
        cells and a copy would duplicate them.
        """
        from llama_cpp import _internals
        from llama_cpp._utils import suppress_stdout_stderr

        llama = self.llama
        params = llama.context_params
        params.n_seq_max = n_seq
        params.kv_unified = True
        llama._ctx.close()  # free the old KV buffer before allocating the new one
        with suppress_stdout_stderr(disable=llama.verbose):
            context = _internals.LlamaContext(model=llama._model, params=params, verbose=llama.verbose)
        llama._ctx = llama._stack.enter_context(contextlib.closing(context))
        self._cells = self._llama_cpp.llama_n_ctx(context.ctx)

    def reset_cache(self) -> None:
        """Forget every cached state: the live KV cache, logits and snapshots
        (for cold-cache measurements, or after using ``self.llama`` directly)."""
        self.llama.reset()
        self.llama._ctx.kv_cache_clear()
        self._kv = []
        self._held = [[] for _ in self._held]
        self.logits = ByteLRU(self.logits.max_bytes)
        self.snapshots = ByteLRU(self.snapshots.max_bytes)

    def _truncate(self, length: int) -> None:
        """Cut sequence 0 back to its first ``length`` tokens."""
        if length < len(self._kv):
            self.llama._ctx.kv_cache_seq_rm(0, length, -1)
            del self._kv[length:]

    def _eval(self, tokens: Sequence[int]) -> np.ndarray:
        """Append ``tokens`` to the cached sequence; the logits after the last one."""
        if len(self._kv) + len(tokens) > self.n_ctx:
            raise ValueError(
                f"a state of {len(self._kv) + len(tokens)} tokens exceeds n_ctx={self.n_ctx}; "
                "raise n_ctx or lower the search's token caps"
            )
        self.llama.n_tokens = len(self._kv)
        self.llama.eval(list(tokens))
        self._kv.extend(tokens)
        pointer = self.llama._ctx.get_logits_ith(-1)
        return np.ctypeslib.as_array(pointer, shape=(self.n_vocab,)).copy()

    def _snapshot(self, seq: int) -> bytes:
        """The KV cells of sequence ``seq``; they restore into any sequence."""
        llama_cpp = self._llama_cpp
        ctx = self.llama._ctx.ctx
        size = llama_cpp.llama_state_seq_get_size(ctx, seq)
        buffer = (ctypes.c_uint8 * size)()
        written = llama_cpp.llama_state_seq_get_data(ctx, buffer, size, seq)
        return bytes(buffer)[:written]

    def _restore(self, state: tuple[int, ...], data: bytes) -> None:
        """Make sequence 0 hold ``state`` from its snapshot (taken from any sequence)."""
        llama_cpp = self._llama_cpp
        self._truncate(0)
        buffer = (ctypes.c_uint8 * len(data)).from_buffer_copy(data)
        if not llama_cpp.llama_state_seq_set_data(self.llama._ctx.ctx, buffer, len(data), 0):
            raise RuntimeError("llama.cpp could not restore a KV snapshot")
        self._kv = list(state)

    def _common_prefix(self, state: tuple[int, ...]) -> int:
        return _common(self._kv, state)

    def state_logits(self, state: tuple[int, ...], *, scoring: bool = False) -> np.ndarray:
        """Leave the KV cache holding exactly ``state``; the next-token logits.

        Evaluates only what neither the live cache nor a snapshot covers;
        ``scoring`` counts that work as the critics' rather than generation's.
        """
        if not state:
            raise ValueError("a state needs at least one token")
        same = self._common_prefix(state)
        logits = self.logits.get(state)
        if logits is None or same < len(state):
            length, snapshot = self.snapshots.longest_prefix(state)
            if snapshot is not None and length > same:
                self._restore(state[:length], snapshot)
                same = length
        if logits is not None and same == len(state):
            self._truncate(len(state))
            self._stats.cached_tokens += len(state)
            return logits
        # Logits come from a decode, so at least the last token is evaluated.
        start = min(same, len(state) - 1)
        self._truncate(start)
        logits = self._eval(state[start:])
        if scoring:
            self._stats.scoring_prefill_tokens += len(state) - start
        else:
            self._stats.prefill_tokens += len(state) - start
        self._stats.cached_tokens += start
        self.logits.put(state, logits, logits.nbytes)
        return logits

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
        return self._sample(
            [(state, _streams(seed, 0, k))], termination, max_tokens, temperature, keep_states=True
        )[0]

    def propose_many(
        self,
        requests: Sequence[ProposeRequest],
        *,
        termination: TerminationFn,
        max_tokens: int,
        temperature: float,
    ) -> list[list[Option]]:
        """``propose`` for several states at once: their samples decode together,
        request ``i``'s from the streams ``propose(..., seed=requests[i].seed)``
        uses (see the module docstring on quantized weights)."""
        return self._sample(
            [(request.state, _streams(request.seed, 0, request.k)) for request in requests],
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
        return self._sample(
            [(state, _streams(seed, index, n)) for index, state in enumerate(states)],
            termination,
            max_tokens,
            temperature,
            keep_states=False,
        )

    def _sample(
        self,
        requests: Sequence[tuple[tuple[int, ...], Sequence[np.random.Generator]]],
        termination: TerminationFn,
        max_tokens: int,
        temperature: float,
        *,
        keep_states: bool,
    ) -> list[list[Option]]:
        """One continuation of each request's state per generator of the request,
        up to ``max_parallel`` at once.

        Samples decode together across states (``_decode_together``): each
        state in a batch is read once on sequence 0 and copied to the sequences
        of its samples, so the options or rollouts of several leaves share
        every decode step. With ``keep_states`` a continuation that did not end the solution
        has its last token evaluated too, and the child's logits and KV snapshot
        are kept, so expanding the child later evaluates nothing.
        """
        started = time.perf_counter()
        jobs = [
            (index, state, generator)
            for index, (state, generators) in enumerate(requests)
            for generator in generators
        ]
        results: list[list[Option]] = [[] for _ in requests]
        while jobs:
            batch = self._next_batch(jobs, max_tokens)
            jobs = jobs[len(batch) :]
            options = self._decode_together(
                [(state, generator) for _, state, generator in batch],
                termination,
                max_tokens,
                temperature,
                keep_states,
            )
            for (index, _, _), option in zip(batch, options, strict=True):
                results[index].append(option)
        self._stats.generate_seconds += time.perf_counter() - started
        return results

    def _next_batch(self, jobs: list, max_tokens: int) -> list:
        """The longest head of ``jobs`` (each ``(index, state, generator)``) that
        decodes at once: at most ``max_parallel`` samples, and no more than the
        shared KV buffer holds — each distinct state once, plus ``max_tokens``
        per sample (at least one job: a lone sample may run up to ``n_ctx``)."""
        batch: list = []
        states: set[tuple[int, ...]] = set()
        cells = 0
        free = self._cells - self._rubric_cells()
        for job in jobs:
            state = job[1]
            needed = cells + (0 if state in states else len(state)) + min(max_tokens, self.n_ctx - len(state))
            if batch and (len(batch) == self.max_parallel or needed > free):
                break
            batch.append(job)
            states.add(state)
            cells = needed
        if cells > free:  # a lone long sample: the rubrics' prompts make room
            self._drop_rubrics()
        return batch

    def _decode_together(
        self,
        samples: Sequence[tuple[tuple[int, ...], np.random.Generator]],
        termination: TerminationFn,
        max_tokens: int,
        temperature: float,
        keep_states: bool,
    ) -> list[Option]:
        """One continuation per ``(state, generator)``, sample ``j`` on sequence
        ``j + 1``: each distinct state is read on sequence 0 and copied to its
        samples' sequences, then the newest tokens of the samples still running
        go through the model in one batch per step."""
        count = len(samples)
        memory = self.llama._ctx.memory
        tokens: list[list[int]] = [[] for _ in range(count)]
        token_logprobs: list[list[float]] = [[] for _ in range(count)]
        logprob_sums = [0.0] * count
        reasons: list[str | None] = [None] * count
        rows: list[np.ndarray] = []
        loaded: tuple[int, ...] | None = None
        for sample, (state, _) in enumerate(samples):
            if state != loaded:
                logits, loaded = self.state_logits(state), state
            else:  # another sample of the state just read: as if it asked for it again
                self._stats.cached_tokens += len(state)
            rows.append(logits)
            self._llama_cpp.llama_memory_seq_cp(memory, 0, sample + 1, -1, -1)
        try:
            running = list(range(count))
            while running:
                feed = []
                for sample in running:
                    token, logprob = _draw(rows[sample], temperature, samples[sample][1])
                    tokens[sample].append(token)
                    token_logprobs[sample].append(logprob)
                    logprob_sums[sample] += logprob
                    reason = stop_reason(
                        tokens[sample],
                        eos_ids=self.eos_ids,
                        termination=termination,
                        decode=self.decode,
                        max_tokens=max_tokens,
                    )
                    reasons[sample] = reason
                    if reason is None or (keep_states and reason != "eos"):
                        feed.append(sample)
                if not feed:
                    break
                fed = self._decode_step(
                    [(s + 1, tokens[s][-1], len(samples[s][0]) + len(tokens[s]) - 1) for s in feed]
                )
                for sample, row in zip(feed, fed, strict=True):
                    rows[sample] = row
                    if reasons[sample] is not None:  # a child to keep: its logits and cache
                        child = samples[sample][0] + tuple(tokens[sample])
                        self.logits.put(child, row, row.nbytes)
                        if self.snapshots.max_bytes > 0:
                            snapshot = self._snapshot(sample + 1)
                            self.snapshots.put(child, snapshot, len(snapshot))
                running = [sample for sample in feed if reasons[sample] is None]
        finally:
            for sample in range(count):
                self._llama_cpp.llama_memory_seq_rm(memory, sample + 1, -1, -1)
        self._stats.generated_tokens += sum(len(sample_tokens) for sample_tokens in tokens)
        return [
            Option.sampled(self.decode(sample_tokens), sample_tokens, logprob_sum, reason, sample_logprobs)
            for sample_tokens, logprob_sum, reason, sample_logprobs in zip(
                tokens, logprob_sums, reasons, token_logprobs, strict=True
            )
        ]

    def _decode_step(self, feed: Sequence[tuple[int, int, int]]) -> list[np.ndarray]:
        """Evaluate one (sequence, token, position) per row in one ``llama_decode``;
        the next-token logits of each row."""
        for _, _, position in feed:
            if position >= self.n_ctx:
                raise ValueError(
                    f"a state of {position + 1} tokens exceeds n_ctx={self.n_ctx}; "
                    "raise n_ctx or lower the search's token caps"
                )
        batch = self._batch.batch
        batch.n_tokens = len(feed)
        for row, (seq, token, position) in enumerate(feed):
            batch.token[row] = token
            batch.pos[row] = position
            batch.n_seq_id[row] = 1
            batch.seq_id[row][0] = seq
            batch.logits[row] = True
        context = self.llama._ctx
        context.decode(self._batch)
        self._stats.decode_steps += 1
        self._stats.decode_rows += len(feed)
        return [
            np.ctypeslib.as_array(context.get_logits_ith(row), shape=(self.n_vocab,)).copy()
            for row in range(len(feed))
        ]

    # -- scoring -------------------------------------------------------------

    def last_hidden(self, states: Sequence[tuple[int, ...]]):
        """The final hidden state (after the last norm, the input of the output
        layer: what the ``hf`` backend's ``last_hidden`` gives) after each state,
        shape ``(len(states), n_embd)``, so a value head rides the policy's own
        KV cache: each state is brought into the cache as for sampling, then its
        last token is read once more with llama.cpp's embedding output on."""
        import torch

        llama_cpp = self._llama_cpp
        ctx = self.llama._ctx.ctx
        width = self.llama.n_embd()
        rows = []
        for state in states:
            self.state_logits(state, scoring=True)
            self._truncate(len(state) - 1)
            llama_cpp.llama_set_embeddings(ctx, True)
            try:
                self.llama.n_tokens = len(self._kv)
                self.llama.eval([state[-1]])
                self._kv.append(state[-1])
                pointer = llama_cpp.llama_get_embeddings_ith(ctx, -1)
                if not pointer:
                    raise RuntimeError("llama.cpp returned no hidden state for this model")
                rows.append(np.ctypeslib.as_array(pointer, shape=(width,)).copy())
            finally:
                llama_cpp.llama_set_embeddings(ctx, False)
            self._stats.scoring_prefill_tokens += 1
        return torch.from_numpy(np.stack(rows)) if rows else torch.empty(0, width)

    def score_true(self, prompts: Sequence[tuple[str, str]]) -> list[float]:
        """p("True") / (p("True") + p("False")) as the reply to each (system, user) prompt.

        Prompts are read one after another; the KV cache keeps their common
        prefix, so only each prompt's differing tail is evaluated.
        """
        scores = []
        for system, user in prompts:
            ids = self.chat_ids(system, user)
            logits = (
                self._rubric_logits(ids) if self.rubric_sequences else self.state_logits(ids, scoring=True)
            )
            probs = _softmax(logits)
            p_true = float(probs[self.vocab.true_ids].sum())
            p_false = float(probs[self.vocab.false_ids].sum())
            scores.append(p_true / max(p_true + p_false, 1e-12))
        return scores

    def _rubric_logits(self, ids: tuple[int, ...]) -> np.ndarray:
        """The next-token logits after critic prompt ``ids``, read on a rubric
        sequence from where the longest cached prefix of it ends."""
        memory = self.llama._ctx.memory
        base = self.max_parallel + 1
        shared = [_common(held, ids[:-1]) for held in self._held]  # the last token is read for its logits
        best = max(range(len(self._held)), key=lambda i: (shared[i], self._used[i]))
        same = shared[best]
        slot = best
        if same < len(self._held[best]) and len(self._held) > 1:
            # Keep the best's other branch: continue on the least recently used
            # other sequence, from a copy of the shared prefix (cells are shared, not copied).
            slot = min((i for i in range(len(self._held)) if i != best), key=lambda i: self._used[i])
            self._llama_cpp.llama_memory_seq_rm(memory, base + slot, -1, -1)
            if same:
                self._llama_cpp.llama_memory_seq_cp(memory, base + best, base + slot, 0, same)
            self._held[slot] = self._held[best][:same]
        self._llama_cpp.llama_memory_seq_rm(memory, base + slot, same, -1)
        del self._held[slot][same:]
        if len(self._kv) + self._rubric_cells() + len(ids) - same > self._cells:
            self._drop_rubrics(keep=slot)
            self._truncate(0)
        logits = self._read_prompt(base + slot, ids[same:], start=same)
        self._held[slot].extend(ids[same:])
        self._used[slot] = max(self._used) + 1
        self._stats.scoring_prefill_tokens += len(ids) - same
        self._stats.cached_tokens += same
        return logits

    def _read_prompt(self, seq: int, tokens: Sequence[int], *, start: int) -> np.ndarray:
        """Evaluate ``tokens`` at positions ``start``.. on sequence ``seq``, in
        chunks of ``n_batch``; the logits after the last one."""
        if start + len(tokens) > self.n_ctx:
            raise ValueError(
                f"a prompt of {start + len(tokens)} tokens exceeds n_ctx={self.n_ctx}; raise n_ctx"
            )
        batch = self._prompt_batch.batch
        size = self.llama.n_batch
        context = self.llama._ctx
        for offset in range(0, len(tokens), size):
            chunk = tokens[offset : offset + size]
            batch.n_tokens = len(chunk)
            for row, token in enumerate(chunk):
                batch.token[row] = token
                batch.pos[row] = start + offset + row
                batch.n_seq_id[row] = 1
                batch.seq_id[row][0] = seq
                batch.logits[row] = offset + row == len(tokens) - 1
            context.decode(self._prompt_batch)
        return np.ctypeslib.as_array(context.get_logits_ith(len(chunk) - 1), shape=(self.n_vocab,)).copy()

    def _rubric_cells(self) -> int:
        """Cells the rubric sequences may hold (an upper bound: copied prefixes share cells)."""
        return sum(len(held) for held in self._held)

    def _drop_rubrics(self, keep: int | None = None) -> None:
        """Free the rubric sequences' cells (but slot ``keep``'s)."""
        for slot in range(len(self._held)):
            if slot != keep:
                self._llama_cpp.llama_memory_seq_rm(
                    self.llama._ctx.memory, self.max_parallel + 1 + slot, -1, -1
                )
                self._held[slot] = []


def _common(held: Sequence[int], ids: Sequence[int]) -> int:
    """Length of the common prefix of ``held`` and ``ids``."""
    same = 0
    for cached, token in zip(held, ids, strict=False):
        if cached != token:
            break
        same += 1
    return same


def _streams(seed: int, index: int, count: int) -> list[np.random.Generator]:
    """The random streams of ``count`` samples of the ``index``-th state of a call seeded ``seed``."""
    return [np.random.default_rng([seed, index, sample]) for sample in range(count)]


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max())
    return shifted / shifted.sum()


def _draw(logits: np.ndarray, temperature: float, generator: np.random.Generator) -> tuple[int, float]:
    """One token at ``temperature`` (0 = greedy); its log-prob at temperature 1."""
    logits = logits.astype(np.float64)
    log_norm = logits.max() + np.log(np.exp(logits - logits.max()).sum())
    if temperature <= 0:
        token = int(np.argmax(logits))
    else:
        probs = _softmax(logits / temperature)
        token = int(np.searchsorted(np.cumsum(probs), generator.random() * probs.sum(), side="right"))
        token = min(token, len(probs) - 1)
    return token, float(logits[token] - log_norm)
