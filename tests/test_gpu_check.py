"""``bench/gpu_check.py`` on a CPU: tiny configs of both architectures through
every section, in bf16 as on the GPU, so the check cannot rot between GPU draws."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "gpu_check.py"
PRESETS = {"smollm2-135m", "qwen2.5-coder-0.5b"}
SECTIONS = {"model", "prefix_cache", "batched_vs_single", "resume", "throughput", "trainers"}


def _gpu_check(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=600, check=False
    )


def test_prepare_copies_configs_and_tokenizers_but_no_weights(tmp_path: Path) -> None:
    assets = tmp_path / "assets"
    prepared = _gpu_check("--prepare", str(assets))
    assert prepared.returncode == 0, prepared.stderr
    summary = json.loads(prepared.stdout)
    assert set(summary["copied"]) == PRESETS
    for preset in PRESETS:
        names = {path.name for path in (assets / preset).iterdir()}
        assert {"config.json", "tokenizer.json", "tokenizer_config.json"} <= names
        assert not [name for name in names if name.endswith((".safetensors", ".bin", ".gguf"))]
    assert summary["bytes"]["assets"] < 32 << 20 and summary["total_mib"] < 64


def test_check_passes_on_cpu_and_writes_every_section(tmp_path: Path) -> None:
    assets = tmp_path / "assets"
    assert _gpu_check("--prepare", str(assets)).returncode == 0
    out = tmp_path / "gpu_check.json"
    done = _gpu_check("--device", "cpu", "--assets", str(assets), "--out", str(out))
    report = json.loads(out.read_text())
    assert done.returncode == 0 and report["ok"], report["failures"] or done.stderr[-3000:]
    assert (report["device"], report["dtype"], report["failures"]) == ("cpu", "bfloat16", [])
    assert not report["environment"]["outside_pins"]
    assert set(report["models"]) == PRESETS
    for result in report["models"].values():
        assert SECTIONS <= set(result)
        assert result["model"]["layers"] == 2, "the CPU run shrinks the architecture"
        cache = result["prefix_cache"]
        assert cache["children"] > 0 and cache["cached_child_prefill_tokens"] == 0
        assert max(cache["logits_rel_error"], cache["hidden_rel_error"], cache["kv_rel_error"]) <= 0.05
        assert result["batched_vs_single"]["greedy"]["mismatch_gaps"] == []
        assert result["resume"]["equal"] and result["resume"]["nodes"] > 1
        rows = result["throughput"]["rows"]
        assert [row["batch"] for row in rows] == [2, 4]
        assert all(row["search_tokens_per_s"] > 0 and row["raw_generate_tokens_per_s"] > 0 for row in rows)
        trainers = result["trainers"]
        assert [trainers[kind]["steps"] for kind in ("sft", "dpo", "value")] == [1, 1, 1]
        assert trainers["sft"]["lora_weight_max_change"] > 0 and trainers["dpo"]["lora_weight_max_change"] > 0
        assert result["peak_memory_mib"] > 0


def test_check_without_assets_fails_and_still_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "gpu_check.json"
    done = _gpu_check("--device", "cpu", "--assets", str(tmp_path / "none"), "--out", str(out))
    report = json.loads(out.read_text())
    assert done.returncode == 1 and not report["ok"]
    assert len(report["failures"]) == 1 and "run --prepare first" in report["failures"][0]
