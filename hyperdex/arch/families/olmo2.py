"""OLMo 2 (``Olmo2ForCausalLM``, AI2): a norm after each branch only (none before), and an
RMSNorm of q and of k over the whole projection, whose statistics a ring of devices sums
(NORM RING_STATS)."""

from __future__ import annotations

from .common import llama_names
from .llama import attention_biases, llama_like

OLMO2 = llama_like(
    "olmo2",
    ("Olmo2ForCausalLM",),
    lambda c: {
        **attention_biases(c),
        "branch_input_norm": False,
        "branch_output_norm": True,
        "qk_norm": True,
        "qk_norm_whole": True,
    },
    tensors=llama_names(
        post_norms=("post_attention_layernorm", "post_feedforward_layernorm"),
        qk_norms=("self_attn.q_norm", "self_attn.k_norm"),
    ),
    examples=("allenai/OLMo-2-0425-1B", "allenai/OLMo-2-1124-7B"),
)
