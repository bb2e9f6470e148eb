"""Critics against verified outcomes: reliability bins, precision/recall and
expected calibration error. Pure numpy/pandas (no torch), shared by the app's
Critics page and the improve loop's iteration metrics."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from engine.answers import answers_match


def present(value: Any) -> bool:
    """Not None and not NaN (pandas turns missing values into NaN)."""
    return value is not None and value == value


def verified_outcome(terminal: bool, answer: str | None, rollouts: Any, gold: str | None) -> float | None:
    """1.0/0.0 whether a node led to the gold answer, or None if unknown: a terminal
    node's own answer; otherwise the majority of its rollouts' answers."""
    if not present(gold):
        return None
    gold = str(gold)
    if terminal and present(answer):
        return float(answers_match(str(answer), gold))
    answers = [r.get("answer") for r in rollouts or [] if isinstance(r, dict) and r.get("answer") is not None]
    if not answers:
        return None
    hits = sum(answers_match(str(a), gold) for a in answers)
    return 1.0 if hits * 2 >= len(answers) else 0.0


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
