"""StarCoder2 (``Starcoder2ForCausalLM``): LayerNorm, biases everywhere (``use_bias``), a
GELU MLP (c_fc, c_proj), grouped-query attention, RoPE and a sliding window."""

from __future__ import annotations

from ..types import Config, layer_windows
from .common import llama_names
from .llama import llama_like


def _traits(c: Config) -> dict:
    bias = bool(c.get("use_bias", True))
    return {
        "qkv_bias": bias,
        "attn_out_bias": bias,
        "mlp_bias": bias,
        "layer_windows": layer_windows(c, int(c["num_hidden_layers"])),
    }


STARCODER2 = llama_like(
    "starcoder2",
    ("Starcoder2ForCausalLM",),
    _traits,
    tensors=llama_names(gate=None, up="mlp.c_fc", down="mlp.c_proj"),
    norm="layernorm",
    gated_mlp=False,
    norm_eps=("norm_epsilon",),
    default_activation="gelu_pytorch_tanh",
    default_tied=True,
    examples=("bigcode/starcoder2-3b", "bigcode/starcoder2-7b"),
)
