"""Qwen3 (``Qwen3ForCausalLM``): Llama with a per-head RMSNorm of q and k before RoPE (one
gain shared by the heads) and head_dim set apart from hidden/heads."""

from __future__ import annotations

from ..types import TILE, Config, layer_windows
from .common import llama_names
from .llama import attention_biases, llama_like


def qwen3_traits(c: Config) -> dict:
    layers = int(c["num_hidden_layers"])
    sliding = bool(c.get("use_sliding_window", False))
    return {
        **attention_biases(c),
        "qk_norm": True,
        "layer_windows": layer_windows(c, layers, sliding),
    }


QWEN3 = llama_like(
    "qwen3",
    ("Qwen3ForCausalLM",),
    qwen3_traits,
    tensors=llama_names(qk_norms=("self_attn.q_norm", "self_attn.k_norm"), qk_norm_transform=TILE),
    examples=("Qwen/Qwen3-0.6B", "Qwen/Qwen3-8B"),
)
