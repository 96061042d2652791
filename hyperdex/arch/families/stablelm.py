"""StableLM (``StableLmForCausalLM``): LayerNorm, partial rotary, a gated MLP; optionally a
parallel residual off one norm, q/k/v biases, and per-head q/k LayerNorms (one HF module
per head)."""

from __future__ import annotations

from ..types import CONCAT, TensorRule
from .common import llama_names
from .llama import llama_like

_P = "model.layers.{i}.self_attn."

STABLELM = llama_like(
    "stablelm",
    ("StableLmForCausalLM",),
    lambda c: {
        "qkv_bias": bool(c.get("use_qkv_bias", False)),
        "attn_out_bias": False,
        "mlp_bias": False,
        "parallel_block": bool(c.get("use_parallel_residual", False)),
        "shared_norm": bool(c.get("use_parallel_residual", False)),
        "qk_norm": bool(c.get("qk_layernorm", False)),
    },
    tensors=llama_names()
    + (
        TensorRule(
            _P + "q_layernorm.norms.{h}.weight", ("blk.{i}.attn_q_norm.weight",), CONCAT, "qk_norm"
        ),
        TensorRule(
            _P + "k_layernorm.norms.{h}.weight", ("blk.{i}.attn_k_norm.weight",), CONCAT, "qk_norm"
        ),
    ),
    norm="layernorm",
    norm_eps=("layer_norm_eps",),
    examples=("stabilityai/stablelm-2-1_6b", "stabilityai/stablelm-3b-4e1t"),
)
