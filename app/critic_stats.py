"""Numbers behind the Critics page: disagreement between two critics, and each
critic's calibration against verified outcomes. Pure pandas/numpy."""

from __future__ import annotations

import pandas as pd

from engine.calibration import classification, reliability

__all__ = ["classification", "disagreements", "reliability"]


def disagreements(nodes: pd.DataFrame, x: str, y: str, limit: int = 100) -> pd.DataFrame:
    """Nodes scored by both critics, largest ``|x - y|`` first."""
    both = nodes.dropna(subset=[x, y]).copy()
    both["gap"] = (both[x].astype(float) - both[y].astype(float)).abs()
    return both.sort_values("gap", ascending=False, kind="stable").head(limit)
