"""Shared test setup: offline, quiet, and the tests folder importable (``import helpers``)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# Set before anything imports transformers/huggingface_hub: never reach the hub.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("HYPERDEX_PROGRESS", "0")

_TESTS = str(Path(__file__).resolve().parent)
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory):
    """A tiny random Llama as a Hugging Face folder (2 layers, GQA, vocab 128), for the tests
    of the tools and the backends. Treat it as read-only (copy it to change it)."""
    import torch
    import transformers

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
