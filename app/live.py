"""The live view of a search: a fragment that re-reads the store about once a
second while the search runs, and a stop button for searches this session started."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import streamlit as st

from app import data
from app.components import open_in_trees, run_message, snapshot_at, tree_chart, untrusted
from app.jobs import Job, find_run

JOB_KEY = "search.job"
"""Session key: the ``Job`` this browser session started, if any."""
POLL_SECONDS = 1.0


def _job() -> Job | None:
    return st.session_state.get(JOB_KEY)


def _watching(url: str, run_id: int | None) -> tuple[Job | None, int | None]:
    job = _job()
    if job is not None and (run_id is None or job.run_id in (None, run_id)):
        found = find_run(job, data.runs(url)) if data.store_problem(url) is None else None
        return job, found
    return None, run_id


def live_view(url: str, run_id: int | None = None) -> None:
    """Follow the session's job (or ``run_id``), polling while it is alive."""
    job, run_id = _watching(url, run_id)
    alive = job.alive if job is not None else _run_is_live(url, run_id)
    render = st.fragment(_render, run_every=POLL_SECONDS if alive else None)
    render(url, run_id, alive)


def _run_is_live(url: str, run_id: int | None) -> bool:
    if run_id is None or data.store_problem(url):
        return False
    run, _ = data.run_progress(url, run_id)
    return run is not None and run["state"] == "running"


def _render(url: str, run_id: int | None, was_alive: bool) -> None:
    job, run_id = _watching(url, run_id)
    alive = job.alive if job is not None else _run_is_live(url, run_id)
    if job is not None:
        _job_status(job, run_id)
    if run_id is not None:
        _run_status(url, run_id, job)
    if was_alive and not alive:
        st.rerun(scope="app")  # the job ended: redraw once more without polling


def _job_status(job: Job, run_id: int | None) -> None:
    elapsed = (datetime.now(UTC) - job.started_at).total_seconds()
    if job.alive:
        left, right = st.columns([4, 1], vertical_alignment="center")
        if run_id is None:
            left.info(
                f"Loading the model and starting the search… ({elapsed:.0f} s). "
                "The tree appears here once the model is loaded; the first use of a model can take a minute.",
                icon=":material/hourglass_top:",
            )
        if right.button("Stop search", type="secondary", icon=":material/stop_circle:", key="live.stop"):
            job.stop()
            st.toast("Stopping: the search finishes its current step and marks the run interrupted.")
            time.sleep(0.3)
    elif job.returncode not in (0, None) and run_id is None:
        st.error(f"The search process exited with code {job.returncode} before it created a run.")
    if not job.alive or run_id is None:
        with st.expander("Search process output", expanded=job.returncode not in (0, None)):
            untrusted(job.output_tail(), empty="(no output)")
            st.caption("Command")
            st.code(" ".join(job.command), language="bash", wrap_lines=True)


def _run_status(url: str, run_id: int, job: Job | None) -> None:
    run, trees = data.run_progress(url, run_id)
    if run is None:
        st.warning(f"Run {run_id} is not in the database.")
        return
    state = data.STATE_ICONS.get(run["state"], run["state"])
    if run["state"] == "stopped (no heartbeat)" and job is not None and job.alive and job.run_id == run_id:
        # Our own process is alive: it is busy inside a long step, not dead.
        beat = data.as_utc(run["heartbeat_at"])
        quiet = (datetime.now(UTC) - beat).total_seconds() if beat else 0
        state = f"● running (busy: no store update for {quiet:.0f} s)"
    st.markdown(f"**Run {run_id}** · {run['model']} · {run['task']} · {state}")
    if run["state"] != "running" and not (job is not None and job.alive):
        run_message(run["state"], run["error"])
    if trees.empty:
        st.info("The run exists but has not written its first tree yet.")
        return
    tree = trees.iloc[-1]
    done, target = int(tree["simulations_done"]), int(tree["simulations_target"]) or 1
    st.progress(min(1.0, done / target), text=f"Simulation {done} of {target}")
    columns = st.columns(4)
    columns[0].metric("Nodes in tree", int(tree["node_count"]))
    columns[1].metric("Filtered near-duplicates", int(tree["filtered_count"]))
    columns[2].metric("Trees in run", len(trees))
    columns[3].metric("Elapsed", f"{_elapsed(run):.0f} s")
    st.caption("Question")
    untrusted(tree["question"])
    snapshot, _, _ = snapshot_at(url, int(tree["id"]), None)
    chosen = list(tree["chosen_path"] or [])
    tree_chart(
        snapshot,
        tree_id=int(tree["id"]),
        key=f"live.chart.{tree['id']}",
        color_by="combined",
        chosen_path=chosen,
        height=460,
        selectable=False,
    )
    if data.present(tree["answer"]):
        st.caption("Answer chosen by the search")
        untrusted(tree["answer"])
    if st.button("Inspect this tree node by node", icon=":material/account_tree:", key="live.open"):
        open_in_trees(int(tree["id"]))


def _elapsed(run: dict) -> float:
    if run["seconds"]:
        return float(run["seconds"])
    created = data.as_utc(run["created_at"])
    return (datetime.now(UTC) - created).total_seconds() if created else 0.0
