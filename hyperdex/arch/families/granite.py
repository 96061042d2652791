"""IBM Granite 3.x (``GraniteForCausalLM``): Llama with four multipliers: embeddings
(``embedding_multiplier``), attention scores (``attention_multiplier``, the attention scale),
each branch's output (``residual_multiplier``, folded into the output projections) and the
logits (divided by ``logits_scaling``)."""

from __future__ import annotations

from ..types import SCALE_RESIDUAL
from .common import llama_names
from .llama import attention_biases, llama_like

GRANITE = llama_like(
    "granite",
    ("GraniteForCausalLM",),
    lambda c: {
        **attention_biases(c),
        "embed_scale": float(c.get("embedding_multiplier", 1.0)),
        "attn_scale": float(c.get("attention_multiplier", 1.0)),
        "residual_scale": float(c.get("residual_multiplier", 1.0)),
        "logit_scale": 1.0 / float(c.get("logits_scaling", 1.0)),
    },
    tensors=llama_names(out_transform=SCALE_RESIDUAL),
    examples=("ibm-granite/granite-3.1-2b-instruct", "ibm-granite/granite-3.3-8b-instruct"),
)
