"""Cohere Command R7B / Command A (``Cohere2ForCausalLM``): Cohere's parallel block with
sliding and global layers (``layer_types``); only the sliding layers rotate."""

from __future__ import annotations

from ..types import Config, layer_windows
from .cohere import COHERE
from .common import llama_names
from .llama import attention_biases, llama_like


def _traits(c: Config) -> dict:
    windows = layer_windows(c, int(c["num_hidden_layers"]))
    return {
        **attention_biases(c),
        "norm_bias": False,
        "parallel_block": True,
        "shared_norm": True,
        "rope_style": "gptj",
        "logit_scale": float(c.get("logit_scale", 1.0)),
        "layer_windows": windows,
        "layer_rope": [1 if w else 0 for w in windows],
    }


COHERE2 = llama_like(
    "cohere2",
    ("Cohere2ForCausalLM",),
    _traits,
    tensors=llama_names(ffn_norm=None),
    norm=COHERE.norm,
    norm_eps=COHERE.norm_eps,
    default_tied=True,
    examples=("CohereLabs/c4ai-command-r7b-12-2024",),
)
