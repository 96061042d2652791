"""OLMo (``OlmoForCausalLM``, AI2): Llama's names with a LayerNorm that has no parameters at
all (the graph's gains are ones) and q/k/v clamped to ``clip_qkv``."""

from __future__ import annotations

from ..types import ONES, TensorRule
from .common import llama_names
from .llama import attention_biases, llama_like


def _no_norm_tensors() -> tuple[TensorRule, ...]:
    """Llama's rules with every norm's gain made of ones (OLMo's checkpoints hold none)."""
    rules = []
    for r in llama_names():
        if r.canonical[0].endswith("_norm.weight"):
            rules.append(TensorRule("", r.canonical, ONES, r.when))
        elif not r.canonical[0].endswith("_norm.bias"):
            rules.append(r)
    return tuple(rules)


OLMO = llama_like(
    "olmo",
    ("OlmoForCausalLM",),
    lambda c: {**attention_biases(c), "norm_bias": False, "clip_qkv": c.get("clip_qkv")},
    tensors=_no_norm_tensors(),
    norm="layernorm",
    norm_eps=("layer_norm_eps",),
    examples=("allenai/OLMo-1B-hf", "allenai/OLMo-7B-0424-hf"),
)
