"""GPT-2 (``GPT2LMHeadModel``): learned positions, Conv1D weights, a fused c_attn."""

from __future__ import annotations

from ..types import CONV1D_SPLIT, TRANSPOSE, VECTOR_SPLIT, Architecture, TensorRule
from .common import GPT2_CONFIG_KEYS

GPT2 = Architecture(
    family="gpt2",
    hf_names=("GPT2LMHeadModel",),
    **GPT2_CONFIG_KEYS,
    norm="layernorm",
    positions="learned",
    gated_mlp=False,
    tensors=(
        TensorRule("transformer.wte.weight", ("tok_embd.weight",)),
        TensorRule("transformer.wpe.weight", ("pos_embd.weight",)),
        TensorRule("transformer.h.{i}.ln_1.weight", ("blk.{i}.attn_norm.weight",)),
        TensorRule("transformer.h.{i}.ln_1.bias", ("blk.{i}.attn_norm.bias",)),
        TensorRule(
            "transformer.h.{i}.attn.c_attn.weight",
            ("blk.{i}.attn_q.weight", "blk.{i}.attn_k.weight", "blk.{i}.attn_v.weight"),
            CONV1D_SPLIT,
        ),
        TensorRule(
            "transformer.h.{i}.attn.c_attn.bias",
            ("blk.{i}.attn_q.bias", "blk.{i}.attn_k.bias", "blk.{i}.attn_v.bias"),
            VECTOR_SPLIT,
        ),
        TensorRule(
            "transformer.h.{i}.attn.c_proj.weight", ("blk.{i}.attn_output.weight",), TRANSPOSE
        ),
        TensorRule("transformer.h.{i}.attn.c_proj.bias", ("blk.{i}.attn_output.bias",)),
        TensorRule("transformer.h.{i}.ln_2.weight", ("blk.{i}.ffn_norm.weight",)),
        TensorRule("transformer.h.{i}.ln_2.bias", ("blk.{i}.ffn_norm.bias",)),
        TensorRule("transformer.h.{i}.mlp.c_fc.weight", ("blk.{i}.ffn_up.weight",), TRANSPOSE),
        TensorRule("transformer.h.{i}.mlp.c_fc.bias", ("blk.{i}.ffn_up.bias",)),
        TensorRule("transformer.h.{i}.mlp.c_proj.weight", ("blk.{i}.ffn_down.weight",), TRANSPOSE),
        TensorRule("transformer.h.{i}.mlp.c_proj.bias", ("blk.{i}.ffn_down.bias",)),
        TensorRule("transformer.ln_f.weight", ("output_norm.weight",)),
        TensorRule("transformer.ln_f.bias", ("output_norm.bias",)),
        TensorRule("lm_head.weight", ("output.weight",), when="untied"),
    ),
    ignored=(r"transformer\.h\.\d+\.attn\.(masked_)?bias", r"lm_head\.weight"),
    traits=lambda c: {
        "qkv_bias": True,
        "attn_out_bias": True,
        "mlp_bias": True,
        "attn_scale": None if c.get("scale_attn_weights", True) else 1.0,
    },
    examples=("openai-community/gpt2", "distilbert/distilgpt2"),
    unsupported=(
        ("scale_attn_by_inverse_layer_idx", bool, "per-layer attention scaling"),
        ("reorder_and_upcast_attn", bool, "reordered upcast attention"),
        ("add_cross_attention", bool, "cross-attention"),
    ),
)
