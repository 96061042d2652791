"""The records of the architecture table (hyperdex/arch/families/): how a Hugging Face
architecture names its config values and tensors, and which traits of the layer graph
(csrc/graph/layer_graph.h) it uses.

Canonical tensor names follow llama.cpp's scheme (``tok_embd``, ``blk.N.attn_q``, ...);
every canonical matrix is ``[out_features, in_features]`` in float16. The layer graph says
which canonical tensors a model has and their shapes; an architecture's rules say which HF
tensor each comes from.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional

Config = dict[str, Any]

# How HF tensors become canonical tensors (hyperdex/tools/converter.py applies them).
COPY = "copy"  # same layout
FLATTEN = "flatten"  # a per-head [heads, head_dim] norm gain -> [heads * head_dim] (Cohere)
TRANSPOSE = "transpose"  # GPT-2's Conv1D stores [in, out]
CONV1D_SPLIT = "conv1d_split"  # GPT-2's fused c_attn [in, 3*out] -> q, k, v [out, in]
VECTOR_SPLIT = "vector_split"  # GPT-2's fused c_attn bias [3*out] -> q, k, v biases
ROW_SPLIT = "row_split"  # rows [q; k; v] or [gate; up] -> each (Phi-3, GPTBigCode MQA)
HEAD_SPLIT = "head_split"  # rows per head [h0: q k v | h1: q k v | ...] (GPT-NeoX, BLOOM)
GROUP_SPLIT = "group_split"  # rows per KV group [q.. q k v | ...] (Falcon new architecture)
ADD_ONE = "add_one"  # Gemma's RMSNorm multiplies by (1 + w): the canonical gain is 1 + w
TILE = "tile"  # one head's norm gain shared by all heads (Phi's qk LayerNorm)
ADD_ONE_TILE = "add_one_tile"  # both: Gemma 3's (1 + w) q/k RMSNorm shared by the heads
SCALE_RESIDUAL = "scale_residual"  # times the record's residual_scale (Granite's multiplier)
CONCAT = "concat"  # one HF tensor per head ("{h}") -> one canonical (StableLM's qk norm)
ONES = "ones"  # no HF tensor: a parameter-free norm's gain of ones (OLMo)
# One HF tensor for all the experts of a layer, [experts, rows, cols] -> each expert's
# canonical tensor(s), rows split as ROW_SPLIT does (transformers' in-memory layout:
# mlp.experts.gate_up_proj [E, 2I, H], mlp.experts.down_proj [E, H, I]).
STACKED_EXPERTS = "stacked_experts"

# The layout switch (ModelRecord.layout) of a mixture of experts saved as stacked tensors
# rather than one tensor per expert; the converter sets it from what the checkpoint holds.
FUSED_EXPERTS = "fused_experts"


@dataclass(frozen=True)
class TensorRule:
    """One HF tensor (``{i}`` stands for the layer index, ``{h}`` for a head's, ``{e}`` for
    an expert's) and the canonical tensor(s) it becomes."""

    hf: str
    canonical: tuple[str, ...]
    transform: str = COPY
    # Present only when this key of the model record is true (e.g. "qkv_bias"); "untied"
    # and "projection" are derived (see registry.rule_applies); a leading "!" negates.
    when: Optional[str] = None


@dataclass(frozen=True)
class Architecture:
    """A family of HF architectures that share tensor names and traits."""

    family: str
    hf_names: tuple[str, ...]
    # Config fields, each as the HF keys to try in order.
    vocab_size: tuple[str, ...]
    hidden_size: tuple[str, ...]
    num_layers: tuple[str, ...]
    num_heads: tuple[str, ...]
    num_kv_heads: tuple[str, ...]
    intermediate_size: tuple[str, ...]
    max_positions: tuple[str, ...]
    norm_eps: tuple[str, ...]
    activation: tuple[str, ...]
    # Traits.
    norm: str  # "layernorm" | "rmsnorm"
    positions: str  # "learned" | "rope"
    gated_mlp: bool
    tensors: tuple[TensorRule, ...]
    # HF tensors that carry no weights of their own (buffers, tied copies).
    ignored: tuple[str, ...] = ()
    learned_pos_offset: int = 0
    default_activation: str = "gelu_new"
    default_intermediate_factor: int = 4
    default_norm_eps: float = 1e-5
    default_tied: bool = True
    # Derived traits that depend on the config (biases, norm placement, ...): keys of the
    # model record (registry.model_traits lists them with their defaults).
    traits: Callable[[Config], dict[str, Any]] = field(default=lambda c: {})
    # Config values this implementation cannot honour: (key, predicate, why).
    unsupported: tuple[tuple[str, Callable[[Any], bool], str], ...] = ()
    # The KV head count where other keys imply it (multi-query flags); else num_kv_heads.
    kv_heads_of: Optional[Callable[[Config], int]] = None
    # Example checkpoints of this family (docs/support.md).
    examples: tuple[str, ...] = ()
    # A mixture of experts in every layer: the config keys of the expert count and of the
    # experts each token is routed to (empty: a dense MLP). ``intermediate_size`` then names
    # each expert's width.
    num_experts: tuple[str, ...] = ()
    experts_per_token: tuple[str, ...] = ()


# Activations the LPU implements, by the names HF configs use.
ACTIVATIONS = {
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_fast": "gelu_tanh",
    "gelu": "gelu",
    "relu": "relu",
    "silu": "silu",
    "swish": "silu",
}


def first(config: Config, *keys: str, default: Any = None) -> Any:
    """The value of the first of ``keys`` that config.json sets (not None)."""
    for k in keys:
        if config.get(k) is not None:
            return config[k]
    return default


def layer_windows(config: Config, num_layers: int, sliding: bool = True) -> list[int]:
    """Each layer's sliding window (0: full attention), as transformers decides it: from
    ``layer_types`` when the config has them, else the one ``sliding_window`` for every layer
    (when ``sliding``)."""
    window = int(config.get("sliding_window") or 0)
    types = config.get("layer_types")
    if isinstance(types, list) and len(types) == num_layers:
        return [window if t == "sliding_attention" else 0 for t in types]
    return [window if sliding else 0] * num_layers
