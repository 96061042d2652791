"""GPT-J (``GPTJForCausalLM``): a parallel block off one LayerNorm, interleaved rotary over
the first ``rotary_dim`` dims, no q/k/v/o biases, a biased MLP and LM head."""

from __future__ import annotations

from ..types import Architecture, TensorRule
from .common import GPT2_CONFIG_KEYS, linear_rules, norm_rules

_P = "transformer.h.{i}."

GPTJ = Architecture(
    family="gptj",
    hf_names=("GPTJForCausalLM",),
    **GPT2_CONFIG_KEYS,
    norm="layernorm",
    positions="rope",
    gated_mlp=False,
    default_tied=False,
    tensors=(
        TensorRule("transformer.wte.weight", ("tok_embd.weight",)),
        *norm_rules(_P + "ln_1", "blk.{i}.attn_norm"),
        TensorRule(_P + "attn.q_proj.weight", ("blk.{i}.attn_q.weight",)),
        TensorRule(_P + "attn.k_proj.weight", ("blk.{i}.attn_k.weight",)),
        TensorRule(_P + "attn.v_proj.weight", ("blk.{i}.attn_v.weight",)),
        TensorRule(_P + "attn.out_proj.weight", ("blk.{i}.attn_output.weight",)),
        *linear_rules(_P + "mlp.fc_in", "blk.{i}.ffn_up", "mlp_bias"),
        *linear_rules(_P + "mlp.fc_out", "blk.{i}.ffn_down", "mlp_bias"),
        *norm_rules("transformer.ln_f", "output_norm"),
        TensorRule("lm_head.weight", ("output.weight",), when="untied"),
        TensorRule("lm_head.bias", ("output.bias",), when="lm_head_bias"),
    ),
    ignored=(r"transformer\.h\.\d+\.attn\.(masked_)?bias", r"lm_head\.weight"),
    traits=lambda c: {
        "mlp_bias": True,
        "lm_head_bias": True,
        "parallel_block": True,
        "shared_norm": True,
        "rope_style": "gptj",
        "rotary_dim": c.get("rotary_dim"),
    },
    examples=("EleutherAI/gpt-j-6b",),
)
