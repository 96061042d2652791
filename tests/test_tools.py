"""The command-line tools: hdex-compile (scripted, no terminal) and hdex-objdump."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("hf") / "tiny-llama"
    config = transformers.LlamaConfig(
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=128,
        max_position_embeddings=64,
    )
    transformers.LlamaForCausalLM(config).save_pretrained(folder)
    return folder


def run_tool(module: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HYPERDEX_PROGRESS": "0"}
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        env=env,
        timeout=300,
    )


def test_compile_then_objdump(tiny_llama, tmp_path):
    done = run_tool(
        "hyperdex.tools.cli",
        "--model",
        str(tiny_llama),
        "--prefix",
        str(tmp_path),
        "--max-length",
        "64",
        "--num-device",
        "1",
    )
    assert done.returncode == 0, done.stderr
    assert "Compiled model at" in done.stdout
    assert "hyperdex compiler" in done.stdout  # the banner
    folder = done.stdout.rsplit("Compiled model at", 1)[1].strip()
    listing = run_tool("hyperdex.tools.objdump", folder)
    assert listing.returncode == 0, listing.stderr
    text = listing.stdout
    assert "prefill program" in text and "decode program" in text
    # Regions are named from the memory map, and every layer's weights appear.
    assert "blk.1.attn_qkv" in text and "tok_embd" in text
    assert text.count("ATTN ") == 4  # two layers, two programs
    single = run_tool("hyperdex.tools.objdump", os.path.join(folder, "inst", "decode.bin"))
    assert single.returncode == 0 and "decode program" in single.stdout


def test_compile_without_terminal_needs_model(tmp_path):
    done = run_tool("hyperdex.tools.cli", "--prefix", str(tmp_path))
    assert done.returncode == 2
    assert "--model" in done.stderr


def test_compile_rejection_exit_code(tiny_llama, tmp_path):
    done = run_tool(
        "hyperdex.tools.cli",
        "--model",
        str(tiny_llama),
        "--prefix",
        str(tmp_path),
        "--num-device",
        "3",
    )
    assert done.returncode == 1
    assert "power of two" in done.stderr


def test_objdump_on_a_corrupt_program(tmp_path):
    bad = tmp_path / "decode.bin"
    bad.write_bytes(b"HDXPROG\0" + bytes(100))
    done = run_tool("hyperdex.tools.objdump", str(bad))
    assert done.returncode == 1
    assert "recompile" in done.stderr
