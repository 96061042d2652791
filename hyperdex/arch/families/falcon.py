"""Falcon (``FalconForCausalLM``): the 7B shape (multi-query attention, a parallel block off
one LayerNorm) and the 40B/180B ``new_decoder_architecture`` (grouped KV heads, a parallel
block off two norms, ln_attn and ln_mlp). ALiBi (Falcon-RW) is refused."""

from __future__ import annotations

from typing import Any

from ..types import GROUP_SPLIT, HEAD_SPLIT, ROW_SPLIT, Architecture, Config, TensorRule
from .common import linear_rules, norm_rules

_P = "transformer.h.{i}."
_QKV = ("blk.{i}.attn_q.weight", "blk.{i}.attn_k.weight", "blk.{i}.attn_v.weight")
_QKV_BIAS = ("blk.{i}.attn_q.bias", "blk.{i}.attn_k.bias", "blk.{i}.attn_v.bias")


def _two_norms(c: Config) -> bool:
    """ln_attn + ln_mlp (the 40B shape), as transformers decides it."""
    return bool(c.get("new_decoder_architecture")) and c.get("num_ln_in_parallel_attn") in (
        None,
        2,
    )


def _traits(c: Config) -> dict[str, Any]:
    parallel = bool(c.get("parallel_attn", True))
    bias = bool(c.get("bias", False))
    if c.get("new_decoder_architecture"):
        layout = "group_split"
    elif c.get("multi_query", True):
        layout = "row_split"
    else:
        layout = "head_split"
    return {
        "qkv_bias": bias,
        "attn_out_bias": bias,
        "mlp_bias": bias,
        "parallel_block": parallel,
        "shared_norm": parallel and not _two_norms(c),
        "falcon_two_norms": _two_norms(c),
        "falcon_one_norm": not _two_norms(c),
        **{f"falcon_{s}": s == layout for s in ("row_split", "head_split", "group_split")},
    }


def _kv_heads(c: Config) -> int:
    if c.get("new_decoder_architecture"):
        return int(c.get("num_kv_heads") or c["num_attention_heads"])
    return 1 if c.get("multi_query", True) else int(c["num_attention_heads"])


FALCON = Architecture(
    family="falcon",
    hf_names=("FalconForCausalLM",),
    vocab_size=("vocab_size",),
    hidden_size=("hidden_size",),
    num_layers=("num_hidden_layers",),
    num_heads=("num_attention_heads",),
    num_kv_heads=("num_kv_heads",),
    kv_heads_of=_kv_heads,
    intermediate_size=("ffn_hidden_size",),
    max_positions=("max_position_embeddings",),
    norm_eps=("layer_norm_epsilon",),
    activation=("activation",),
    norm="layernorm",
    positions="rope",
    gated_mlp=False,
    default_activation="gelu",
    tensors=(
        TensorRule("transformer.word_embeddings.weight", ("tok_embd.weight",)),
        *norm_rules(_P + "input_layernorm", "blk.{i}.attn_norm", when="falcon_one_norm"),
        *norm_rules(_P + "ln_attn", "blk.{i}.attn_norm", when="falcon_two_norms"),
        *norm_rules(_P + "ln_mlp", "blk.{i}.ffn_norm", when="falcon_two_norms"),
        *norm_rules(_P + "post_attention_layernorm", "blk.{i}.ffn_norm", when="!parallel_block"),
        *(
            TensorRule(_P + "self_attention.query_key_value.weight", _QKV, split, "falcon_" + split)
            for split in (ROW_SPLIT, HEAD_SPLIT, GROUP_SPLIT)
        ),
        *(
            TensorRule(
                _P + "self_attention.query_key_value.bias",
                _QKV_BIAS,
                split,
                f"falcon_{split}&qkv_bias",
            )
            for split in (ROW_SPLIT, HEAD_SPLIT, GROUP_SPLIT)
        ),
        *linear_rules(_P + "self_attention.dense", "blk.{i}.attn_output", "attn_out_bias"),
        *linear_rules(_P + "mlp.dense_h_to_4h", "blk.{i}.ffn_up", "mlp_bias"),
        *linear_rules(_P + "mlp.dense_4h_to_h", "blk.{i}.ffn_down", "mlp_bias"),
        *norm_rules("transformer.ln_f", "output_norm"),
        TensorRule("lm_head.weight", ("output.weight",), when="untied"),
    ),
    ignored=(r"transformer\.h\.\d+\.self_attention\.rotary_emb\.inv_freq", r"lm_head\.weight"),
    traits=_traits,
    unsupported=(
        ("alibi", bool, "ALiBi position biases (Falcon-RW); hyperdex builds rotary positions"),
    ),
    examples=("tiiuae/falcon-7b", "tiiuae/falcon-40b", "tiiuae/falcon-11B"),
)
