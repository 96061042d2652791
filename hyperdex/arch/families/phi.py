"""Phi-1/1.5/2 (``PhiForCausalLM``): a parallel block off one LayerNorm, partial rotary,
biases everywhere (the LM head's too), an optional q/k LayerNorm shared by all heads."""

from __future__ import annotations

from ..types import TILE, TensorRule
from .common import llama_names
from .llama import llama_like

_P = "model.layers.{i}.self_attn."

PHI = llama_like(
    "phi",
    ("PhiForCausalLM",),
    lambda c: {
        "qkv_bias": True,
        "attn_out_bias": True,
        "mlp_bias": True,
        "lm_head_bias": True,
        "parallel_block": True,
        "shared_norm": True,
        "qk_norm": bool(c.get("qk_layernorm", False)),
        "qk_norm_bias": bool(c.get("qk_layernorm", False)),
    },
    tensors=llama_names(
        ffn_norm=None,
        final_norm="model.final_layernorm",
        attn_out="self_attn.dense",
        gate=None,
        up="mlp.fc1",
        down="mlp.fc2",
    )
    + tuple(
        TensorRule(f"{_P}{w}_layernorm.{p}", (f"blk.{{i}}.attn_{w}_norm.{p}",), TILE, "qk_norm")
        for w in ("q", "k")
        for p in ("weight", "bias")
    ),
    norm="layernorm",
    gated_mlp=False,
    norm_eps=("layer_norm_eps",),
    default_activation="gelu_new",
    examples=("microsoft/phi-1_5", "microsoft/phi-2"),
)
