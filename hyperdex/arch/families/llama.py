"""Llama and Mistral (``LlamaForCausalLM``, ``MistralForCausalLM``): RMSNorm, RoPE, a gated
SiLU MLP, grouped-query attention; Mistral's sliding window."""

from __future__ import annotations

from typing import Any, Callable

from ..types import Architecture, Config, TensorRule, layer_windows
from .common import ROTARY_BUFFERS, llama_names


def llama_like(
    family: str,
    hf_names: tuple[str, ...],
    traits: Callable[[Config], dict[str, Any]],
    *,
    tensors: tuple[TensorRule, ...] = (),
    examples: tuple[str, ...] = (),
    unsupported: tuple[tuple[str, Callable[[Any], bool], str], ...] = (),
    **kw: Any,
) -> Architecture:
    """A family that keeps Llama's config keys; it differs in traits (and maybe names)."""
    base: dict[str, Any] = dict(
        vocab_size=("vocab_size",),
        hidden_size=("hidden_size",),
        num_layers=("num_hidden_layers",),
        num_heads=("num_attention_heads",),
        num_kv_heads=("num_key_value_heads", "num_attention_heads"),
        intermediate_size=("intermediate_size",),
        max_positions=("max_position_embeddings",),
        norm_eps=("rms_norm_eps",),
        activation=("hidden_act",),
        norm="rmsnorm",
        positions="rope",
        gated_mlp=True,
        default_activation="silu",
        default_tied=False,
        ignored=ROTARY_BUFFERS + (r"lm_head\.weight",),
    )
    base.update(kw)
    return Architecture(
        family=family,
        hf_names=hf_names,
        tensors=tensors or llama_names(),
        traits=traits,
        examples=examples,
        unsupported=unsupported,
        **base,
    )


def attention_biases(c: Config) -> dict[str, Any]:
    """Llama's ``attention_bias`` (q, k, v and o) and ``mlp_bias``."""
    bias = bool(c.get("attention_bias", False))
    return {"qkv_bias": bias, "attn_out_bias": bias, "mlp_bias": bool(c.get("mlp_bias", False))}


LLAMA = llama_like(
    "llama",
    ("LlamaForCausalLM", "MistralForCausalLM"),
    lambda c: {
        **attention_biases(c),
        "layer_windows": layer_windows(c, int(c["num_hidden_layers"])),
    },
    examples=(
        "meta-llama/Llama-3.2-1B",
        "HuggingFaceTB/SmolLM2-135M",
        "mistralai/Mistral-7B-v0.1",
    ),
)
