"""Search: pick a model, a problem and the search settings; start; watch the tree grow."""

import streamlit as st

import engine.config as search_config
from app import data
from app.engine_info import DEFAULT_MODEL, TASKS, policy_models
from app.jobs import config_arguments, search_arguments, start_job
from app.live import JOB_KEY, live_view
from app.search_form import critic_models_form, settings_form

url = data.db_url()
st.title("Search")
st.caption(
    "Runs `canopy search` in the background on one problem. Each simulation picks a promising "
    "partial solution, "
    "lets the model write a few next steps (options), drops near-duplicates, scores the new steps with the "
    "critics and backs the score up the tree."
)

job = st.session_state.get(JOB_KEY)
store_problem = data.store_problem(url)
if store_problem and not store_problem.startswith("no database"):
    st.error(f"Cannot use the database: {store_problem}")
    st.caption("Database URL")
    st.code(url, language=None)
live_runs = data.runs(url) if store_problem is None else None
running = live_runs[live_runs["state"] == "running"] if live_runs is not None else None

if job is not None:
    st.subheader("Your search" if job.alive else "Your last search")
    live_view(url)
    if not job.alive and st.button("Clear", help="Hide this search; it stays in the database."):
        del st.session_state[JOB_KEY]
        st.rerun()
elif running is not None and not running.empty:
    st.subheader("Searches running now")
    run_id = st.selectbox(
        "Watch a search started elsewhere (for example with `canopy search`)",
        running["id"].tolist(),
        format_func=lambda i: data.run_label(running[running["id"] == i].iloc[0]),
    )
    live_view(url, int(run_id))

st.subheader("New search")
models = policy_models()
names = [m.name for m in models]
descriptions = {m.name: m.description for m in models}
left, middle, right = st.columns(3)
with left:
    model = st.selectbox(
        "Policy model",
        [*names, "other"],
        index=names.index(DEFAULT_MODEL) if DEFAULT_MODEL in names else 0,
        format_func=lambda n: "Other: a local folder, GGUF file or hub id" if n == "other" else n,
        help="The language model that writes the reasoning steps. "
        + " ".join(f"{n}: {d}." for n, d in descriptions.items()),
        key="search.model",
    )
    if model == "other":
        model = st.text_input("Model path or id", key="search.model_path").strip()
    elif descriptions.get(model):
        st.caption(descriptions[model])
with middle:
    task = st.selectbox(
        "Task",
        TASKS,
        help="arithmetic: generated multi-step word problems with exact answers. gsm8k: grade-school math "
        "from a GSM8K-format JSONL file.",
        key="search.task",
    )
    data_path = ""
    if task == "gsm8k":
        data_path = st.text_input(
            "GSM8K JSONL file",
            key="search.data",
            help="Lines with `question` and `answer` ending in `#### N`.",
        ).strip()
with right:
    source = st.radio("Problem", ["From the task", "Type a question"], horizontal=True, key="search.source")
    question = answer = None
    index = 0
    if source == "From the task":
        index = int(
            st.number_input(
                "Problem number",
                min_value=0,
                value=0,
                step=1,
                key="search.index",
                help="Index in the task's test split (0 = first).",
            )
        )
    else:
        question = st.text_area("Question", key="search.question", height=100).strip()
        answer = (
            st.text_input("Gold answer (optional, to grade the result)", key="search.answer").strip() or None
        )


def rollout_model_picker() -> None:
    st.selectbox(
        "Rollout model",
        ["same", *names],
        format_func=lambda n: "Same as the policy" if n == "same" else n,
        help="A smaller, faster model can finish the rollouts (AlphaLLM's fast rollout).",
        key="search.rollout_model",
    )


critic_models: dict[str, str | None] = {}


def trained_critics() -> None:
    critic_models.update(critic_models_form(search_config))


values = settings_form(search_config, extras={"rollouts": rollout_model_picker, "critics": trained_critics})
rollout_choice = st.session_state.get("search.rollout_model", "same")

problems = []
try:
    config = search_config.SearchConfig(**values)
except (ValueError, TypeError) as exc:
    problems.append(str(exc))
if not model:
    problems.append("Name a model.")
if source == "Type a question" and not question:
    problems.append("Type a question, or pick a problem from the task.")
if task == "gsm8k" and not data_path:
    problems.append("The gsm8k task needs a JSONL file.")
for problem in problems:
    st.warning(problem)

busy = job is not None and job.alive
start = st.button(
    "Start search",
    type="primary",
    icon=":material/play_arrow:",
    disabled=bool(problems) or busy,
    help="One search at a time per browser tab: stop the current one first." if busy else None,
)
st.caption(
    "The search runs in the background and writes every simulation to the database: you can leave this page "
    "and come back, or open the tree on the Trees page while it grows."
)
if start:
    arguments = search_arguments(
        db_url=url,
        model=model,
        task=task,
        index=index,
        question=question,
        answer=answer,
        data_path=data_path or None,
        rollout_model=None if rollout_choice == "same" else rollout_choice,
        config_flags=config_arguments(config.to_dict(), search_config.SearchConfig())
        + [arg for name, path in critic_models.items() if path for arg in (f"--{name}-checkpoint", path)],
    )
    st.session_state[JOB_KEY] = start_job("search", arguments, db_url=url)
    st.rerun()
