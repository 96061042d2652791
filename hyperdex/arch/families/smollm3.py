"""SmolLM3 (``SmolLM3ForCausalLM``): Llama whose every ``no_rope_layer_interval``-th layer has
no rotary positions (``no_rope_layers``: 1 rotates, 0 does not)."""

from __future__ import annotations

from ..types import Config, layer_windows
from .llama import attention_biases, llama_like


def _traits(c: Config) -> dict:
    layers = int(c["num_hidden_layers"])
    rope = c.get("no_rope_layers") or [1] * layers
    return {
        **attention_biases(c),
        "layer_rope": [1 if r else 0 for r in rope],
        "layer_windows": layer_windows(c, layers, bool(c.get("use_sliding_window", False))),
    }


SMOLLM3 = llama_like(
    "smollm3",
    ("SmolLM3ForCausalLM",),
    _traits,
    default_tied=True,
    examples=("HuggingFaceTB/SmolLM3-3B",),
)
