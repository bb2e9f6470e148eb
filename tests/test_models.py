"""Model names, preset assembly and GGUF conversion (engine/models.py, engine/model_files.py)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine import model_files, models
from engine.models import PRESETS, ModelError, ModelSpec, resolve_model


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh, empty Canopy cache for one test."""
    directory = tmp_path / "cache"
    monkeypatch.setenv("CANOPY_CACHE", str(directory))
    return directory


def test_cache_dir_prefers_canopy_cache_then_xdg_then_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CANOPY_CACHE", str(tmp_path / "canopy"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert models.cache_dir() == tmp_path / "canopy"
    monkeypatch.setenv("CANOPY_CACHE", "")
    assert models.cache_dir() == tmp_path / "xdg" / "canopy"
    monkeypatch.delenv("CANOPY_CACHE")
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert models.cache_dir() == tmp_path / "home" / ".cache" / "canopy"


@pytest.mark.parametrize("name", list(PRESETS))
def test_resolve_preset(name: str) -> None:
    spec = resolve_model(name)
    assert (spec.kind, spec.preset, spec.name) == ("preset", name, name)
    assert Path(spec.path).is_absolute()


def test_resolve_preset_paths(cache: Path) -> None:
    assert resolve_model("smollm2-135m").path.endswith("SmolLM2-135M-Instruct.Q4_1.gguf")
    assert Path(resolve_model("qwen2.5-coder-0.5b").path) == cache / "models/qwen2.5-coder-0.5b/model.gguf"
    assert (Path(resolve_model("minilm").path) / "modules.json").is_file()


def test_resolve_hf_directory(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    spec = resolve_model(str(tmp_path))
    assert (spec.kind, spec.path, spec.preset) == ("hf_dir", str(tmp_path.resolve()), None)


def test_resolve_directory_without_config_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="no config.json"):
        resolve_model(str(tmp_path))


def test_resolve_gguf_file(tmp_path: Path) -> None:
    gguf = tmp_path / "mine.GGUF"
    gguf.write_bytes(b"GGUF")
    spec = resolve_model(str(gguf))
    assert (spec.kind, spec.path) == ("gguf", str(gguf.resolve()))


def test_resolve_other_file_is_an_error(tmp_path: Path) -> None:
    weights = tmp_path / "weights.bin"
    weights.write_bytes(b"\0")
    with pytest.raises(ModelError, match="neither a .gguf file nor a model directory"):
        resolve_model(str(weights))


@pytest.mark.parametrize("name", ["./missing.gguf", "/no/such/dir", "~/no-such-model", "a/b/c", "org/x.gguf"])
def test_resolve_missing_path_is_an_error(name: str) -> None:
    with pytest.raises(ModelError, match=f"no model at {name}"):
        resolve_model(name)


@pytest.mark.parametrize("name", ["Qwen/Qwen2.5-0.5B-Instruct", "HuggingFaceTB/SmolLM2-135M", "org/v1.5_b"])
def test_resolve_hub_id(name: str) -> None:
    assert resolve_model(name) == ModelSpec(name=name, kind="hub", path=name)


def test_resolve_unknown_bare_name_lists_presets() -> None:
    with pytest.raises(ModelError) as error:
        resolve_model("llama")
    assert all(name in str(error.value) for name in PRESETS)


def test_resolve_empty_name_is_an_error() -> None:
    with pytest.raises(ModelError, match="empty"):
        resolve_model("  ")


@pytest.mark.parametrize(
    "fields",
    [
        {"name": "x", "kind": "cloud", "path": "x"},
        {"name": "x", "kind": "preset", "path": "x"},
        {"name": "x", "kind": "hub", "path": "x", "preset": "minilm"},
        {"name": "x", "kind": "preset", "path": "x", "preset": "gpt-5"},
        {"name": "x", "kind": "hub", "path": ""},
        {"name": "", "kind": "hub", "path": "x"},
    ],
)
def test_model_spec_validates(fields: dict[str, str]) -> None:
    with pytest.raises(ModelError):
        ModelSpec(**fields)  # type: ignore[arg-type]


def test_hub_id_offline_names_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    spec = resolve_model("canopy-tests/no-such-model")
    with pytest.raises(ModelError) as error:
        models.load_causal_lm(spec)
    assert str(error.value) == (
        "cannot download 'canopy-tests/no-such-model': no connection to the model hub; pass a local "
        "directory or a .gguf file, or a preset (see `canopy models`)"
    )


def test_embedding_preset_is_not_a_policy() -> None:
    with pytest.raises(ModelError, match="embedding model, not a policy"):
        models.load_causal_lm(resolve_model("minilm"))


def test_hub_id_has_nothing_to_prepare() -> None:
    with pytest.raises(ModelError, match="hub id"):
        models.prepare_hf_dir(resolve_model("org/name"))


def test_embedding_model_path(tmp_path: Path) -> None:
    assert models.embedding_model_path() == Path(resolve_model("minilm").path)
    (tmp_path / "modules.json").write_text("[]")
    assert models.embedding_model_path(str(tmp_path)) == tmp_path.resolve()
    with pytest.raises(ModelError, match="policy, not an embedding model"):
        models.embedding_model_path("smollm2-135m")
    with pytest.raises(ModelError, match="no sentence-transformers model"):
        models.embedding_model_path(str(tmp_path / "missing"))


def test_user_gguf_cache_key_follows_path_size_and_mtime(cache: Path, tmp_path: Path) -> None:
    gguf = tmp_path / "mine.gguf"
    gguf.write_bytes(b"GGUF v1")
    first = models._gguf_cache_dir(gguf)
    assert first.parent == cache / "models" and first.name.startswith("gguf-")
    assert models._gguf_cache_dir(gguf) == first
    stat = gguf.stat()
    os.utime(gguf, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert models._gguf_cache_dir(gguf) != first
    copy = tmp_path / "copy.gguf"
    copy.write_bytes(gguf.read_bytes())
    assert models._gguf_cache_dir(copy) != models._gguf_cache_dir(gguf)


def test_preset_status_reads_metadata_without_torch(tmp_path: Path) -> None:
    script = (
        "import json, sys\n"
        "from engine.models import preset_status\n"
        "rows = preset_status()\n"
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, 'heavy import'\n"
        "print(json.dumps(rows))\n"
    )
    environment = {**os.environ, "CANOPY_CACHE": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=environment, check=True
    )
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert list(rows) == list(PRESETS)
    qwen = rows["qwen2.5-coder-0.5b"]
    assert (qwen["role"], qwen["installed"], qwen["prepared"]) == ("policy", True, False)
    assert qwen["size"] == 491_400_064
    assert len(qwen["sources"]) == 6
    assert qwen["gguf"] == str(tmp_path / "models/qwen2.5-coder-0.5b/model.gguf")
    assert rows["minilm"]["role"] == "embedding"
    assert rows["minilm"]["prepared"] and rows["minilm"]["hf_dir"] is None
    assert all(row["description"] and row["size"] > 0 for row in rows.values())


# Assembly of chunked GGUF files, on small fake chunks.


def _fake_parts(directory: Path) -> tuple[list[Path], bytes]:
    directory.mkdir(parents=True, exist_ok=True)
    contents = [b"GGUF" + bytes(range(256)) * 3, b"middle chunk" * 50, b"tail"]
    parts = []
    for index, content in enumerate(contents, start=1):
        part = directory / f"part{index:02d}.bin"
        part.write_bytes(content)
        parts.append(part)
    return parts, b"".join(contents)


def _assemble_fake(parts: list[Path], whole: bytes, target: Path, progress: list[int] | None = None) -> Path:
    return model_files.assemble(
        parts,
        target,
        size=len(whole),
        sha256=hashlib.sha256(whole).hexdigest(),
        progress=None if progress is None else lambda done, total: progress.append(done),
    )


def _stamp(target: Path) -> dict[str, object]:
    return json.loads(target.with_name(target.name + ".sha256").read_text())


def test_assemble_concatenates_in_order_and_stamps(tmp_path: Path) -> None:
    parts, whole = _fake_parts(tmp_path / "parts")
    target = tmp_path / "out" / "model.gguf"
    progress: list[int] = []
    assert _assemble_fake(parts, whole, target, progress) == target
    assert target.read_bytes() == whole
    assert progress[-1] == len(whole)
    stamp = _stamp(target)
    assert stamp == {
        "sha256": hashlib.sha256(whole).hexdigest(),
        "size": len(whole),
        "mtime_ns": target.stat().st_mtime_ns,
    }
    assert sorted(path.name for path in target.parent.iterdir()) == ["model.gguf", "model.gguf.sha256"]


def test_assemble_trusts_a_matching_stamp_without_hashing(tmp_path: Path) -> None:
    parts, whole = _fake_parts(tmp_path / "parts")
    target = tmp_path / "model.gguf"
    _assemble_fake(parts, whole, target)
    mtime = target.stat().st_mtime_ns
    progress: list[int] = []
    _assemble_fake(parts, whole, target, progress)
    assert progress == [] and target.stat().st_mtime_ns == mtime


def test_assemble_reverifies_without_stamp_and_keeps_a_good_file(tmp_path: Path) -> None:
    parts, whole = _fake_parts(tmp_path / "parts")
    target = tmp_path / "model.gguf"
    _assemble_fake(parts, whole, target)
    target.with_name("model.gguf.sha256").unlink()
    mtime = target.stat().st_mtime_ns
    progress: list[int] = []
    _assemble_fake(parts, whole, target, progress)
    assert progress[-1] == len(whole)  # hashed once ...
    assert target.stat().st_mtime_ns == mtime  # ... and not rewritten
    assert _stamp(target)["mtime_ns"] == mtime


def test_assemble_rebuilds_a_truncated_file(tmp_path: Path) -> None:
    parts, whole = _fake_parts(tmp_path / "parts")
    target = tmp_path / "model.gguf"
    target.write_bytes(whole[: len(whole) // 2])
    _assemble_fake(parts, whole, target)
    assert target.read_bytes() == whole


def test_assemble_rebuilds_a_corrupt_file_of_the_right_size(tmp_path: Path) -> None:
    parts, whole = _fake_parts(tmp_path / "parts")
    target = tmp_path / "model.gguf"
    _assemble_fake(parts, whole, target)
    stat = target.stat()
    target.write_bytes(b"X" * len(whole))
    # A write moves the mtime; set it explicitly so the test does not depend on
    # the filesystem's timestamp granularity.
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    _assemble_fake(parts, whole, target)
    assert target.read_bytes() == whole
    assert _stamp(target)["mtime_ns"] == target.stat().st_mtime_ns


def test_assemble_rejects_parts_with_the_wrong_digest(tmp_path: Path) -> None:
    parts, whole = _fake_parts(tmp_path / "parts")
    target = tmp_path / "out" / "model.gguf"
    with pytest.raises(ModelError, match="hash to"):
        model_files.assemble(parts, target, size=len(whole), sha256="0" * 64)
    assert list(target.parent.iterdir()) == []


def test_assemble_rejects_parts_of_the_wrong_size(tmp_path: Path) -> None:
    parts, whole = _fake_parts(tmp_path / "parts")
    with pytest.raises(ModelError, match="add up to"):
        _assemble_fake(parts, whole + b"!", tmp_path / "model.gguf")
    assert not (tmp_path / "model.gguf").exists()


@pytest.mark.slow
def test_qwen_preset_assembles_to_the_published_digest(cache: Path) -> None:
    preset = PRESETS["qwen2.5-coder-0.5b"]
    target = models._preset_gguf(preset, None)
    assert target == cache / "models" / preset.name / "model.gguf"
    assert target.stat().st_size == 491_400_064
    assert model_files.file_sha256(target, None) == preset.sha256
    progress: list[int] = []
    models._preset_gguf(preset, lambda done, total: progress.append(done))
    assert progress == []  # the stamp is trusted: no second hash of 491 MB
    shutil.rmtree(cache)  # pytest keeps recent temporary directories; this one holds 491 MB


# GGUF -> HF conversion, on the real smollm2 preset (one conversion per module).


@pytest.fixture(scope="module")
def smollm2_hf_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    with pytest.MonkeyPatch.context() as monkeypatch:
        cache = tmp_path_factory.mktemp("cache")
        monkeypatch.setenv("CANOPY_CACHE", str(cache))
        yield models.prepare_preset("smollm2-135m")
    shutil.rmtree(cache)  # half a gigabyte of fp32 weights


@pytest.mark.slow
def test_smollm2_converts_to_an_ordinary_hf_directory(smollm2_hf_dir: Path) -> None:
    assert smollm2_hf_dir == models.cache_dir() / "models" / "smollm2-135m" / "hf"
    config = json.loads((smollm2_hf_dir / "config.json").read_text())
    assert "quantization_config" not in config
    assert (smollm2_hf_dir / ".canopy-converted.json").is_file()
    assert [path.name for path in smollm2_hf_dir.parent.iterdir()] == ["hf"]  # no staging left
    marker = (smollm2_hf_dir / ".canopy-converted.json").stat().st_mtime_ns
    assert models.prepare_preset("smollm2-135m") == smollm2_hf_dir
    assert (smollm2_hf_dir / ".canopy-converted.json").stat().st_mtime_ns == marker  # not converted again
    status = {row["name"]: row for row in models.preset_status()}["smollm2-135m"]
    assert status["prepared"] and status["hf_dir"] == str(smollm2_hf_dir)


@pytest.mark.slow
def test_smollm2_reloads_as_an_ordinary_model_and_generates(smollm2_hf_dir: Path) -> None:
    import torch

    model, tokenizer = models.load_causal_lm(resolve_model("smollm2-135m"))
    assert getattr(model, "hf_quantizer", None) is None
    assert getattr(model.config, "quantization_config", None) is None
    assert not model.training
    assert tokenizer.chat_template and tokenizer.padding_side == "left"
    assert tokenizer.pad_token is not None
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 2 + 3?"}], add_generation_prompt=True, tokenize=False
    )
    inputs = tokenizer([prompt], return_tensors="pt")
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    new_tokens = output[0, inputs["input_ids"].shape[1] :]
    assert 1 <= len(new_tokens) <= 4
    assert tokenizer.decode(new_tokens, skip_special_tokens=True).strip()


@pytest.mark.slow
def test_hf_directory_loads_directly_in_the_requested_dtype(smollm2_hf_dir: Path) -> None:
    import torch

    model, _ = models.load_causal_lm(resolve_model(str(smollm2_hf_dir)), dtype=torch.bfloat16)
    assert model.dtype == torch.bfloat16
