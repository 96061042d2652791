"""OLMoE (``OlmoeForCausalLM``, AI2): pre-norm blocks like Llama's (not OLMo 2's post-norm),
an RMSNorm of q and of k over the whole projection (OLMo 2's, NORM RING_STATS on a ring), and
a mixture of experts in every layer whose picks are renormalized only with
``norm_topk_prob``."""

from __future__ import annotations

from ..types import Config
from .common import MOE_UNSUPPORTED, ExpertNames, llama_names
from .llama import attention_biases, llama_like


def _traits(c: Config) -> dict:
    return {
        **attention_biases(c),
        "mlp_bias": False,
        "qk_norm": True,
        "qk_norm_whole": True,
        "router_renormalize": bool(c.get("norm_topk_prob", False)),  # transformers' default
        "clip_qkv": c.get("clip_qkv"),  # clamps the normed q and k, and v
    }


OLMOE = llama_like(
    "olmoe",
    ("OlmoeForCausalLM",),
    _traits,
    tensors=llama_names(qk_norms=("self_attn.q_norm", "self_attn.k_norm"), experts=ExpertNames()),
    num_experts=("num_experts", "num_local_experts"),
    experts_per_token=("num_experts_per_tok",),
    unsupported=MOE_UNSUPPORTED,
    examples=("allenai/OLMoE-1B-7B-0924", "allenai/OLMoE-1B-7B-0125"),
)
