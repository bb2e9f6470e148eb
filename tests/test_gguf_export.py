"""HF checkpoints into GGUF with llama.cpp's own converter, so the llamacpp
backend runs what the improve loop trains (``engine.gguf_export``)."""

from __future__ import annotations

import importlib.util
import tarfile

import pytest

from engine.errors import ModelError
from engine.gguf_export import _extract_converter, converted_gguf, hf_to_gguf

needs_llama_cpp = pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None,
    reason="llama-cpp-python is not installed (the [cpu] extra)",
)


def _sdist(path, files: dict[str, str]):
    with tarfile.open(path, "w:gz") as archive:
        for name, text in files.items():
            source = path.parent / "src" / name
            source.parent.mkdir(parents=True, exist_ok=True)
            source.write_text(text)
            archive.add(source, arcname=name)
    return path


def test_only_the_converter_and_its_package_leave_the_sdist(tmp_path) -> None:
    sdist = _sdist(
        tmp_path / "llama_cpp_python-9.9.9.tar.gz",
        {
            "llama_cpp_python-9.9.9/vendor/llama.cpp/convert_hf_to_gguf.py": "print('convert')\n",
            "llama_cpp_python-9.9.9/vendor/llama.cpp/conversion/__init__.py": "",
            "llama_cpp_python-9.9.9/vendor/llama.cpp/conversion/llama.py": "LLAMA = 1\n",
            "llama_cpp_python-9.9.9/vendor/llama.cpp/gguf-py/gguf/__init__.py": "",
            "llama_cpp_python-9.9.9/vendor/llama.cpp/src/llama.cpp": "int main() {}\n",
            "llama_cpp_python-9.9.9/llama_cpp/__init__.py": "",
        },
    )
    target = tmp_path / "tree"
    _extract_converter(sdist, target)
    found = sorted(path.relative_to(target).as_posix() for path in target.rglob("*") if path.is_file())
    assert found == [
        "conversion/__init__.py",
        "conversion/llama.py",
        "convert_hf_to_gguf.py",
        "gguf-py/gguf/__init__.py",
    ]


def test_an_sdist_without_the_converter_is_refused(tmp_path) -> None:
    sdist = _sdist(
        tmp_path / "llama_cpp_python-9.9.9.tar.gz",
        {"llama_cpp_python-9.9.9/vendor/llama.cpp/convert_hf_to_gguf.py": ""},
    )
    with pytest.raises(ModelError, match="holds no vendor/llama.cpp/conversion, gguf-py"):
        _extract_converter(sdist, tmp_path / "tree")


def test_a_failed_conversion_says_why_and_leaves_no_file(tmp_path, monkeypatch) -> None:
    tree = tmp_path / "llama.cpp"
    tree.mkdir()
    (tree / "convert_hf_to_gguf.py").write_text(
        "import sys\nsys.exit('ERROR: model architecture not supported')\n"
    )
    monkeypatch.setenv("CANOPY_LLAMA_CPP_DIR", str(tree))
    out = tmp_path / "out" / "model.gguf"
    with pytest.raises(ModelError, match="to GGUF failed: ERROR: model architecture not supported"):
        hf_to_gguf(tmp_path, out)
    assert not out.exists() and list(out.parent.iterdir()) == []
    with pytest.raises(ModelError, match="unknown GGUF weight type 'q2'"):
        hf_to_gguf(tmp_path, out, outtype="q2")


@pytest.mark.slow
@needs_llama_cpp
def test_a_converted_checkpoint_decodes_like_its_hf_original() -> None:
    """smollm2's HF directory (what training writes) through the real converter
    (fetched from the sdist on first use): the llamacpp policy on the f32 GGUF
    greedily writes what the hf policy writes from the same weights."""
    from engine.models import prepare_preset
    from engine.policies import load_policy

    hf_dir = prepare_preset("smollm2-135m")
    gguf = converted_gguf(hf_dir, outtype="f32")
    assert gguf.read_bytes()[:4] == b"GGUF"
    assert converted_gguf(hf_dir, outtype="f32") == gguf  # converted once, then reused
    prompt = "Question: Sam has 4 boxes with 6 pens in each box. How many pens does he have?\nAnswer:"
    texts = []
    for backend in ("hf", "llamacpp"):
        policy = load_policy(str(hf_dir), backend=backend)
        [[option]] = policy.complete(
            [policy.root_state(prompt)],
            n=1,
            termination=lambda text: None,
            max_tokens=12,
            temperature=0.0,
            seed=0,
        )
        texts.append(option.text)
    assert texts[0] and texts[0] == texts[1]
