"""The ``openai`` backend: any OpenAI-compatible ``/v1/completions`` server.

vLLM serve, SGLang and llama.cpp's servers all speak it. States stay token ids
on this side, tokenized by a local tokenizer of the same model (a GGUF's
vocabulary through a vocab-only llama.cpp, or an HF tokenizer): the servers'
own tokenize/detokenize endpoints are not enough, since llama-cpp-python's
detokenize drops special tokens and the chat prompt would lose its turn
markers. A state is sent as text with its special tokens written out.

Each ``propose`` is one request with ``n`` (servers that ignore ``n``, like
llama-cpp-python's, get more requests until ``n`` samples are in), ``logprobs=1``
and ``seed``. The server cannot run our termination functions, so it samples up
to ``max_tokens`` (or to one of the ``stop`` strings) and the option is cut
where the termination fires, on token boundaries; its log-probs are the
server's per-token ones (computed at temperature 1 by vLLM and llama.cpp).
Prefix caching is the server's business (vLLM's ``--enable-prefix-caching``,
llama.cpp's prompt cache): ``PolicyStats.prefill_tokens`` counts every prompt
token sent, an upper bound on what the server recomputed.

The states of one ``complete`` and the leaves of one ``propose_many`` (a step of
parallel simulations) go out as concurrent requests, up to ``concurrency`` at
once, so a server that batches (vLLM's continuous batching) decodes them
together; each keeps the seed it would get alone, so the results do not depend
on the concurrency.

Connection errors, 429 and 5xx answers are retried with exponential back-off;
a timeout is not (a slow server retried only queues more work). Every failure
is one ``OpenAIServerError`` line naming the fix.
"""

from __future__ import annotations

import errno
import json
import math
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from engine.errors import BackendError
from engine.prompts import FALSE_WORDS, SYSTEM_PROMPT, TRUE_WORDS, hf_chat_text
from engine.types import Option, PolicyStats, ProposeRequest, TerminationFn

_RETRY_STATUS = frozenset({429, 500, 502, 503, 504})


class OpenAIServerError(BackendError):
    """The server is down, too slow, or answers without what we need; one line naming the fix
    (a ``BackendError``, so the CLI prints it as one line)."""


class LocalTokenizer(Protocol):
    """What the client needs from a tokenizer of the served model."""

    eos_ids: frozenset[int]

    def chat_text(self, system: str, user: str) -> str: ...

    def chat_ids(self, system: str, user: str) -> tuple[int, ...]: ...

    def encode(self, text: str) -> tuple[int, ...]: ...

    def decode(self, token_ids: Sequence[int], *, special: bool = False) -> str: ...


class HFTokenizer:
    """A transformers tokenizer as a ``LocalTokenizer``."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        ids = {tokenizer.eos_token_id} if isinstance(tokenizer.eos_token_id, int) else set()
        for token in ("<|im_end|>", "<|endoftext|>", "<|eot_id|>"):
            token_id = tokenizer.convert_tokens_to_ids(token)
            if isinstance(token_id, int) and token_id != tokenizer.unk_token_id:
                ids.add(token_id)
        self.eos_ids = frozenset(ids)

    def chat_text(self, system: str, user: str) -> str:
        return hf_chat_text(self.tokenizer, system, user)

    def chat_ids(self, system: str, user: str) -> tuple[int, ...]:
        return self.encode(self.chat_text(system, user))

    def encode(self, text: str) -> tuple[int, ...]:
        return tuple(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def decode(self, token_ids: Sequence[int], *, special: bool = False) -> str:
        return self.tokenizer.decode(list(token_ids), skip_special_tokens=not special)


class OpenAIPolicy:
    """A model behind an OpenAI-compatible completions server, as a ``Policy``
    and a True/False scorer.

    Args:
        base_url: the server's root, e.g. ``http://127.0.0.1:8000`` (a trailing
            ``/v1`` is accepted).
        tokenizer: a ``LocalTokenizer`` of the served model.
        name: shown in logs and stored with runs.
        model: the ``model`` field sent (a server serving several models needs it).
        timeout: seconds to wait for one answer, > 0.
        retries: extra tries after a connection error, 429 or 5xx, >= 0.
        backoff: seconds before the first retry; doubles each time.
        stop: stop strings sent to the server; safe only where every one of
            them ends an option (it is put back on the option's text).
        sampling: extra request fields; the default turns off the top-k, top-p,
            min-p and repeat penalties some servers apply unasked, so the
            samples follow the model at the given temperature.
        concurrency: requests in flight at once (states of a ``complete``,
            leaves of a ``propose_many``), >= 1.
    """

    backend = "openai"
    """The ``load_policy`` backend name, stored with each run."""

    def __init__(
        self,
        base_url: str,
        *,
        tokenizer: LocalTokenizer,
        name: str,
        model: str | None = None,
        timeout: float = 120.0,
        retries: int = 3,
        backoff: float = 0.5,
        stop: Sequence[str] = (),
        sampling: dict[str, Any] | None = None,
        concurrency: int = 8,
    ) -> None:
        if timeout <= 0 or retries < 0 or backoff < 0 or concurrency < 1:
            raise ValueError("timeout must be > 0, retries >= 0, backoff >= 0 and concurrency >= 1")
        root = base_url.rstrip("/")
        self.base_url = root[: -len("/v1")] if root.endswith("/v1") else root
        self.tokenizer = tokenizer
        self.name = name
        self.model = model
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.stop = list(stop)
        self.sampling = (
            {"top_p": 1.0, "top_k": 0, "min_p": 0.0, "repeat_penalty": 1.0}
            if sampling is None
            else dict(sampling)
        )
        self.eos_ids = tokenizer.eos_ids
        self.concurrency = concurrency
        self._stats = PolicyStats()
        self._stats_lock = threading.Lock()

    # -- prompts -------------------------------------------------------------

    def root_state(self, question: str) -> tuple[int, ...]:
        return self.tokenizer.chat_ids(SYSTEM_PROMPT, question)

    def extend(self, state: tuple[int, ...], text: str) -> tuple[int, ...]:
        return state + self.tokenizer.encode(text)

    def decode(self, token_ids: Sequence[int]) -> str:
        return self.tokenizer.decode(token_ids)

    def stats(self) -> PolicyStats:
        return PolicyStats(**vars(self._stats))

    # -- HTTP ----------------------------------------------------------------

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST JSON, retrying connection errors, 429 and 5xx with back-off."""
        url = self.base_url + path
        if self.model is not None:
            body = {"model": self.model, **body}
        data = json.dumps(body).encode()
        delay = self.backoff
        for attempt in range(self.retries + 1):
            request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    return json.loads(response.read())
            except urllib.error.HTTPError as error:
                detail = error.read().decode("utf-8", errors="replace").strip().replace("\n", " ")[:200]
                if error.code not in _RETRY_STATUS or attempt == self.retries:
                    raise OpenAIServerError(
                        f"{url} answered HTTP {error.code}: {detail or error.reason}; "
                        "check the request fields this server supports and its log"
                    ) from None
            except TimeoutError:
                raise OpenAIServerError(
                    f"{self.base_url} did not answer within {self.timeout:g} s; raise the timeout, "
                    "lower n or max_tokens, or check the server's load"
                ) from None
            except (urllib.error.URLError, ConnectionError) as error:
                reason = getattr(error, "reason", error)
                if isinstance(reason, TimeoutError):
                    raise OpenAIServerError(
                        f"{self.base_url} did not answer within {self.timeout:g} s; raise the timeout, "
                        "lower n or max_tokens, or check the server's load"
                    ) from None
                if attempt == self.retries:
                    raise OpenAIServerError(
                        f"cannot reach {self.base_url}: {_why(reason)}; start the server or fix --base-url"
                    ) from None
            time.sleep(delay)
            delay *= 2
        raise AssertionError("unreachable")

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
        return self._sample([state], k, termination, max_tokens, temperature, seed)[0]

    def propose_many(
        self,
        requests: Sequence[ProposeRequest],
        *,
        termination: TerminationFn,
        max_tokens: int,
        temperature: float,
    ) -> list[list[Option]]:
        """``propose`` for several leaves, sent as concurrent requests; leaf ``i``
        gets exactly what ``propose(..., seed=requests[i].seed)`` would."""
        started = time.perf_counter()
        results = self._together(
            [
                lambda request=request: self._sample_state(
                    request.state, 0, request.k, termination, max_tokens, temperature, request.seed
                )
                for request in requests
            ]
        )
        self._count(generate_seconds=time.perf_counter() - started)
        return results

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
        return self._sample(states, n, termination, max_tokens, temperature, seed)

    def _sample(
        self,
        states: Sequence[tuple[int, ...]],
        n: int,
        termination: TerminationFn,
        max_tokens: int,
        temperature: float,
        seed: int,
    ) -> list[list[Option]]:
        started = time.perf_counter()
        results = self._together(
            [
                lambda index=index, state=state: self._sample_state(
                    state, index, n, termination, max_tokens, temperature, seed
                )
                for index, state in enumerate(states)
            ]
        )
        self._count(generate_seconds=time.perf_counter() - started)
        return results

    def _sample_state(
        self,
        state: tuple[int, ...],
        index: int,
        n: int,
        termination: TerminationFn,
        max_tokens: int,
        temperature: float,
        seed: int,
    ) -> list[Option]:
        """``n`` samples from ``state``, the ``index``-th state of its call."""
        prompt = self.tokenizer.decode(state, special=True)
        options: list[Option] = []
        request = 0
        while len(options) < n:
            body = {
                "prompt": prompt,
                "n": n - len(options),
                "max_tokens": max_tokens,
                "temperature": temperature,
                "seed": seed + 1000 * index + request,
                "logprobs": 1,
                **self.sampling,
            }
            if self.stop:
                body["stop"] = self.stop
            choices = self._post("/v1/completions", body).get("choices") or []
            if not choices:
                raise OpenAIServerError(f"{self.base_url} answered without choices; check the server log")
            self._count(prefill_tokens=len(state))
            options.extend(self._option(choice, termination) for choice in choices[: n - len(options)])
            request += 1
        return options

    def _together(self, calls: list) -> list:
        """Run ``calls`` (no-argument functions) with up to ``concurrency`` in
        flight; their results in order. One call runs on this thread."""
        if len(calls) <= 1 or self.concurrency == 1:
            return [call() for call in calls]
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(calls))) as pool:
            return list(pool.map(lambda call: call(), calls))

    def _count(self, **amounts: float) -> None:
        with self._stats_lock:
            for name, amount in amounts.items():
                setattr(self._stats, name, getattr(self._stats, name) + amount)

    def _option(self, choice: dict[str, Any], termination: TerminationFn) -> Option:
        """The option in one choice: cut where ``termination`` fires."""
        logprobs = choice.get("logprobs") or {}
        pieces = logprobs.get("tokens")
        values = logprobs.get("token_logprobs")
        if pieces is None or values is None:
            raise OpenAIServerError(
                f"{self.base_url} sent no per-token log-probs; use a server that supports `logprobs` "
                "on /v1/completions (vLLM, SGLang, llama.cpp)"
            )
        text = ""
        total = 0.0
        reason: str | None = None
        kept: list[tuple[str, float]] = []
        for piece, value in zip(pieces, values, strict=False):
            text += piece
            kept.append((piece, value if value is not None and math.isfinite(value) else 0.0))
            total += kept[-1][1]
            if reason := termination(text):
                break
        count = len(kept)
        if reason is None:
            finish = choice.get("finish_reason")
            if finish == "stop":
                reason = "eos"
                for stop in self.stop:
                    if fired := termination(text + stop):
                        text, reason = text + stop, fired
                        break
            else:
                reason = "token_cap"
        token_ids = self.tokenizer.encode(text)
        if not token_ids:
            token_ids = (next(iter(sorted(self.eos_ids))),) if reason == "eos" and self.eos_ids else ()
        if not token_ids:
            raise OpenAIServerError(f"{self.base_url} returned an empty completion; check the server log")
        self._count(generated_tokens=count)
        total = min(total, 0.0)
        return Option(
            text=text,
            token_ids=token_ids,
            logprob_sum=total,
            logprob_mean=total / max(count, 1),
            finished=reason == "eos",
            stop_reason=reason,
            token_logprobs=self._token_logprobs(token_ids, kept),
        )

    def _token_logprobs(
        self, token_ids: Sequence[int], kept: Sequence[tuple[str, float]]
    ) -> tuple[float, ...]:
        """The server's per-token log-probs as ``token_ids``' own, where its
        tokens are exactly the local tokenizer's (each id decodes to the
        server's piece); otherwise none, rather than log-probs pinned to the
        wrong tokens (a stop string put back, a character split differently)."""
        pieces = [self.tokenizer.decode([token], special=True) for token in token_ids]
        if pieces != [piece for piece, _ in kept]:
            return ()
        return tuple(value for _, value in kept)

    # -- scoring -------------------------------------------------------------

    def score_true(self, prompts: Sequence[tuple[str, str]]) -> list[float]:
        """p("True") / (p("True") + p("False")) of the first reply token to each
        (system, user) prompt, from the server's top-20 log-probs (0.5 when
        neither word is among them)."""
        scores = []
        for system, user in prompts:
            text = self.tokenizer.chat_text(system, user)
            body = {"prompt": text, "max_tokens": 1, "temperature": 0.0, "logprobs": 20, **self.sampling}
            choices = self._post("/v1/completions", body).get("choices") or []
            top = ((choices[0].get("logprobs") or {}).get("top_logprobs") or [None])[0] if choices else None
            if not top:
                raise OpenAIServerError(
                    f"{self.base_url} sent no top log-probs; use a server that supports `logprobs` "
                    "on /v1/completions (vLLM, SGLang, llama.cpp)"
                )
            self._count(scoring_prefill_tokens=len(self.tokenizer.chat_ids(system, user)))
            p_true = sum(math.exp(top[word]) for word in TRUE_WORDS if word in top)
            p_false = sum(math.exp(top[word]) for word in FALSE_WORDS if word in top)
            scores.append(p_true / (p_true + p_false) if p_true + p_false > 0 else 0.5)
        return scores


def _why(reason: object) -> str:
    if isinstance(reason, ConnectionRefusedError) or getattr(reason, "errno", None) == errno.ECONNREFUSED:
        return "connection refused"
    if isinstance(reason, socket.gaierror):
        return "unknown host"
    return str(reason) or type(reason).__name__
