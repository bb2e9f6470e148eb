"""The node detail's token view under ``AppTest``: tokens coloured by their
stored log-probs, hostile model text shown literally, nodes stored before
schema 4 and models without a local tokenizer explained, and the DPO-reward
control (no DPO round; a round computed once on demand; a failure)."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlmodel import Session
from streamlit.testing.v1 import AppTest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from app import token_view
from engine.errors import CanopyError
from store.db import make_engine
from store.iterations import Checkpoints, IterationMetrics
from store.schema import Iteration, Node, Problem, Run, Tree

ROOT = Path(__file__).resolve().parent.parent
MAIN = str(ROOT / "app" / "main.py")
HOSTILE = "<script>window.__pwned = 'yes'</script> **bold** <b>b</b> 😀 done\n"
"""An option whose text is markup, Markdown and a four-byte character at once."""


@dataclass
class TokenStore:
    url: str
    tree_id: int
    hostile: int
    """Node with token ids and log-probs (the hostile option)."""
    old: int
    """Node with token ids but no log-probs (stored before schema 4)."""
    bare: int
    """Node without token ids."""
    untokenized_tree: int
    """A tree whose run's model has no tokenizer on this machine."""
    token_ids: tuple[int, ...]
    logprobs: tuple[float, ...]


def _tokenizer(folder: Path) -> Tokenizer:
    """A byte-level BPE model folder (``config.json`` + ``tokenizer.json``), as a
    checkpoint directory has: small, but it splits the emoji over several tokens."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=["<|im_end|>"]
    )
    tokenizer.train_from_iterator(["The answer is 42.", "alert bold done script"], trainer)
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    tokenizer.save(str(folder / "tokenizer.json"))
    return tokenizer


def token_store(folder: Path) -> TokenStore:
    tokenizer = _tokenizer(folder / "tiny-model")
    token_ids = tuple(tokenizer.encode(HOSTILE).ids)
    logprobs = tuple(-0.01 - 0.4 * (position % 7) for position in range(len(token_ids)))
    url = f"sqlite:///{folder / 'tokens.db'}"
    engine = make_engine(url)
    with Session(engine) as session:
        problem = Problem(task="custom", question="What is 6 * 7?", answer="42")
        runs = [Run(model=str(folder / "tiny-model"), task="custom", status="completed"),
                Run(model="someone/elses-model", task="custom", status="completed")]  # fmt: skip
        session.add_all([problem, *runs])
        session.flush()
        trees = [
            Tree(
                run_id=run.id,
                problem_id=problem.id,
                status="completed",
                node_count=4,
                simulations_done=1,
                simulations_target=1,
            )
            for run in runs
        ]
        session.add_all(trees)
        session.flush()
        for tree in trees:
            session.add_all(
                [
                    Node(tree_id=tree.id, index=0, token_ids=[1, 2, 3], created_simulation=-1),
                    Node(tree_id=tree.id, index=1, parent_index=0, depth=1, option_text=HOSTILE,
                         token_ids=list(token_ids), token_logprobs=list(logprobs)),
                    Node(tree_id=tree.id, index=2, parent_index=0, depth=1, option_text="The answer is 42.",
                         token_ids=tokenizer.encode("The answer is 42.").ids),
                    Node(tree_id=tree.id, index=3, parent_index=0, depth=1, option_text="bare"),
                ]
            )  # fmt: skip
        session.commit()
        return TokenStore(url, trees[0].id, 1, 2, 3, trees[1].id, token_ids, logprobs)


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> TokenStore:
    found = token_store(tmp_path)
    monkeypatch.setenv("CANOPY_DB", found.url)
    return found


def _open(tree_id: int, node: int) -> AppTest:
    app = AppTest.from_file(MAIN, default_timeout=60)
    app.session_state["focus"] = {"tree_id": tree_id, "node": node}
    app.run()
    app.switch_page("views/trees.py")
    app.run()
    assert not app.exception, [e.value for e in app.exception]
    return app


def _html(app: AppTest) -> list[str]:
    return [element.proto.body for element in app.get("html")]


def _shown(app: AppTest) -> list[str]:
    """Everything rendered as Markdown: where model text must never go."""
    kinds = ("markdown", "caption", "info", "error", "warning")
    return [str(element.value) for kind in kinds for element in getattr(app, kind)]


def _spans(body: str) -> list[tuple[str, str]]:
    """(tooltip, text) of each token span, unescaped."""
    import html

    found = re.findall(r'<span title="([^"]*)" style="background: [^"]*">(.*?)</span>', body, flags=re.S)
    return [(html.unescape(title), html.unescape(text)) for title, text in found]


def test_tokens_are_coloured_by_log_prob_and_model_text_stays_literal(store: TokenStore) -> None:
    app = _open(store.tree_id, store.hostile)
    tokens = next(body for body in _html(app) if "<span title=" in body)
    assert "<script" not in tokens and "<b>" not in tokens, "markup in an option is escaped"
    assert "&lt;" in tokens and "&gt;" in tokens and "&#x27;" in tokens, "escaped, so shown as typed"
    spans = _spans(tokens)
    assert "".join(text for _, text in spans) == HOSTILE.replace("\n", "↵\n"), "every token, in order, whole"
    assert len(spans) < len(store.token_ids), "the emoji's byte tokens show as one piece"
    emoji = next(title for title, text in spans if "😀" in text)
    assert re.search(r"tokens \d+–\d+ · p = ", emoji), "its tooltip names the tokens it spans"
    first_title = spans[0][0]
    assert first_title.endswith(f"p = {math.exp(store.logprobs[0]):.3f} (log p = {store.logprobs[0]:.3f})")
    framed = re.findall(r'<span title="[^"]*p = ([0-9.]+) [^"]*" style="[^"]*0 0 0 2px[^"]*">', tokens)
    shown_p = [float(re.search(r"p = ([0-9.]+) ", title).group(1)) for title, _ in _spans(tokens)]
    assert [float(p) for p in framed] == [min(shown_p)], "the least likely piece is framed"
    assert any("p = 1 (expected)" in body for body in _html(app)), "the legend"
    total = sum(store.logprobs)
    assert any(f"{len(store.token_ids)} tokens; sum of log p = {total:.3f}" in c for c in _shown(app))
    assert not any("<script>" in text or "**bold**" in text for text in _shown(app))
    assert app.radio(key=f"token_view.colour.{store.tree_id}").value == "log-prob"


def test_a_node_without_log_probs_or_token_ids_says_why(store: TokenStore) -> None:
    app = _open(store.tree_id, store.old)
    assert any("stored before Canopy kept each token's log-probability" in c for c in _shown(app))
    assert not any("<span title=" in body for body in _html(app))
    app = _open(store.tree_id, store.bare)
    assert any("No token ids were stored for this node" in c for c in _shown(app))


def test_without_a_local_tokenizer_tokens_show_as_ids(store: TokenStore) -> None:
    app = _open(store.untokenized_tree, store.hostile)
    assert any("`someone/elses-model` is not on this machine" in c for c in _shown(app))
    spans = _spans(next(body for body in _html(app) if "<span title=" in body))
    assert [text for _, text in spans] == [f"⟨{token}⟩" for token in store.token_ids]


def test_dpo_reward_without_a_dpo_round_says_how_to_get_one(store: TokenStore) -> None:
    app = _open(store.tree_id, store.hostile)
    app.radio(key=f"token_view.colour.{store.tree_id}").set_value("DPO reward").run()
    assert not app.exception
    assert any("No improve iteration has trained a policy with DPO yet" in i for i in _shown(app))
    assert not any("<span title=" in body for body in _html(app))


def _add_dpo_round(url: str) -> int:
    metrics = IterationMetrics(
        config={"dpo": True, "dpo_train": {"beta": 0.1}},
        round=1,
        checkpoints=Checkpoints(policy="/ckpt/iteration-1/dpo"),
        done=["search", "mine", "sft", "dpo"],
    )
    with Session(make_engine(url, create=False)) as session:
        row = Iteration(name="iter-1", model="tiny", metrics=metrics.to_dict())
        session.add(row)
        session.commit()
        return row.id


def test_dpo_rewards_are_computed_once_on_demand_and_coloured(
    store: TokenStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    iteration_id = _add_dpo_round(store.url)
    calls: list[tuple[str, int, int]] = []
    count = len(store.token_ids)
    policy = [-0.5] * count
    reference = [-0.5 + 0.2 * ((position % 3) - 1) for position in range(count)]

    def fake_credit(url: str, tree_id: int, iteration: int) -> dict:
        calls.append((url, tree_id, iteration))
        rewards = [0.1 * (mine - theirs) for mine, theirs in zip(policy, reference, strict=True)]
        nodes = {str(store.hostile): {"policy": policy, "reference": reference, "reward": rewards}}
        return json.loads(json.dumps({"beta": 0.1, "nodes": nodes}))

    monkeypatch.setattr(token_view, "run_credit", fake_credit)
    app = _open(store.tree_id, store.hostile)
    colour = f"token_view.colour.{store.tree_id}"
    app.radio(key=colour).set_value("DPO reward").run()
    assert app.selectbox(key=f"token_view.round.{store.tree_id}").value.iteration_id == iteration_id
    assert not calls, "nothing is computed before the button is pressed"
    app.button(key=f"token_view.compute.{store.tree_id}").click().run()
    assert not app.exception, [e.value for e in app.exception]
    assert calls == [(store.url, store.tree_id, iteration_id)]
    assert not [b for b in app.button if b.key == f"token_view.compute.{store.tree_id}"], "done: no button"
    spans = _spans(next(body for body in _html(app) if "<span title=" in body))
    assert "".join(text for _, text in spans) == HOSTILE.replace("\n", "↵\n")
    assert all(
        re.search(r"β·log π/π_ref = [+-]\d\.\d{4} \(log π = -\d\.\d{3}, log π_ref = -", t) for t, _ in spans
    )
    assert any("penalised" in body and "rewarded" in body for body in _html(app)), "the legend"
    assert any(c.startswith("β = 0.1; the step's implicit reward is the sum") for c in _shown(app))
    app.radio(key=colour).set_value("log-prob").run()
    app.radio(key=colour).set_value("DPO reward").run()
    assert len(calls) == 1, "a computed tree is not computed again"
    assert any("<span title=" in body for body in _html(app))


def test_a_failed_computation_shows_its_reason_and_offers_the_button_again(
    store: TokenStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    _add_dpo_round(store.url)

    def failing(url: str, tree_id: int, iteration: int) -> dict:
        raise CanopyError("iteration 1's DPO checkpoint /ckpt/iteration-1/dpo is missing or incomplete")

    monkeypatch.setattr(token_view, "run_credit", failing)
    app = _open(store.tree_id, store.hostile)
    app.radio(key=f"token_view.colour.{store.tree_id}").set_value("DPO reward").run()
    app.button(key=f"token_view.compute.{store.tree_id}").click().run()
    assert any("Could not compute the DPO rewards: iteration 1's DPO checkpoint" in e for e in _shown(app))
    assert [b for b in app.button if b.key == f"token_view.compute.{store.tree_id}"], "the button is back"


def test_run_credit_reports_the_commands_one_line_reason(store: TokenStore) -> None:
    with Session(make_engine(store.url, create=False)) as session:
        row = Iteration(name="plain", model="tiny", metrics={"done": ["sft"]})
        session.add(row)
        session.commit()
        plain = row.id
    with pytest.raises(CanopyError, match=rf"^iteration {plain} trained no policy with DPO; pick one"):
        token_view.run_credit(store.url, store.tree_id, plain)
