"""Drawing a search tree: an O(n) tidy layout, replay of growth from stored events,
and the Plotly figure. Pure functions of plain data (no Streamlit, no store), so the
benchmark and the tests call them directly.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import plotly.graph_objects as go

WEBGL_ABOVE = 2000
"""Trees with more drawn points than this use ``go.Scattergl`` (WebGL)."""

COLOR_BY = {
    "combined": ("combined_score", "Combined critic score"),
    "value": ("value_score", "Value function"),
    "prm": ("prm_score", "PRM (step is correct)"),
    "orm": ("orm_score", "ORM (outcome is correct)"),
    "tool": ("tool_score", "Arithmetic checker"),
    "q": ("q", "Q (mean backed-up value)"),
}
"""Colour choices: key -> (node column, legend title). All are in [0, 1]."""

CHOSEN_COLOR = "#e4572e"
SELECTED_COLOR = "#111111"
FILTERED_COLOR = "#8c8c8c"
LABEL_MARKS = {"correct": ("✓", "#2e7d4f"), "incorrect": ("✗", "#d1495b"), "unsure": ("?", "#6b6b6b")}
"""How a person's verdict shows beside a node: its symbol and colour."""
COLORSCALE = "Viridis"


def tidy_layout(parent_of: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Positions for a forest given ``parent_of[i]`` (the position of i's parent, or
    -1 for a root). Returns ``(x, depth)``: leaves are spaced one unit apart in
    depth-first order, every parent sits midway between its first and last child.

    O(n) and iterative, so deep trees do not hit the recursion limit. Nodes whose
    parent is missing (or on a cycle) are treated as roots / left at x = 0.
    """
    n = len(parent_of)
    children: list[list[int]] = [[] for _ in range(n)]
    roots: list[int] = []
    for node, parent in enumerate(parent_of):
        if 0 <= parent < n and parent != node:
            children[parent].append(node)
        else:
            roots.append(node)
    x = np.zeros(n, dtype=float)
    depth = np.zeros(n, dtype=np.int64)
    next_leaf = 0
    stack: list[tuple[int, bool]] = [(root, False) for root in reversed(roots)]
    while stack:
        node, children_placed = stack.pop()
        kids = children[node]
        if children_placed:
            x[node] = (x[kids[0]] + x[kids[-1]]) / 2
        elif not kids:
            x[node] = next_leaf
            next_leaf += 1
        else:
            stack.append((node, True))
            for kid in reversed(kids):
                depth[kid] = depth[node] + 1
                stack.append((kid, False))
    return x, depth


@dataclass(frozen=True)
class TreeSnapshot:
    """A tree as drawn: ``nodes`` (one row per node, Node columns, ``visits`` and
    ``q`` as of ``simulation``) and ``filtered`` (FilteredOption rows)."""

    nodes: pd.DataFrame
    filtered: pd.DataFrame
    simulation: int | None


def replay(
    nodes: pd.DataFrame,
    filtered: pd.DataFrame,
    backups: Iterable[tuple[int, Sequence[int], float]],
    upto: int | None,
) -> TreeSnapshot:
    """The tree as it stood after simulation ``upto`` (None: as stored now).

    ``backups`` are the backpropagate events ``(simulation, path, value)``. Nodes
    and filtered options created later are dropped; visits and Q are recounted from
    the backups up to ``upto``.
    """
    if upto is None:
        return TreeSnapshot(nodes, filtered, None)
    shown = nodes[nodes["created_simulation"] <= upto].copy()
    visits: dict[int, int] = {}
    totals: dict[int, float] = {}
    for simulation, path, value in backups:
        if simulation > upto:
            continue
        for index in path:
            visits[index] = visits.get(index, 0) + 1
            totals[index] = totals.get(index, 0.0) + float(value)
    counted = shown["index"].map(visits).fillna(0).astype(int)
    shown["visits"] = counted
    shown["q"] = [totals.get(i, 0.0) / v if v else 0.0 for i, v in zip(shown["index"], counted, strict=True)]
    kept = filtered[filtered["simulation"] <= upto] if len(filtered) else filtered
    return TreeSnapshot(shown, kept, upto)


_LINE = re.compile(r"(.{1,64})(?:\s+|$)|(.{64})")


def _wrap(text: str, limit: int = 320) -> str:
    """Escaped text wrapped at about 64 characters, for a Plotly hover label (Plotly
    renders some HTML tags and entities in labels; model text must show as typed)."""
    text = " ".join(str(text).split())
    text = text if len(text) <= limit else text[: limit - 1] + "…"
    lines = [a or b for a, b in _LINE.findall(text)] or [""]
    return "<br>".join(html.escape(line) for line in lines)


def _scores(column: pd.Series) -> list[str]:
    """Scores as "0.42", missing ones as "–" (vectorised: thousands of labels)."""
    values = pd.to_numeric(column, errors="coerce").to_numpy(dtype=float)
    text = np.char.mod("%.2f", np.nan_to_num(values))
    return np.where(np.isnan(values), "–", text).tolist()


def hover_labels(nodes: pd.DataFrame) -> list[str]:
    q, prior, value, prm, orm, tool, combined = (
        _scores(nodes[c])
        for c in ("q", "prior", "value_score", "prm_score", "orm_score", "tool_score", "combined_score")
    )
    labels = []
    for i, row in enumerate(
        nodes[["index", "parent_index", "depth", "visits", "option_text", "terminal", "answer"]].itertuples(
            index=False
        )
    ):
        head = "root (the question)" if row.parent_index < 0 else f"node {row.index} · depth {row.depth}"
        answer = (
            f"<br>answer: {html.escape(str(row.answer))}"
            if row.terminal and isinstance(row.answer, str)
            else ""
        )
        text = f"<br>—<br>{_wrap(row.option_text)}" if row.parent_index >= 0 else ""
        labels.append(
            f"<b>{head}</b><br>visits {row.visits} · Q {q[i]} · prior {prior[i]}<br>"
            f"value {value[i]} · PRM {prm[i]} · ORM {orm[i]} · tool {tool[i]} · combined {combined[i]}"
            f"{answer}{text}"
        )
    return labels


def _edges(x: np.ndarray, y: np.ndarray, parents: np.ndarray, children: np.ndarray) -> tuple[np.ndarray, ...]:
    """Line coordinates for edges parent->child, NaN-separated (one trace for all)."""
    count = len(children)
    xs = np.full(count * 3, np.nan)
    ys = np.full(count * 3, np.nan)
    xs[0::3], xs[1::3] = x[parents], x[children]
    ys[0::3], ys[1::3] = y[parents], y[children]
    return xs, ys


def build_tree_figure(
    snapshot: TreeSnapshot,
    *,
    color_by: str = "combined",
    chosen_path: Sequence[int] = (),
    selected: int | None = None,
    show_filtered: bool = True,
    height: int = 560,
    marks: Mapping[int, str] | None = None,
) -> go.Figure:
    """The tree, root at the top. Node markers carry ``customdata = [node index, -1]``,
    filtered siblings ``[parent index, filtered option id]``. ``marks`` (node
    index -> "correct", "incorrect" or "unsure") puts people's labels beside nodes."""
    nodes = snapshot.nodes.reset_index(drop=True)
    filtered = snapshot.filtered.reset_index(drop=True) if show_filtered else snapshot.filtered.iloc[0:0]
    position = {int(index): pos for pos, index in enumerate(nodes["index"])}
    node_parents = np.array([position.get(int(p), -1) for p in nodes["parent_index"]], dtype=np.int64)
    if len(filtered):
        filtered = filtered[filtered["parent_index"].isin(position.keys())].reset_index(drop=True)
    filtered_parents = np.array([position[int(p)] for p in filtered["parent_index"]], dtype=np.int64)
    x, depth = tidy_layout(np.concatenate([node_parents, filtered_parents]).tolist())
    y = -depth.astype(float)
    n = len(nodes)
    scatter = go.Scattergl if n + len(filtered) > WEBGL_ABOVE else go.Scatter
    traces: list[go.BaseTraceType] = []

    has_parent = np.flatnonzero(node_parents >= 0)
    edge_x, edge_y = _edges(x, y, node_parents[has_parent], has_parent)
    traces.append(
        scatter(
            x=edge_x,
            y=edge_y,
            mode="lines",
            line={"color": "#b8b8b8", "width": 1},
            hoverinfo="skip",
            name="edge",
            showlegend=False,
        )
    )
    if len(filtered):
        fx, fy = _edges(x, y, filtered_parents, np.arange(n, n + len(filtered)))
        traces.append(
            scatter(
                x=fx,
                y=fy,
                mode="lines",
                line={"color": FILTERED_COLOR, "width": 1, "dash": "dash"},
                hoverinfo="skip",
                showlegend=False,
                name="filtered edge",
            )
        )
    chosen = [position[i] for i in chosen_path if i in position]
    if len(chosen) > 1:
        path = np.array(chosen)
        cx, cy = _edges(x, y, path[:-1], path[1:])
        traces.append(
            scatter(
                x=cx,
                y=cy,
                mode="lines",
                line={"color": CHOSEN_COLOR, "width": 4},
                hoverinfo="skip",
                name="chosen path",
                showlegend=True,
            )
        )

    column, title = COLOR_BY[color_by]
    values = pd.to_numeric(nodes[column], errors="coerce").to_numpy(dtype=float)
    visits = nodes["visits"].to_numpy(dtype=float)
    sizes = 8 + 16 * np.sqrt(visits / max(1.0, visits.max(initial=0.0)))
    labels = np.array(hover_labels(nodes), dtype=object)
    custom = np.column_stack([nodes["index"].to_numpy(), np.full(n, -1)])
    scored = ~np.isnan(values)
    for mask, name, marker in (
        (
            scored,
            title,
            {
                "color": values[scored],
                "colorscale": COLORSCALE,
                "cmin": 0,
                "cmax": 1,
                "colorbar": {"title": {"text": title, "side": "right"}, "thickness": 12, "len": 0.8},
            },
        ),
        (~scored, "not scored yet", {"color": "#d9d9d9"}),
    ):
        if not mask.any():
            continue
        marker = {
            **marker,
            "size": sizes[mask],
            "line": {"color": "#ffffff", "width": 0.5},
            "opacity": 1.0,
        }
        traces.append(
            scatter(
                x=x[:n][mask],
                y=y[:n][mask],
                mode="markers",
                marker=marker,
                customdata=custom[mask],
                hovertext=labels[mask],
                hoverinfo="text",
                name=name,
                showlegend=name != title,
            )
        )
    if len(chosen) > 0:
        traces.append(
            scatter(
                x=x[chosen],
                y=y[chosen],
                mode="markers",
                hoverinfo="skip",
                showlegend=False,
                name="chosen path nodes",
                marker={
                    "symbol": "circle-open",
                    "size": sizes[chosen] + 4,
                    "color": CHOSEN_COLOR,
                    "line": {"width": 3},
                },
            )
        )
    if len(filtered):
        filtered_labels = [
            f"<b>filtered near-duplicate</b> of node {int(row.collided_with_index)}<br>"
            f"similarity {row.similarity:.3f} ({html.escape(str(row.measure))}) · simulation {row.simulation}"
            f"<br>—<br>{_wrap(row.text)}"
            for row in filtered.itertuples(index=False)
        ]
        traces.append(
            scatter(
                x=x[n:],
                y=y[n:],
                mode="markers",
                marker={"symbol": "circle-open", "size": 10, "color": FILTERED_COLOR, "line": {"width": 2}},
                customdata=np.column_stack([filtered["parent_index"].to_numpy(), filtered["id"].to_numpy()]),
                hovertext=filtered_labels,
                hoverinfo="text",
                name="filtered sibling (near-duplicate)",
            )
        )
    if selected is not None and selected in position:
        pos = position[selected]
        traces.append(
            scatter(
                x=[x[pos]],
                y=[y[pos]],
                mode="markers",
                hoverinfo="skip",
                name="selected",
                marker={
                    "symbol": "circle-open",
                    "size": float(sizes[pos]) + 12,
                    "color": SELECTED_COLOR,
                    "line": {"width": 3},
                },
                customdata=[[selected, -1]],
            )
        )
    for verdict, (symbol, color) in LABEL_MARKS.items():  # last: on top of the selection ring
        marked = [position[i] for i, v in (marks or {}).items() if v == verdict and i in position]
        if marked:  # few points: plain SVG even where the nodes use WebGL, which draws text poorly
            traces.append(
                go.Scatter(
                    x=x[marked],
                    y=y[marked],
                    mode="text",
                    text=[f"<b>{symbol}</b>"] * len(marked),
                    textposition="top right",
                    textfont={"color": color, "size": 20},
                    hoverinfo="skip",
                    name=f"{symbol} labelled {verdict}",
                )
            )
    max_depth = int(depth.max(initial=0))
    tick_step = max(1, (max_depth + 1) // 12)
    figure = go.Figure(traces)
    figure.update_layout(
        height=height,
        margin={"l": 10, "r": 10, "t": 30, "b": 10},
        hovermode="closest",
        dragmode="pan",
        clickmode="event+select",
        plot_bgcolor="rgba(0,0,0,0)",
        legend={"orientation": "h", "yanchor": "bottom", "y": 1.0, "x": 0},
        xaxis={"visible": False},
        yaxis={
            "tickvals": [-d for d in range(0, max_depth + 1, tick_step)],
            "ticktext": [f"depth {d}" for d in range(0, max_depth + 1, tick_step)],
            "zeroline": False,
            "showgrid": False,
        },
        uirevision="tree",
    )
    return figure


def custom_values(custom: object) -> list:
    """A point's ``customdata`` as a list: the chart event may deliver a list, a
    dict keyed "0", "1", ... or a bare scalar."""
    if isinstance(custom, dict):
        return [custom[key] for key in sorted(custom, key=lambda k: int(k) if str(k).isdigit() else 0)]
    if isinstance(custom, list | tuple):
        return list(custom)
    return [] if custom is None else [custom]


def selected_node(selection: dict | None) -> int | None:
    """The node index picked in a chart selection event (a filtered sibling picks
    its parent), or None."""
    points = (selection or {}).get("selection", {}).get("points", [])
    for point in points:
        values = custom_values(point.get("customdata"))
        if values:
            try:
                return int(values[0])
            except (TypeError, ValueError):
                continue
    return None


def document_figure(document: dict, *, color_by: str = "combined") -> go.Figure:
    """The figure of a ``store.tree_export.tree_document`` (as the Trees page
    draws the tree now, without a selected node)."""
    nodes = pd.DataFrame(document["nodes"])
    filtered = pd.DataFrame(
        document["filtered"],
        columns=["id", "parent_index", "text", "similarity", "measure", "collided_with_index", "simulation"],
    )
    return build_tree_figure(
        TreeSnapshot(nodes, filtered, None),
        color_by=color_by,
        chosen_path=document["tree"].get("chosen_path") or [],
        height=max(560, 90 * (int(nodes["depth"].max()) + 2) if len(nodes) else 560),
    )
