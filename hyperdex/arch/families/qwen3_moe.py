"""Qwen3-MoE (``Qwen3MoeForCausalLM``): Qwen3's attention (per-head q/k RMSNorm, head_dim
apart from hidden/heads) with a mixture of ``moe_intermediate_size``-wide experts in every
layer; the picks' weights are renormalized only with ``norm_topk_prob``. Configs that mix
dense layers in (``decoder_sparse_step``, ``mlp_only_layers``) are refused (MOE_UNSUPPORTED)."""

from __future__ import annotations

from ..types import TILE, Config
from .common import MOE_UNSUPPORTED, ExpertNames, llama_names
from .llama import llama_like
from .qwen3 import qwen3_traits


def _traits(c: Config) -> dict:
    renormalize = bool(c.get("norm_topk_prob", False))  # transformers' default
    return {**qwen3_traits(c), "mlp_bias": False, "router_renormalize": renormalize}


QWEN3_MOE = llama_like(
    "qwen3_moe",
    ("Qwen3MoeForCausalLM",),
    _traits,
    tensors=llama_names(
        qk_norms=("self_attn.q_norm", "self_attn.k_norm"),
        qk_norm_transform=TILE,
        experts=ExpertNames(),
    ),
    intermediate_size=("moe_intermediate_size",),
    # The hub's configs say num_experts; transformers 5's save_pretrained num_local_experts.
    num_experts=("num_experts", "num_local_experts"),
    experts_per_token=("num_experts_per_tok",),
    unsupported=MOE_UNSUPPORTED,
    examples=("Qwen/Qwen3-30B-A3B", "Qwen/Qwen3-235B-A22B"),
)
