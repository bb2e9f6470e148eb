"""Credit per token in the node detail: the option's tokens, coloured by the
log-probability the policy gave each one when the search sampled it (stored
with the node, nothing recomputed), or by the implicit per-token reward of a
policy an improve round trained with DPO, ``beta * log pi/pi_ref``
(``canopy credit``, run for the chosen tree on demand).

Token text comes from the model's ``tokenizer.json`` alone (the ``tokenizers``
library, no weights, no torch), found by ``engine.models.tokenizer_file``;
without one the tokens show as their ids. Model text stays data: every piece
is HTML-escaped before it goes into the spans ``st.html`` shows, so markup,
Markdown and scripts in an option appear as the characters they are.
"""

from __future__ import annotations

import html
import json
import math
import os
import subprocess
import sys
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
import streamlit as st

from app import data
from app.engine_info import ROOT
from engine.errors import CanopyError
from engine.models import tokenizer_file
from store.tokens import DPORound, dpo_rounds, node_tokens

COLOUR_BY = ("log-prob", "DPO reward")
"""What the tokens can be coloured by."""
REQUESTED = "token_view.requested"
"""Session key: the (database, tree, iteration) whose DPO rewards this session asked for."""
CREDIT_TIMEOUT_S = 1800
"""How long ``canopy credit`` may take: two models read every option of a tree."""

_SURPRISE = (214, 69, 65)
"""Red: an unlikely token, or one DPO made less likely than its reference did."""
_REWARD = (33, 102, 172)
"""Blue: a token DPO made likelier than its reference did."""
_STRONGEST = 0.75
"""The most opaque a token's background gets, so dark text stays readable on it."""


@dataclass(frozen=True)
class Piece:
    """A run of an option's tokens that decodes to whole characters.

    Attributes:
        text: what they decode to; a byte-level tokenizer may split one
            character (an emoji, a CJK glyph) over several tokens.
        start: the position of its first token in the option, >= 0.
        count: how many tokens it spans, >= 1.
    """

    text: str
    start: int
    count: int


def split_pieces(decode: Callable[[list[int]], str], token_ids: Sequence[int]) -> list[Piece]:
    """Each token's share of the text: what decoding one more token adds. A
    token that leaves a character incomplete (decoding ends in U+FFFD) joins
    the next one, so no piece shows half a character."""
    pieces: list[Piece] = []
    shown = ""
    start = 0
    for position in range(len(token_ids)):
        text = decode(list(token_ids[: position + 1]))
        last = position == len(token_ids) - 1
        if not last and (text.endswith("\ufffd") or not text.startswith(shown)):
            continue
        common = os.path.commonprefix([shown, text])
        pieces.append(Piece(text[len(common) :], start, position + 1 - start))
        shown, start = text, position + 1
    return pieces


@st.cache_resource(show_spinner=False, max_entries=8)
def _tokenizer(path: str) -> Any:
    from tokenizers import Tokenizer

    return Tokenizer.from_file(path)


@st.cache_data(show_spinner=False, max_entries=512)
def token_pieces(path: str | None, token_ids: tuple[int, ...]) -> list[Piece]:
    """The option's pieces under the tokenizer at ``path`` (special tokens such
    as an end-of-turn marker kept, since they too were sampled), or one piece
    per token showing its id where there is no tokenizer."""
    if path is None:
        return [Piece(f"⟨{token}⟩", position, 1) for position, token in enumerate(token_ids)]
    tokenizer = _tokenizer(path)
    return split_pieces(lambda ids: tokenizer.decode(ids, skip_special_tokens=False), token_ids)


def probability_colour(logprob: float) -> str:
    """Transparent for a token the policy was sure of, red as its probability falls to 0."""
    return _rgba(_SURPRISE, _STRONGEST * (1.0 - math.exp(min(logprob, 0.0))))


def reward_colour(reward: float, scale: float) -> str:
    """Blue for a token DPO rewarded, red for one it penalised, by size up to ``scale``."""
    strength = min(1.0, abs(reward) / scale) if scale > 0 else 0.0
    return _rgba(_REWARD if reward > 0 else _SURPRISE, _STRONGEST * strength)


def _rgba(rgb: tuple[int, int, int], alpha: float) -> str:
    return f"rgba({rgb[0]}, {rgb[1]}, {rgb[2]}, {alpha:.3f})"


def tokens_html(
    pieces: Sequence[Piece], colours: Sequence[str], tooltips: Sequence[str], outlined: Collection[int] = ()
) -> str:
    """The pieces as spans with a background colour and a hover tooltip each,
    the pieces at positions ``outlined`` framed (the ones a caption points at).
    Every piece and tooltip is escaped: model text is shown, never interpreted.
    A line break shows as ↵ and then breaks the line."""
    spans = []
    for position, (piece, colour, tooltip) in enumerate(zip(pieces, colours, tooltips, strict=True)):
        shown = html.escape(piece.text).replace("\n", "↵\n") or "∅"
        edge = "0 0 0 2px #1d2b23" if position in outlined else "inset -1px 0 0 rgba(0, 0, 0, 0.18)"
        spans.append(
            f'<span title="{html.escape(tooltip)}" style="background: {colour}; border-radius: 3px; '
            f'box-shadow: {edge}; padding: 2px 0">{shown}</span>'
        )
    return (
        '<div style="font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size: 0.88rem; '
        'line-height: 2.0; white-space: pre-wrap; overflow-wrap: anywhere">' + "".join(spans) + "</div>"
    )


def legend_html(left: str, right: str, stops: Sequence[str]) -> str:
    """A colour bar from ``stops[0]`` to ``stops[-1]``, its ends labelled (plain
    labels of our own, escaped all the same)."""
    gradient = ", ".join(stops)
    return (
        '<div style="display: flex; align-items: center; gap: 0.5rem; font-size: 0.8rem; color: #55655b">'
        f"<span>{html.escape(left)}</span>"
        f'<span style="flex: 1; height: 0.7rem; border-radius: 3px; border: 1px solid #d6ddd8; '
        f'background: linear-gradient(to right, {gradient})"></span>'
        f"<span>{html.escape(right)}</span></div>"
    )


def _grouped(values: Sequence[float], piece: Piece) -> float:
    """A piece's value: the sum over its tokens (log-probs and rewards both add up)."""
    return sum(values[piece.start : piece.start + piece.count])


def _tooltip(piece: Piece, lines: str) -> str:
    tokens = (
        f"tokens {piece.start + 1}–{piece.start + piece.count}"
        if piece.count > 1
        else f"token {piece.start + 1}"
    )
    return f"{piece.text!r} · {tokens} · {lines}"


def run_credit(url: str, tree_id: int, iteration_id: int) -> dict[str, Any]:
    """``canopy credit --json`` for the tree (the app never loads a model
    itself); raises ``CanopyError`` with the command's own one-line reason."""
    command = [sys.executable, "-m", "canopy", "credit", "--db", url]
    command += ["--tree", str(tree_id), "--iteration", str(iteration_id), "--json"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    try:
        done = subprocess.run(
            command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=CREDIT_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired as error:
        raise CanopyError(
            f"canopy credit took more than {CREDIT_TIMEOUT_S} s; run it from a shell"
        ) from error
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        reason = lines[-1].removeprefix("canopy: error: ") if lines else f"exit status {done.returncode}"
        raise CanopyError(reason)
    return json.loads(done.stdout)


@st.cache_data(show_spinner=False, max_entries=16)
def dpo_credit(url: str, tree_id: int, iteration_id: int) -> dict[str, Any]:
    """The tree's per-token DPO rewards, computed once per (store, tree, round)
    for every session; a failure is not cached, so a retry runs again."""
    return run_credit(url, tree_id, iteration_id)


@st.cache_data(ttl=5, show_spinner=False)
def _rounds(url: str) -> list[DPORound]:
    return dpo_rounds(data.engine(url))


@st.cache_data(show_spinner=False, max_entries=256)
def _node_tokens(
    url: str, tree_id: int, index: int, stamp: tuple[Any, ...]
) -> tuple[tuple[int, ...], tuple[float, ...]]:
    """The node's token ids and log-probs, read again whenever the tree changes (``stamp``)."""
    found = node_tokens(data.engine(url), tree_id, index)
    return found.token_ids, found.logprobs


def token_view(tree: pd.Series, node: pd.Series) -> None:
    """The option of ``node`` token by token, with the colouring control; call
    it under the option text."""
    url = data.db_url()
    tree_id, index = int(tree["id"]), int(node["index"])
    token_ids, logprobs = _node_tokens(url, tree_id, index, data.tree_stamp(url, tree_id))
    if not token_ids:
        st.caption("No token ids were stored for this node, so it cannot be shown token by token.")
        return
    st.caption("The same step token by token (hover a token for its numbers)")
    colour_by = st.radio(
        "Colour tokens by",
        COLOUR_BY,
        horizontal=True,
        key=f"token_view.colour.{tree_id}",
        help="**log-prob**: how likely the policy found each token when the search sampled it. "
        "**DPO reward**: β·log π/π_ref of a policy an improve round trained with DPO, against the model "
        "DPO started from: which tokens the training made likelier (blue) or less likely (red).",
    )
    path = tokenizer_file(str(tree["model"]))
    pieces = token_pieces(None if path is None else str(path), token_ids)
    if path is None:
        model = str(tree["model"]).replace("`", "")
        st.caption(
            f"The tokenizer of `{model}` is not on this machine (`canopy models prepare` makes a "
            "preset's), so each token shows as its id."
        )
    if colour_by == COLOUR_BY[0]:
        _by_logprob(pieces, logprobs)
    else:
        _by_dpo_reward(url, tree, index, pieces)


def _by_logprob(pieces: Sequence[Piece], logprobs: Sequence[float]) -> None:
    if not logprobs:
        st.caption(
            "This node was stored before Canopy kept each token's log-probability (store schema 4), or by "
            "a backend that could not match the server's tokens to its own; its tokens cannot be coloured "
            "by log-prob. Steps searched from now on can."
        )
        return
    grouped = [_grouped(logprobs, piece) for piece in pieces]
    tips = [
        _tooltip(p, f"p = {math.exp(lp):.3f} (log p = {lp:.3f})")
        for p, lp in zip(pieces, grouped, strict=True)
    ]
    least = min(range(len(grouped)), key=grouped.__getitem__)
    st.html(tokens_html(pieces, [probability_colour(lp) for lp in grouped], tips, {least}))
    st.html(
        legend_html(
            "p = 1 (expected)", "p = 0 (surprising)", [probability_colour(0.0), probability_colour(-50)]
        )
    )
    total = sum(logprobs)
    st.caption(
        f"{len(logprobs)} tokens; sum of log p = {total:.3f} (mean {total / len(logprobs):.3f}); "
        f"the least likely (framed) has p = {math.exp(grouped[least]):.3f}."
    )


def _by_dpo_reward(url: str, tree: pd.Series, index: int, pieces: Sequence[Piece]) -> None:
    rounds = _rounds(url)
    if not rounds:
        st.info(
            "No improve iteration has trained a policy with DPO yet, so there is no DPO reward to show. "
            "`canopy improve --dpo true` (or the Improve page) trains one from sibling preference pairs.",
            icon=":material/info:",
        )
        return
    tree_id = int(tree["id"])
    own = tree.get("iteration_id")
    default = next((i for i, r in enumerate(rounds) if data.present(own) and r.iteration_id == int(own)), 0)
    chosen = st.selectbox(
        "DPO round",
        rounds,
        index=default,
        format_func=lambda r: f"Iteration {r.iteration_id} · {r.name or 'unnamed'} · β = {r.beta:g}",
        key=f"token_view.round.{tree_id}",
    )
    request = (url, tree_id, chosen.iteration_id)
    asked = st.session_state.setdefault(REQUESTED, set())
    if request in asked:
        try:
            with st.spinner(
                f"Reading tree {tree_id} under iteration {chosen.iteration_id}'s policy and its reference…"
            ):
                credit = dpo_credit(*request)
        except CanopyError as error:
            asked.discard(request)
            st.error(f"Could not compute the DPO rewards: {error}", icon=":material/error:")
        else:
            _show_rewards(credit, index, pieces)
            return
    st.caption(
        f"Reads every option of tree {tree_id} under iteration {chosen.iteration_id}'s DPO policy and "
        "under the model its DPO started from (two models, loaded one after the other); on a CPU this "
        "takes from seconds to minutes, once per tree."
    )
    # The click is recorded before the rerun it causes, so that run computes and shows no button.
    st.button(
        f"Compute DPO rewards for tree {tree_id}",
        key=f"token_view.compute.{tree_id}",
        icon=":material/calculate:",
        on_click=asked.add,
        args=(request,),
    )


def _show_rewards(credit: dict[str, Any], index: int, pieces: Sequence[Piece]) -> None:
    """Node ``index``'s tokens coloured by ``canopy credit``'s rewards, on one
    scale for the whole tree so that steps compare."""
    numbers = credit["nodes"].get(str(index))
    if numbers is None or len(numbers["reward"]) != sum(piece.count for piece in pieces):
        st.caption("This node was added to the tree, or rewritten, after its rewards were computed.")
        return
    rewards = numbers["reward"]
    scale = max((abs(r) for node in credit["nodes"].values() for r in node["reward"]), default=0.0)
    grouped = [_grouped(rewards, piece) for piece in pieces]
    policy = [_grouped(numbers["policy"], piece) for piece in pieces]
    reference = [_grouped(numbers["reference"], piece) for piece in pieces]
    tips = [
        _tooltip(p, f"β·log π/π_ref = {r:+.4f} (log π = {a:.3f}, log π_ref = {b:.3f})")
        for p, r, a, b in zip(pieces, grouped, policy, reference, strict=True)
    ]
    extremes = {
        max(range(len(grouped)), key=grouped.__getitem__),
        min(range(len(grouped)), key=grouped.__getitem__),
    }
    st.html(tokens_html(pieces, [reward_colour(r, scale) for r in grouped], tips, extremes))
    st.html(
        legend_html(
            f"−{scale:.3g} (penalised)",
            f"+{scale:.3g} (rewarded)",
            [reward_colour(-scale, scale), reward_colour(0.0, scale), reward_colour(scale, scale)],
        )
    )
    st.caption(
        f"β = {credit['beta']:g}; the step's implicit reward is the sum of its tokens', {sum(rewards):+.4f}. "
        f"Framed: the most rewarded ({max(grouped):+.4f}) and the most penalised ({min(grouped):+.4f}). "
        "The colour scale is the largest |reward| in this tree."
    )
