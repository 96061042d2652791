"""GPTBigCode / StarCoder (``GPTBigCodeForCausalLM``): GPT-2's block with multi-query
attention (``multi_query``), a fused c_attn stored as a Linear ([q; k; v] rows for MQA, rows
per head otherwise) and learned positions."""

from __future__ import annotations

from ..types import HEAD_SPLIT, ROW_SPLIT, Architecture, TensorRule
from .common import GPT2_CONFIG_KEYS, linear_rules, norm_rules

_P = "transformer.h.{i}."
_QKV = ("blk.{i}.attn_q.weight", "blk.{i}.attn_k.weight", "blk.{i}.attn_v.weight")
_QKV_BIAS = ("blk.{i}.attn_q.bias", "blk.{i}.attn_k.bias", "blk.{i}.attn_v.bias")

GPT_BIGCODE = Architecture(
    family="gpt_bigcode",
    hf_names=("GPTBigCodeForCausalLM",),
    **GPT2_CONFIG_KEYS,
    kv_heads_of=lambda c: 1 if c.get("multi_query", True) else int(c["n_head"]),
    norm="layernorm",
    positions="learned",
    gated_mlp=False,
    default_activation="gelu_pytorch_tanh",
    tensors=(
        TensorRule("transformer.wte.weight", ("tok_embd.weight",)),
        TensorRule("transformer.wpe.weight", ("pos_embd.weight",)),
        *norm_rules(_P + "ln_1", "blk.{i}.attn_norm"),
        TensorRule(_P + "attn.c_attn.weight", _QKV, ROW_SPLIT, when="multi_query"),
        TensorRule(_P + "attn.c_attn.bias", _QKV_BIAS, ROW_SPLIT, when="multi_query"),
        TensorRule(_P + "attn.c_attn.weight", _QKV, HEAD_SPLIT, when="!multi_query"),
        TensorRule(_P + "attn.c_attn.bias", _QKV_BIAS, HEAD_SPLIT, when="!multi_query"),
        *linear_rules(_P + "attn.c_proj", "blk.{i}.attn_output", "attn_out_bias"),
        *norm_rules(_P + "ln_2", "blk.{i}.ffn_norm"),
        *linear_rules(_P + "mlp.c_fc", "blk.{i}.ffn_up", "mlp_bias"),
        *linear_rules(_P + "mlp.c_proj", "blk.{i}.ffn_down", "mlp_bias"),
        *norm_rules("transformer.ln_f", "output_norm"),
        TensorRule("lm_head.weight", ("output.weight",), when="untied"),
    ),
    ignored=(r"transformer\.h\.\d+\.attn\.(masked_)?bias", r"lm_head\.weight"),
    traits=lambda c: {
        "qkv_bias": True,
        "attn_out_bias": True,
        "mlp_bias": True,
        "multi_query": bool(c.get("multi_query", True)),
        "attn_scale": None if c.get("scale_attn_weights", True) else 1.0,
    },
    examples=("bigcode/starcoderbase-1b", "bigcode/gpt_bigcode-santacoder"),
)
