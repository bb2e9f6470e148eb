"""Turning iteration rows into chartable metric tables. ``Iteration.metrics`` is
read through ``store.iterations.IterationMetrics``, and each chart draws named
fields of it."""

from __future__ import annotations

from typing import Any

import pandas as pd
import plotly.graph_objects as go

from store.iterations import IterationMetrics

CHARTS = {
    "Accuracy on held-out problems": ("accuracy",),
    "Critics (precision, recall, ECE)": ("critics",),
    "Training data sizes": ("data",),
    "Training losses": ("loss",),
    "Generated tokens per problem": ("tokens", "train_search.tokens"),
}
"""Chart title -> the ``IterationMetrics`` fields (or a field of a field) it draws;
other measurements go under "Other metrics"."""


def flatten(metrics: Any) -> dict[str, float]:
    """The measurements of one stored ``Iteration.metrics``, keyed "field.key"
    (the loop's bookkeeping left out, see ``IterationMetrics.measurements``)."""
    return IterationMetrics.from_dict(metrics if isinstance(metrics, dict) else {}).measurements()


def metric_table(iterations: pd.DataFrame) -> pd.DataFrame:
    """One row per iteration, one column per measurement."""
    rows = [
        {"iteration": f"{row.id}: {row.name}" if row.name else str(row.id), **flatten(row.metrics)}
        for row in iterations.itertuples(index=False)
    ]
    return pd.DataFrame(rows).set_index("iteration") if rows else pd.DataFrame()


def _draws(path: str, column: str) -> bool:
    return column == path or column.startswith(f"{path}.")


def grouped(table: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """{chart title: the columns of ``table`` that belong to it}; leftovers under "Other metrics"."""
    charts: dict[str, pd.DataFrame] = {}
    used: set[str] = set()
    for title, paths in CHARTS.items():
        columns = [c for c in table.columns if any(_draws(path, c) for path in paths)]
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
