"""bench/search_cost.py on fakes: every key it promises, in one JSON object."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from tests.fakes import FakePolicy, fake_components

_spec = importlib.util.spec_from_file_location(
    "search_cost", Path(__file__).resolve().parents[1] / "bench" / "search_cost.py"
)
search_cost = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(search_cost)


def test_the_report_has_every_key(tmp_path, monkeypatch, capsys) -> None:
    policy = FakePolicy()
    monkeypatch.setattr(search_cost, "load_policy", lambda model, backend, **options: policy)
    monkeypatch.setattr(
        search_cost, "build_components", lambda config, model, policy: fake_components(policy, config)
    )
    config = tmp_path / "search.toml"
    config.write_text('simulations = 6\nsimilarity = "edit"\n')
    out = tmp_path / "cost.json"
    argv = ["--task", "arithmetic", "--n-problems", "2", "--offset", "0", "--config", str(config)]
    with pytest.warns(UserWarning, match="expand their leaves one at a time"):  # the fake cannot batch
        code = search_cost.main(
            [*argv, "--parallel-simulations", "2", "--raw-tokens", "8", "--out", str(out)]
        )
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report == json.loads(out.read_text())
    for key in (
        "mcts_s_per_problem",
        "sc_s_per_problem",
        "mcts_over_sc",
        "all_tokens_per_s_over_raw",
        "speedup_vs_sequential",
        "accuracy_mcts",
        "accuracy_sc",
        "peak_rss_mb",
    ):
        assert key in report, key
    assert report["problems"] == 2 and report["parallel_simulations"] == 2
    assert report["search"]["simulations"] == 6 and report["sc_samples"] >= 1
    assert report["generated_tokens_per_problem"]["mcts"] > 0 and report["raw_tokens_per_s"] > 0
    critics = report["critic_prefill"]
    assert critics["problems"] == 2 and critics["kept"]["scored_prompts"] > 0
    assert critics["kept"]["step_tokens_per_prompt"] > 0
    # llamacpp (the default backend) is counted without rubric prefixes too: the same search.
    assert critics["not_kept"]["scored_prompts"] == critics["kept"]["scored_prompts"]
