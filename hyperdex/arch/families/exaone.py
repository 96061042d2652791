"""EXAONE 3.x (``ExaoneForCausalLM``, LG AI Research, remote code): the Llama graph under
GPT-2-style names (``transformer.h.{i}.attn.attention.q_proj``, ``mlp.c_fc_0``/``c_fc_1``)."""

from __future__ import annotations

from ..types import Config, layer_windows
from .common import llama_names
from .llama import attention_biases, llama_like


def _traits(c: Config) -> dict:
    return {**attention_biases(c), "layer_windows": layer_windows(c, int(c["num_layers"]))}


EXAONE = llama_like(
    "exaone",
    ("ExaoneForCausalLM",),
    _traits,
    tensors=llama_names(
        prefix="transformer.h.{i}.",
        embed="transformer.wte",
        attn_norm="ln_1",
        ffn_norm="ln_2",
        final_norm="transformer.ln_f",
        qkv=("attn.attention.q_proj", "attn.attention.k_proj", "attn.attention.v_proj"),
        attn_out="attn.attention.out_proj",
        gate="mlp.c_fc_0",
        up="mlp.c_fc_1",
        down="mlp.c_proj",
    ),
    num_layers=("num_layers", "num_hidden_layers"),
    norm_eps=("layer_norm_epsilon", "rms_norm_eps"),
    activation=("activation_function", "hidden_act"),
    ignored=(r"transformer\.rotary\.inv_freq", r"lm_head\.weight"),
    examples=("LGAI-EXAONE/EXAONE-3.0-7.8B-Instruct", "LGAI-EXAONE/EXAONE-3.5-2.4B-Instruct"),
)
