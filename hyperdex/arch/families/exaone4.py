"""EXAONE 4.0 (``Exaone4ForCausalLM``): a branch norm after attention and after the MLP (none
before), per-head q/k RMSNorm, sliding and global layers (``layer_types``) where only the
sliding ones rotate (all of them when the model has no window)."""

from __future__ import annotations

from ..types import TILE, Config, layer_windows
from .common import llama_names
from .llama import attention_biases, llama_like


def _traits(c: Config) -> dict:
    windows = layer_windows(c, int(c["num_hidden_layers"]))
    return {
        **attention_biases(c),
        "branch_input_norm": False,
        "branch_output_norm": True,
        "qk_norm": True,
        "layer_windows": windows,
        "layer_rope": [1 if w or not c.get("sliding_window") else 0 for w in windows],
    }


EXAONE4 = llama_like(
    "exaone4",
    ("Exaone4ForCausalLM",),
    _traits,
    tensors=llama_names(
        post_norms=("post_attention_layernorm", "post_feedforward_layernorm"),
        qk_norms=("self_attn.q_norm", "self_attn.k_norm"),
        qk_norm_transform=TILE,
    ),
    examples=("LGAI-EXAONE/EXAONE-4.0-1.2B", "LGAI-EXAONE/EXAONE-4.0-32B"),
)
