"""Cohere Command-R (``CohereForCausalLM``): a parallel block off one LayerNorm without bias,
interleaved rotary, optional per-head q/k LayerNorm, logits scaled by ``logit_scale``."""

from __future__ import annotations

from ..types import FLATTEN, TensorRule
from .common import llama_names
from .llama import attention_biases, llama_like

_P = "model.layers.{i}.self_attn."

COHERE = llama_like(
    "cohere",
    ("CohereForCausalLM",),
    lambda c: {
        **attention_biases(c),
        "norm_bias": False,
        "parallel_block": True,
        "shared_norm": True,
        "rope_style": "gptj",
        "qk_norm": bool(c.get("use_qk_norm", False)),
        "logit_scale": float(c.get("logit_scale", 1.0)),
    },
    tensors=llama_names(ffn_norm=None)
    + (
        TensorRule(_P + "q_norm.weight", ("blk.{i}.attn_q_norm.weight",), FLATTEN, "qk_norm"),
        TensorRule(_P + "k_norm.weight", ("blk.{i}.attn_k_norm.weight",), FLATTEN, "qk_norm"),
    ),
    norm="layernorm",
    norm_eps=("layer_norm_eps",),
    default_tied=True,
    examples=("CohereForAI/c4ai-command-r-v01", "CohereForAI/aya-23-8B"),
)
