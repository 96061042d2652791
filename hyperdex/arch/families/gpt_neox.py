"""GPT-NeoX and Pythia (``GPTNeoXForCausalLM``): LayerNorm with bias, partial rotary, a GELU
MLP, a query_key_value matrix whose rows are grouped per head; a parallel residual off two
norms (``use_parallel_residual``, the default) or the sequential block."""

from __future__ import annotations

from ..types import HEAD_SPLIT, Architecture, TensorRule
from .common import linear_rules, norm_rules

_P = "gpt_neox.layers.{i}."

GPT_NEOX = Architecture(
    family="gpt_neox",
    hf_names=("GPTNeoXForCausalLM",),
    vocab_size=("vocab_size",),
    hidden_size=("hidden_size",),
    num_layers=("num_hidden_layers",),
    num_heads=("num_attention_heads",),
    num_kv_heads=("num_attention_heads",),
    intermediate_size=("intermediate_size",),
    max_positions=("max_position_embeddings",),
    norm_eps=("layer_norm_eps",),
    activation=("hidden_act",),
    norm="layernorm",
    positions="rope",
    gated_mlp=False,
    default_activation="gelu",
    default_tied=False,
    tensors=(
        TensorRule("gpt_neox.embed_in.weight", ("tok_embd.weight",)),
        *norm_rules(_P + "input_layernorm", "blk.{i}.attn_norm"),
        TensorRule(
            _P + "attention.query_key_value.weight",
            ("blk.{i}.attn_q.weight", "blk.{i}.attn_k.weight", "blk.{i}.attn_v.weight"),
            HEAD_SPLIT,
        ),
        TensorRule(
            _P + "attention.query_key_value.bias",
            ("blk.{i}.attn_q.bias", "blk.{i}.attn_k.bias", "blk.{i}.attn_v.bias"),
            HEAD_SPLIT,
            when="qkv_bias",
        ),
        *linear_rules(_P + "attention.dense", "blk.{i}.attn_output", "attn_out_bias"),
        *norm_rules(_P + "post_attention_layernorm", "blk.{i}.ffn_norm"),
        *linear_rules(_P + "mlp.dense_h_to_4h", "blk.{i}.ffn_up", "mlp_bias"),
        *linear_rules(_P + "mlp.dense_4h_to_h", "blk.{i}.ffn_down", "mlp_bias"),
        *norm_rules("gpt_neox.final_layer_norm", "output_norm"),
        TensorRule("embed_out.weight", ("output.weight",), when="untied"),
    ),
    ignored=(
        r"gpt_neox\.layers\.\d+\.attention\.(masked_)?bias",
        r"gpt_neox\.layers\.\d+\.attention\.rotary_emb\.inv_freq",
        r"gpt_neox\.rotary_emb\.inv_freq",
        r"embed_out\.weight",
    ),
    traits=lambda c: {
        "qkv_bias": bool(c.get("attention_bias", True)),
        "attn_out_bias": bool(c.get("attention_bias", True)),
        "mlp_bias": True,
        "parallel_block": bool(c.get("use_parallel_residual", True)),
    },
    examples=("EleutherAI/pythia-160m", "EleutherAI/gpt-neox-20b"),
)
