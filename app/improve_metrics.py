"""Turning iteration rows into chartable metric tables. The improve loop writes
``Iteration.metrics`` as free-form JSON; numbers are grouped by what their key says."""

from __future__ import annotations

from typing import Any

import pandas as pd
import plotly.graph_objects as go

GROUPS = {
    "accuracy": ("Accuracy on held-out problems", ("acc",)),
    "critics": ("Critics (precision, recall, ECE)", ("critics.",)),
    "data": ("Training data sizes", ("example", "pairs", "size", "count", "prompts", "samples")),
    "loss": ("Training losses", ("loss",)),
    "tokens": ("Generated tokens per problem", ("tokens",)),
}


NOT_METRICS = ("config", "runs", "checkpoints", "done", "round", "seconds")
"""Top-level keys the improve loop keeps in ``metrics`` for itself, not for charts."""


def flatten(metrics: Any, prefix: str = "") -> dict[str, float]:
    """Numeric leaves of nested dicts, keyed "a.b" (the loop's bookkeeping left out)."""
    flat: dict[str, float] = {}
    if isinstance(metrics, dict):
        for key, value in metrics.items():
            if not prefix and key in NOT_METRICS:
                continue
            flat.update(flatten(value, f"{prefix}{key}."))
    elif isinstance(metrics, int | float) and not isinstance(metrics, bool):
        flat[prefix.rstrip(".")] = float(metrics)
    return flat


def metric_table(iterations: pd.DataFrame) -> pd.DataFrame:
    """One row per iteration, one column per numeric metric."""
    rows = [
        {"iteration": f"{row.id}: {row.name}" if row.name else str(row.id), **flatten(row.metrics)}
        for row in iterations.itertuples(index=False)
    ]
    return pd.DataFrame(rows).set_index("iteration") if rows else pd.DataFrame()


def grouped(table: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """{chart title: the columns of ``table`` that belong to it}; leftovers under "Other metrics"."""
    charts: dict[str, pd.DataFrame] = {}
    used: set[str] = set()
    for title, words in GROUPS.values():
        columns = [c for c in table.columns if c not in used and any(w in c.lower() for w in words)]
        if columns:
            charts[title] = table[columns]
            used.update(columns)
    rest = [c for c in table.columns if c not in used]
    if rest:
        charts["Other metrics"] = table[rest]
    return charts


def metric_figure(title: str, frame: pd.DataFrame) -> go.Figure:
    """One line (with markers, so a single iteration still shows) per metric."""
    figure = go.Figure(
        [
            go.Scatter(x=frame.index, y=frame[column], mode="lines+markers", name=column, connectgaps=True)
            for column in frame.columns
        ]
    )
    figure.update_layout(
        title={"text": title},
        height=300,
        margin={"l": 10, "r": 10, "t": 40, "b": 10},
        legend={"orientation": "h", "y": -0.2},
        xaxis={"type": "category"},
    )
    return figure
