"""Qwen2 (``Qwen2ForCausalLM``): Llama with q/k/v biases; sliding windows on the layers at
or past ``max_window_layers`` when ``use_sliding_window`` (transformers' ``layer_types``)."""

from __future__ import annotations

from ..types import Config, layer_windows
from .llama import llama_like


def _windows(c: Config) -> list[int]:
    layers = int(c["num_hidden_layers"])
    if c.get("layer_types") is not None or not c.get("use_sliding_window"):
        return layer_windows(c, layers, sliding=False)
    first = int(c.get("max_window_layers", layers))
    window = int(c.get("sliding_window") or 0)
    return [window if i >= first else 0 for i in range(layers)]


QWEN2 = llama_like(
    "qwen2",
    ("Qwen2ForCausalLM",),
    lambda c: {
        "qkv_bias": True,
        "attn_out_bias": False,
        "mlp_bias": False,
        "layer_windows": _windows(c),
    },
    examples=("Qwen/Qwen2.5-0.5B", "Qwen/Qwen2-1.5B"),
)
