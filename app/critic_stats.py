"""Numbers behind the Critics page: disagreement between two critics, and each
critic's calibration against verified outcomes. Pure pandas/numpy."""

from __future__ import annotations

import numpy as np
import pandas as pd


def disagreements(nodes: pd.DataFrame, x: str, y: str, limit: int = 100) -> pd.DataFrame:
    """Nodes scored by both critics, largest ``|x - y|`` first."""
    both = nodes.dropna(subset=[x, y]).copy()
    both["gap"] = (both[x].astype(float) - both[y].astype(float)).abs()
    return both.sort_values("gap", ascending=False, kind="stable").head(limit)


def reliability(scores: pd.Series, outcomes: pd.Series, bins: int = 10) -> pd.DataFrame:
    """Per score bin: mean predicted score, observed success rate and count
    (a calibrated critic has the two equal). Empty bins are dropped."""
    frame = pd.DataFrame({"score": scores.astype(float), "outcome": outcomes.astype(float)}).dropna()
    if frame.empty:
        return pd.DataFrame(columns=["bin", "predicted", "observed", "count"])
    edges = np.linspace(0, 1, bins + 1)
    frame["bin"] = np.clip(np.digitize(frame["score"], edges[1:-1]), 0, bins - 1)
    table = frame.groupby("bin").agg(
        predicted=("score", "mean"), observed=("outcome", "mean"), count=("outcome", "size")
    )
    return table.reset_index()


def classification(scores: pd.Series, outcomes: pd.Series, threshold: float) -> dict[str, float | int | None]:
    """Treat ``score >= threshold`` as "predicts success": precision, recall,
    accuracy, Brier score and expected calibration error over the labelled nodes."""
    frame = pd.DataFrame({"score": scores.astype(float), "outcome": outcomes.astype(float)}).dropna()
    if frame.empty:
        return {"nodes": 0, "precision": None, "recall": None, "accuracy": None, "brier": None, "ece": None}
    predicted = frame["score"] >= threshold
    actual = frame["outcome"] >= 0.5
    true_positive = int((predicted & actual).sum())
    bins = reliability(frame["score"], frame["outcome"])
    return {
        "nodes": len(frame),
        "precision": true_positive / int(predicted.sum()) if predicted.any() else None,
        "recall": true_positive / int(actual.sum()) if actual.any() else None,
        "accuracy": float((predicted == actual).mean()),
        "brier": float(((frame["score"] - frame["outcome"]) ** 2).mean()),
        "ece": float((bins["count"] * (bins["predicted"] - bins["observed"]).abs()).sum() / len(frame)),
    }
