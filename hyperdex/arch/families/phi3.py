"""Phi-3 and Phi-4-mini (``Phi3ForCausalLM``): Llama with fused qkv_proj and gate_up_proj
rows, a sliding window, partial rotary (Phi-4-mini) and LongRoPE scaling."""

from __future__ import annotations

from ..types import ROW_SPLIT, Config, TensorRule, layer_windows
from .common import llama_names
from .llama import llama_like

_P = "model.layers.{i}."


def _traits(c: Config) -> dict:
    return {
        "qkv_bias": False,
        "attn_out_bias": False,
        "mlp_bias": False,
        "layer_windows": layer_windows(c, int(c["num_hidden_layers"])),
    }


PHI3 = llama_like(
    "phi3",
    ("Phi3ForCausalLM",),
    _traits,
    tensors=llama_names(qkv=None, gate=None, up=None)
    + (
        TensorRule(
            _P + "self_attn.qkv_proj.weight",
            ("blk.{i}.attn_q.weight", "blk.{i}.attn_k.weight", "blk.{i}.attn_v.weight"),
            ROW_SPLIT,
        ),
        TensorRule(
            _P + "mlp.gate_up_proj.weight",
            ("blk.{i}.ffn_gate.weight", "blk.{i}.ffn_up.weight"),
            ROW_SPLIT,
        ),
    ),
    examples=("microsoft/Phi-3-mini-4k-instruct", "microsoft/Phi-4-mini-instruct"),
)
