"""Reports of evaluations: a Markdown table and an accuracy-vs-tokens chart
(Plotly HTML, and PNG where kaleido and a Chrome work)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from engine.evaluate import EvalResult


def _accuracy(result: EvalResult) -> str:
    return "n/a" if result.accuracy is None else f"{result.accuracy:.1%}"


def results_table(results: Sequence[EvalResult], *, labels: Sequence[str] | None = None) -> str:
    """A Markdown table: one row per result (``labels`` name the rows; default: method)."""
    labels = labels or [result.method for result in results]
    lines = [
        "| method | accuracy | n | mean generated tokens | mean prefill tokens | seconds "
        "| trajectories with an answer | run |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label, result in zip(labels, results, strict=True):
        answered = "n/a" if result.answered_share is None else f"{result.answered_share:.0%}"
        lines.append(
            f"| {label} | {_accuracy(result)} | {result.n} | {result.generated_tokens:.1f} | "
            f"{result.prefill_tokens:.1f} | {result.seconds:.1f} | {answered} | {result.run_id} |"
        )
    return "\n".join(lines) + "\n"


def accuracy_chart(results: Sequence[EvalResult], *, labels: Sequence[str] | None = None, title: str):
    """Plotly figure: accuracy against mean generated tokens per problem, one point per row."""
    import plotly.graph_objects as go

    labels = labels or [result.method for result in results]
    figure = go.Figure(
        go.Scatter(
            x=[result.generated_tokens for result in results],
            y=[result.accuracy for result in results],
            mode="markers+text",
            text=list(labels),
            textposition="top center",
            marker={"size": 12},
            cliponaxis=False,
            customdata=[result.run_id for result in results],
            hovertemplate=(
                "%{text}<br>%{x:.0f} tokens<br>accuracy %{y:.1%}<br>run %{customdata}<extra></extra>"
            ),
        )
    )
    figure.update_layout(
        title=title,
        xaxis_title="mean generated tokens per problem",
        yaxis_title="accuracy",
        yaxis={"range": [-0.05, 1.15], "tickformat": ".0%"},
        template="plotly_white",
    )
    return figure


@dataclass(frozen=True)
class Report:
    """Files a comparison or an ablation wrote.

    ``png`` is None when no offline image exporter works here; ``png_note`` says why.
    """

    results: list[EvalResult]
    labels: list[str]
    table: Path
    html: Path
    png: Path | None
    png_note: str


def write_report(
    results: Sequence[EvalResult],
    *,
    labels: Sequence[str],
    out_dir: str | Path,
    name: str,
    title: str,
    png: bool = True,
) -> Report:
    """Write ``<name>.md``, ``<name>.html`` (Plotly inlined, so it opens offline) and,
    where kaleido and a Chrome work, ``<name>.png``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    problems = results[0].n if results else 0
    model = results[0].model if results else ""
    header = (
        f"# {title}\n\nModel `{model}`, task `{results[0].task if results else ''}`, {problems} problems.\n\n"
    )
    table = out / f"{name}.md"
    table.write_text(header + results_table(results, labels=labels))
    figure = accuracy_chart(results, labels=labels, title=title)
    html = out / f"{name}.html"
    figure.write_html(html, include_plotlyjs=True)
    if not png:
        return Report(list(results), list(labels), table, html, None, "no PNG: not asked for")
    image: Path | None = out / f"{name}.png"
    note = f"wrote {image}"
    try:
        figure.write_image(image)
    except Exception as exc:  # noqa: BLE001 - any exporter failure means "no PNG", said plainly
        image = None
        reason = f"{type(exc).__name__}: {exc}".splitlines()[0]
        note = f"no PNG: the image export needs kaleido (pip install kaleido) and a Chrome ({reason})"
    return Report(list(results), list(labels), table, html, image, note)


__all__ = ["Report", "accuracy_chart", "results_table", "write_report"]
