"""Improve: launch a self-improvement iteration, follow it, and see the history."""

import shlex

import streamlit as st

from app import data
from app.components import require_store, untrusted
from app.engine_info import DEFAULT_MODEL, policy_models
from app.improve_metrics import grouped, metric_figure, metric_table
from app.jobs import start_job

JOB_KEY = "improve.job"

url = data.db_url()
st.title("Improve")
st.caption(
    "One self-improvement iteration searches many training problems, keeps the best trajectories, fine-tunes "
    "the model on them (and the critics on labels mined from the trees), then measures greedy and MCTS "
    "accuracy on held-out problems. Each iteration's checkpoint is the starting point of the next."
)

st.subheader("Launch an iteration")
names = [m.name for m in policy_models()]
columns = st.columns(3)
model = columns[0].selectbox(
    "Start from model",
    names,
    index=names.index(DEFAULT_MODEL) if DEFAULT_MODEL in names else 0,
    key="improve.model",
)
task = columns[1].selectbox("Task", ["arithmetic", "gsm8k"], key="improve.task")
iterations = columns[2].number_input(
    "Rounds",
    min_value=1,
    max_value=20,
    value=1,
    key="improve.iterations",
    help="Improvement rounds after the starting model's own evaluation.",
)
columns = st.columns(3)
train_problems = columns[0].number_input(
    "Training problems per round",
    min_value=1,
    value=20,
    key="improve.train",
    help="Each round searches this many fresh training problems and learns from the trees.",
)
eval_problems = columns[1].number_input(
    "Held-out problems",
    min_value=1,
    value=20,
    key="improve.eval",
    help="Greedy and MCTS accuracy are measured on these, the same set every round.",
)
simulations = columns[2].number_input(
    "Simulations per problem",
    min_value=1,
    value=16,
    key="improve.simulations",
)
use_gold = st.checkbox(
    "Use gold answers for labels",
    value=True,
    key="improve.gold",
    help="Keep verified-correct trajectories for SFT and label the value head, PRM and ORM by "
    "checking answers. Off: the critics pick the data (no ORM training).",
)
extra = st.text_input(
    "More `canopy improve` options",
    key="improve.extra",
    placeholder="--sft-max-steps 50 --dpo",
    help="Passed to the command as typed; `canopy improve --help` lists them.",
)
job = st.session_state.get(JOB_KEY)
busy = job is not None and job.alive
if st.button("Start iteration", type="primary", disabled=busy):
    try:
        extra_arguments = shlex.split(extra)
    except ValueError as exc:
        st.error(f"Cannot read the extra options: {exc}")
    else:
        arguments = [
            "improve", "--model", model, "--task", task, "--db", url,
            "--iterations", str(iterations), "--train-problems", str(train_problems),
            "--eval-problems", str(eval_problems), "--simulations", str(simulations),
            "--mine-use-gold", "true" if use_gold else "false",
            *extra_arguments,
        ]  # fmt: skip
        st.session_state[JOB_KEY] = start_job("improve", arguments, db_url=url)
        st.rerun()


def _job():
    return st.session_state.get(JOB_KEY)


def _running_iterations():
    if data.store_problem(url) is not None:
        return None
    iterations = data.iterations(url)
    return iterations[iterations["status"] == "running"]


def follow(was_alive: bool) -> None:
    """The session's job and every running iteration, re-read every 2 s while anything runs."""
    job = _job()
    if job is not None:
        st.caption(f"Your improve job: {'running' if job.alive else f'exited with code {job.returncode}'}")
        if job.alive and st.button("Stop iteration", key="improve.stop"):
            job.stop()
            st.toast("Stopping: the loop records the iteration as interrupted; `--resume` continues it.")
        with st.expander("Job output", expanded=job.returncode not in (0, None)):
            untrusted(job.output_tail(lines=15), empty="(no output yet: loading the model)")
    active = _running_iterations()
    if active is None:
        if job is not None and job.alive:
            st.info("Waiting for the job to create the database…", icon=":material/hourglass_top:")
    elif not active.empty:
        st.subheader("In progress")
        for row in active.itertuples(index=False):
            updated = data.as_utc(row.updated_at)
            st.markdown(f"**Iteration {row.id}** ({row.name}) · stage: `{row.stage or 'starting'}`")
            if updated:
                st.caption(f"last update {updated:%Y-%m-%d %H:%M:%S} UTC")
    alive = (job is not None and job.alive) or (active is not None and not active.empty)
    if was_alive and not alive:
        st.rerun(scope="app")  # finished: redraw the history once, and stop polling


job, running = _job(), _running_iterations()
alive = (job is not None and job.alive) or (running is not None and not running.empty)
st.fragment(follow, run_every=2 if alive else None)(alive)
if running is None and job is not None and job.alive:
    st.stop()  # the job creates the database; the history follows once it has run
require_store(url)
iterations = data.iterations(url)
st.subheader("Iteration history")
if iterations.empty:
    st.info(
        "No iterations yet. Once `canopy improve` has run, each iteration's accuracy, data sizes and losses "
        "appear here."
    )
    st.stop()

names = dict(zip(iterations["id"], iterations["name"], strict=True))
st.dataframe(
    iterations.assign(
        parent=[names.get(p, "") if data.present(p) else "" for p in iterations["parent_id"]],
        created=[data.as_utc(c).strftime("%Y-%m-%d %H:%M") for c in iterations["created_at"]],
        checkpoint=iterations["checkpoint_path"].fillna(""),
    )[["id", "name", "parent", "model", "status", "stage", "checkpoint", "created"]],
    hide_index=True,
)
table = metric_table(iterations)
if table.empty or table.columns.empty:
    st.info("The iterations have no numeric metrics yet.")
else:
    charts = grouped(table)
    columns = st.columns(min(3, len(charts)))
    for position, (title, frame) in enumerate(charts.items()):
        with columns[position % len(columns)]:
            st.plotly_chart(metric_figure(title, frame), key=f"improve.chart.{position}")
    with st.expander("All metrics as a table"):
        st.dataframe(table)
st.page_link(
    "views/trees.py",
    label="Compare two iterations' trees on the same problem (Trees → Compare)",
    icon=":material/compare:",
)
st.page_link(
    "views/rounds.py",
    label="Follow one held-out problem through every round, side by side (Rounds)",
    icon=":material/view_week:",
)
