"""Gemma 2 (``Gemma2ForCausalLM``) and Gemma 3's text model (``Gemma3ForCausalLM``): Gemma's
(1 + w) RMSNorms before and after each branch, sliding and global layers (``layer_types``),
the attention scale of ``query_pre_attn_scalar``; Gemma 2 soft-caps attention scores and the
final logits, Gemma 3 norms q and k per head and rotates its sliding layers with their own
base (``rope_local_base_freq``)."""

from __future__ import annotations

import math
from typing import Any

from ..types import ADD_ONE, ADD_ONE_TILE, Config, layer_windows
from .common import llama_names
from .llama import attention_biases, llama_like

_POST = ("post_attention_layernorm", "post_feedforward_layernorm")


def _traits(c: Config, gemma3: bool) -> dict[str, Any]:
    layers = int(c["num_hidden_layers"])
    windows = layer_windows(c, layers)
    out: dict[str, Any] = {
        **attention_biases(c),
        "embed_scale": math.sqrt(float(c["hidden_size"])),
        "branch_output_norm": True,
        "attn_scale": float(c.get("query_pre_attn_scalar") or c.get("head_dim") or 256) ** -0.5,
        "attn_softcap": float(c.get("attn_logit_softcapping") or 0.0),
        "final_logit_softcap": float(c.get("final_logit_softcapping") or 0.0),
        "layer_windows": windows,
    }
    if gemma3:  # sliding layers rotate with the local table
        out.update(qk_norm=True, layer_rope=[2 if w else 1 for w in windows])
    return out


def _gemma(family: str, name: str, gemma3: bool, examples: tuple[str, ...]) -> Any:
    return llama_like(
        family,
        (name,),
        lambda c: _traits(c, gemma3),
        tensors=llama_names(
            ffn_norm="pre_feedforward_layernorm",
            norm_transform=ADD_ONE,
            post_norms=_POST,
            qk_norms=("self_attn.q_norm", "self_attn.k_norm") if gemma3 else None,
            qk_norm_transform=ADD_ONE_TILE,
        ),
        activation=("hidden_activation", "hidden_act"),
        default_activation="gelu_pytorch_tanh",
        default_tied=True,
        examples=examples,
    )


GEMMA2 = _gemma("gemma2", "Gemma2ForCausalLM", False, ("google/gemma-2-2b", "google/gemma-2-9b"))
GEMMA3 = _gemma(
    "gemma3", "Gemma3ForCausalLM", True, ("google/gemma-3-1b-it", "google/gemma-3-4b-it (text)")
)
