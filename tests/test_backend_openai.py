"""The ``openai`` backend against a real llama-cpp-python server serving
``smollm2-135m`` on 127.0.0.1, and its errors when a server is down, silent,
flaky, or answers without log-probs."""

from __future__ import annotations

import http.server
import importlib.util
import json
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator

import pytest

from engine.critics.generative import GenerativeORM
from engine.models import gguf_path, resolve_model
from engine.policies import load_policy
from engine.policies.openai_compat import OpenAIPolicy, OpenAIServerError
from engine.termination import make_termination
from engine.types import TrajectoryRequest

MODEL = "smollm2-135m"
QUESTION = "Tom has 3 bags with 5 apples each. How many apples does he have?"
NEWLINE = make_termination(["newline"])

needs_llama = pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None,
    reason="llama-cpp-python is not installed (the [cpu] extra)",
)
needs_server = pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None
    or importlib.util.find_spec("fastapi") is None
    or importlib.util.find_spec("sse_starlette") is None,
    reason="llama-cpp-python's server extra is not installed (pip install 'llama-cpp-python[server]')",
)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[str]:
    port = _free_port()
    model = gguf_path(resolve_model(MODEL))
    command = [sys.executable, "-m", "llama_cpp.server", "--model", str(model)]
    command += ["--host", "127.0.0.1", "--port", str(port), "--n_ctx", "1024"]
    # A file, not a pipe: the server logs more than a pipe holds and would block on it.
    log = (tmp_path_factory.mktemp("server") / "server.log").open("w+b")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            if process.poll() is not None:
                log.seek(0)
                pytest.fail(f"the server exited: {log.read().decode(errors='replace')[-500:]}")
            try:
                with urllib.request.urlopen(base_url + "/v1/models", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("the server did not become ready within 90 s")
            time.sleep(0.3)
        yield base_url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


@pytest.fixture(scope="module")
def policy(server):
    return load_policy(MODEL, backend="openai", base_url=server, timeout=60)


@pytest.mark.slow
@needs_server
def test_propose_against_a_real_server(policy) -> None:
    state = policy.root_state(QUESTION)
    options = policy.propose(state, k=3, termination=NEWLINE, max_tokens=12, temperature=0.8, seed=7)
    assert len(options) == 3
    for option in options:
        assert option.token_ids and option.logprob_sum <= 0
        assert option.logprob_mean == pytest.approx(option.logprob_sum / max(1, len(option.token_ids)), rel=1)
        assert option.stop_reason in ("newline", "token_cap", "eos")
        if option.stop_reason == "newline":
            assert "\n" in option.text and not option.text.rstrip("\n").count("\n") > 1
    # The local GGUF tokenizer is the server's own: every option keeps its per-token log-probs.
    assert all(len(o.token_logprobs) == len(o.token_ids) for o in options), [o.text for o in options]
    assert [sum(o.token_logprobs) for o in options] == pytest.approx([o.logprob_sum for o in options])
    again = policy.propose(state, k=3, termination=NEWLINE, max_tokens=12, temperature=0.8, seed=7)
    assert [o.text for o in again] == [o.text for o in options], "same seed, different options"
    stats = policy.stats()
    assert stats.generated_tokens > 0 and stats.prefill_tokens >= 2 * len(state)


@pytest.mark.slow
@needs_server
def test_complete_and_score_true_against_a_real_server(policy) -> None:
    root = policy.root_state(QUESTION)
    states = [root, policy.extend(root, "3 * 5 = 15\n")]
    results = policy.complete(states, n=2, termination=NEWLINE, max_tokens=6, temperature=1.0, seed=1)
    assert [len(options) for options in results] == [2, 2]
    scores = GenerativeORM(policy).score_outcomes(
        [
            TrajectoryRequest(QUESTION, ("3 * 5 = 15\n", "The answer is 15.\n"), finished=True),
            TrajectoryRequest(QUESTION, ("3 * 5 = 14\n", "The answer is 14.\n"), finished=True),
        ]
    )
    assert len(scores) == 2 and all(0.0 <= score <= 1.0 for score in scores)


class _Scripted(http.server.BaseHTTPRequestHandler):
    """Answers each POST with the next (status, body) of the server's script."""

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        status, body = self.server.script.pop(0)
        self.server.requests += 1
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def scripted() -> Iterator[http.server.HTTPServer]:
    server = http.server.HTTPServer(("127.0.0.1", 0), _Scripted)
    server.script, server.requests = [], 0
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


class _Tokenizer:
    eos_ids = frozenset({0})

    def chat_text(self, system: str, user: str) -> str:
        return f"{system}\n{user}\n"

    def chat_ids(self, system: str, user: str) -> tuple[int, ...]:
        return self.encode(self.chat_text(system, user))

    def encode(self, text: str) -> tuple[int, ...]:
        return tuple(ord(char) for char in text)

    def decode(self, token_ids, *, special: bool = False) -> str:
        return "".join(chr(token) for token in token_ids)


def _client(url: str, **options) -> OpenAIPolicy:
    return OpenAIPolicy(url, tokenizer=_Tokenizer(), name="t", **options)


def _choice(tokens: list[str], logprobs: list[float] | None, finish: str = "length") -> dict:
    lp = None if logprobs is None else {"tokens": tokens, "token_logprobs": logprobs, "top_logprobs": None}
    return {"text": "".join(tokens), "logprobs": lp, "finish_reason": finish}


def test_server_down_is_one_line_naming_the_fix() -> None:
    port = _free_port()
    client = _client(f"http://127.0.0.1:{port}", retries=2, backoff=0.01)
    with pytest.raises(OpenAIServerError) as error:
        client.propose((65,), k=1, termination=NEWLINE, max_tokens=4, temperature=1.0, seed=0)
    assert str(error.value) == (
        f"cannot reach http://127.0.0.1:{port}: connection refused; start the server or fix --base-url"
    )


def test_a_server_that_never_answers_times_out() -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)  # accepts connections (backlog) and never answers
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        client = _client(url, timeout=0.5, retries=3)
        started = time.monotonic()
        with pytest.raises(OpenAIServerError, match=r"did not answer within 0.5 s; raise the timeout"):
            client.score_true([("s", "u")])
        assert time.monotonic() - started < 3, "a timeout must not be retried"


def test_5xx_is_retried_then_the_answer_is_cut_at_the_termination(scripted) -> None:
    tokens, logprobs = ["4", " *", " 6\n", "Next"], [-0.5, -0.25, -0.25, -1.0]
    scripted.script += [(503, {"error": "busy"}), (200, {"choices": [_choice(tokens, logprobs)]})]
    client = _client(f"http://127.0.0.1:{scripted.server_port}", retries=2, backoff=0.01)
    (option,) = client.propose((65,), k=1, termination=NEWLINE, max_tokens=8, temperature=1.0, seed=0)
    assert scripted.requests == 2
    assert option.text == "4 * 6\n" and option.stop_reason == "newline"
    assert option.logprob_sum == pytest.approx(-1.0) and option.logprob_mean == pytest.approx(-1.0 / 3)
    assert option.token_logprobs == (), "the server's 3 tokens are not the local tokenizer's 6"


def test_per_token_logprobs_are_kept_where_the_servers_tokens_are_the_local_ones(scripted) -> None:
    tokens, logprobs = ["4", "*", "6", "\n", "Next"], [-0.5, -0.25, None, -0.125, -1.0]
    scripted.script += [(200, {"choices": [_choice(tokens, logprobs)]})]
    client = _client(f"http://127.0.0.1:{scripted.server_port}")
    (option,) = client.propose((65,), k=1, termination=NEWLINE, max_tokens=8, temperature=1.0, seed=0)
    assert option.text == "4*6\n" and option.token_ids == (52, 42, 54, 10)
    assert option.token_logprobs == (-0.5, -0.25, 0.0, -0.125), "a missing log-prob counts 0, as in the sum"
    assert sum(option.token_logprobs) == option.logprob_sum


def test_an_answer_without_logprobs_is_a_clear_error(scripted) -> None:
    scripted.script += [(200, {"choices": [_choice(["4"], None)]})]
    client = _client(f"http://127.0.0.1:{scripted.server_port}")
    with pytest.raises(OpenAIServerError, match="sent no per-token log-probs; use a server that supports"):
        client.propose((65,), k=1, termination=NEWLINE, max_tokens=8, temperature=1.0, seed=0)


def test_a_4xx_is_not_retried(scripted) -> None:
    scripted.script += [(400, {"error": "bad field"}), (200, {})]
    client = _client(f"http://127.0.0.1:{scripted.server_port}", retries=3, backoff=0.01)
    with pytest.raises(OpenAIServerError, match="answered HTTP 400"):
        client.score_true([("s", "u")])
    assert scripted.requests == 1


@needs_llama
def test_load_policy_builds_the_client_with_the_gguf_tokenizer() -> None:
    port = _free_port()
    policy = load_policy(MODEL, backend="openai", base_url=f"http://127.0.0.1:{port}/v1/", retries=0)
    assert policy.base_url == f"http://127.0.0.1:{port}"
    state = policy.root_state(QUESTION)
    assert policy.tokenizer.decode(state, special=True).count("<|im_start|>") == 3
    with pytest.raises(OpenAIServerError, match="connection refused"):
        policy.score_true([("s", "u")])


class _Echo(http.server.BaseHTTPRequestHandler):
    """Answers ``n`` choices that spell the request's seed and sample number after
    a short wait, counting the requests in flight at once."""

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        with self.server.lock:
            self.server.in_flight += 1
            self.server.most = max(self.server.most, self.server.in_flight)
        time.sleep(0.2)
        choices = [
            _choice([f"s{body['seed']}", f"-{i}", f"-{len(body['prompt'])}\n"], [-0.1, -0.1, -0.1])
            for i in range(body["n"])
        ]
        payload = json.dumps({"choices": choices}).encode()
        with self.server.lock:
            self.server.in_flight -= 1
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args) -> None:
        pass


def test_leaves_and_states_go_out_together_with_the_seeds_they_get_alone() -> None:
    from engine.types import ProposeRequest

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    server.lock, server.in_flight, server.most = threading.Lock(), 0, 0
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}"
        leaves = [ProposeRequest(state=(65,) * (i + 1), k=2, seed=10 * i) for i in range(4)]
        step = dict(termination=NEWLINE, max_tokens=8, temperature=1.0)
        together = _client(url).propose_many(leaves, **step)
        assert server.most >= 2, "the leaves were sent one after another"
        alone = [_client(url).propose(leaf.state, k=leaf.k, seed=leaf.seed, **step) for leaf in leaves]
        assert [[o.text for o in options] for options in together] == [[o.text for o in a] for a in alone]
        server.most = 0
        states = [leaf.state for leaf in leaves]
        serial = _client(url, concurrency=1).complete(states, n=2, seed=3, **step)
        assert server.most == 1
        parallel = _client(url).complete(states, n=2, seed=3, **step)
        assert [[o.text for o in x] for x in parallel] == [[o.text for o in x] for x in serial]
        client = _client(url)
        client.complete(states, n=2, seed=3, **step)
        assert client.stats().prefill_tokens == sum(len(state) for state in states)
    finally:
        server.shutdown()
        server.server_close()
    with pytest.raises(ValueError, match="concurrency >= 1"):
        _client(url, concurrency=0)
