"""Mixtral (``MixtralForCausalLM``, Mistral AI): Mistral's attention (GQA, a sliding window)
with a mixture of experts for an MLP: a router picks each token's ``num_experts_per_tok`` of
``num_local_experts`` gated SiLU experts, whose weights are always renormalized over the picks.
Its experts live under ``block_sparse_moe`` as w1 (gate), w3 (up) and w2 (down)."""

from __future__ import annotations

from ..types import Config, layer_windows
from .common import MOE_UNSUPPORTED, ExpertNames, llama_names
from .llama import llama_like


def _traits(c: Config) -> dict:
    # No biases anywhere; router_jitter_noise only perturbs training.
    return {
        "qkv_bias": False,
        "attn_out_bias": False,
        "mlp_bias": False,
        "layer_windows": layer_windows(c, int(c["num_hidden_layers"])),
        "router_renormalize": True,
    }


MIXTRAL = llama_like(
    "mixtral",
    ("MixtralForCausalLM",),
    _traits,
    tensors=llama_names(experts=ExpertNames("block_sparse_moe", "w1", "w3", "w2")),
    # transformers' attribute_map reads num_experts as num_local_experts.
    num_experts=("num_local_experts", "num_experts"),
    experts_per_token=("num_experts_per_tok",),
    unsupported=MOE_UNSUPPORTED,
    examples=("mistralai/Mixtral-8x7B-v0.1", "mistralai/Mixtral-8x22B-v0.1"),
)
