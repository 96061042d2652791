"""Tensor-name rules shared by the families that descend from Llama's naming
(``model.layers.{i}.self_attn.q_proj`` ...), with the variations they use."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

from ..types import COPY, FUSED_EXPERTS, STACKED_EXPERTS, TensorRule

# The config keys of GPT-2 and the families that kept them (GPT-J, GPTBigCode).
GPT2_CONFIG_KEYS: dict[str, Any] = dict(
    vocab_size=("vocab_size",),
    hidden_size=("n_embd", "hidden_size"),
    num_layers=("n_layer", "num_hidden_layers"),
    num_heads=("n_head", "num_attention_heads"),
    num_kv_heads=("n_head", "num_attention_heads"),
    intermediate_size=("n_inner",),
    max_positions=("n_positions", "max_position_embeddings"),
    norm_eps=("layer_norm_epsilon",),
    activation=("activation_function",),
)


def norm_rules(hf: str, canonical: str, transform: str = COPY, when: Optional[str] = None):
    """A norm's gain, and its beta when the model record's ``norm_bias`` is true."""
    bias_when = "norm_bias" if when is None else f"{when}&norm_bias"
    return (
        TensorRule(hf + ".weight", (canonical + ".weight",), transform, when=when),
        TensorRule(hf + ".bias", (canonical + ".bias",), when=bias_when),
    )


def linear_rules(
    hf: str, canonical: str, bias_when: Optional[str], transform: str = COPY
) -> tuple[TensorRule, ...]:
    """A projection's weight, and its bias when ``bias_when`` holds (None: never)."""
    rules = (TensorRule(hf + ".weight", (canonical + ".weight",), transform),)
    if bias_when is not None:
        rules += (TensorRule(hf + ".bias", (canonical + ".bias",), transform, bias_when),)
    return rules


@dataclass(frozen=True)
class ExpertNames:
    """Where a Llama-named layer keeps its mixture of experts: the block's module (its router
    is ``<block>.gate``) and each expert's gate, up and down projections under
    ``<block>.experts.{e}``."""

    block: str = "mlp"
    gate: str = "gate_proj"
    up: str = "up_proj"
    down: str = "down_proj"


def expert_rules(prefix: str, names: ExpertNames) -> tuple[TensorRule, ...]:
    """A mixture of experts' router and experts, saved one tensor per expert (what
    transformers' save_pretrained writes) or, with the layout switch ``fused_experts``, as
    transformers holds them in memory: ``mlp.experts.gate_up_proj`` [E, 2I, H] (each expert's
    gate rows, then its up rows) and ``mlp.experts.down_proj`` [E, H, I]."""
    each, fused = "!" + FUSED_EXPERTS, FUSED_EXPERTS
    e = f"{prefix}{names.block}.experts.{{e}}."
    stacked = prefix + "mlp.experts."
    return (
        TensorRule(f"{prefix}{names.block}.gate.weight", ("blk.{i}.ffn_router.weight",), when=each),
        TensorRule(e + names.gate + ".weight", ("blk.{i}.ffn_gate.{e}.weight",), when=each),
        TensorRule(e + names.up + ".weight", ("blk.{i}.ffn_up.{e}.weight",), when=each),
        TensorRule(e + names.down + ".weight", ("blk.{i}.ffn_down.{e}.weight",), when=each),
        TensorRule(prefix + "mlp.gate.weight", ("blk.{i}.ffn_router.weight",), when=fused),
        TensorRule(
            stacked + "gate_up_proj",
            ("blk.{i}.ffn_gate.{e}.weight", "blk.{i}.ffn_up.{e}.weight"),
            STACKED_EXPERTS,
            when=fused,
        ),
        TensorRule(
            stacked + "down_proj", ("blk.{i}.ffn_down.{e}.weight",), STACKED_EXPERTS, when=fused
        ),
    )


def _not(*values: Any) -> Callable[[Any], bool]:
    return lambda v: v not in values


_ROUTING = "hyperdex routes each token by a softmax over its routed experts, then top-k"
_EVERY_LAYER = "hyperdex builds every layer as a mixture of experts"

# Blocks that are not one mixture of routed experts, and routing other than a softmax then a
# plain top-k: refused in phase 0 by every mixture-of-experts family (the keys of Qwen2-MoE,
# DeepSeek V2/V3 and their relatives, should a config carry one).
MOE_UNSUPPORTED: tuple[tuple[str, Callable[[Any], bool], str], ...] = (
    ("shared_expert_intermediate_size", _not(None, 0), f"a shared expert; {_ROUTING}"),
    ("n_shared_experts", _not(None, 0), f"shared experts; {_ROUTING}"),
    ("num_shared_experts", _not(None, 0), f"shared experts; {_ROUTING}"),
    ("scoring_func", _not(None, "softmax"), f"another scoring function; {_ROUTING}"),
    ("topk_method", _not(None, "greedy"), f"another top-k; {_ROUTING}"),
    ("n_group", _not(None, 1), f"grouped top-k; {_ROUTING}"),
    ("topk_group", _not(None, 1), f"grouped top-k; {_ROUTING}"),
    ("routed_scaling_factor", _not(None, 1), f"scaled routing weights; {_ROUTING}"),
    ("first_k_dense_replace", _not(None, 0), f"dense layers first; {_EVERY_LAYER}"),
    ("moe_layer_freq", _not(None, 1), f"dense layers between mixtures; {_EVERY_LAYER}"),
    ("decoder_sparse_step", _not(None, 1), f"dense layers between mixtures; {_EVERY_LAYER}"),
    ("mlp_only_layers", _not(None, []), f"dense layers among the mixtures; {_EVERY_LAYER}"),
)


def llama_names(
    *,
    prefix: str = "model.layers.{i}.",
    embed: str = "model.embed_tokens",
    attn_norm: str = "input_layernorm",
    ffn_norm: Optional[str] = "post_attention_layernorm",
    final_norm: str = "model.norm",
    norm_transform: str = COPY,
    qkv: Optional[tuple[str, str, str]] = (
        "self_attn.q_proj",
        "self_attn.k_proj",
        "self_attn.v_proj",
    ),
    attn_out: str = "self_attn.o_proj",
    gate: Optional[str] = "mlp.gate_proj",
    up: Optional[str] = "mlp.up_proj",
    down: str = "mlp.down_proj",
    head: str = "lm_head",
    post_norms: Optional[tuple[str, str]] = None,
    qk_norms: Optional[tuple[str, str]] = None,
    qk_norm_transform: str = COPY,
    out_transform: str = COPY,
    experts: Optional[ExpertNames] = None,
) -> tuple[TensorRule, ...]:
    """The rules of a Llama-named decoder. Biases follow the model record's ``qkv_bias``,
    ``attn_out_bias``, ``mlp_bias``, ``norm_bias`` and ``lm_head_bias``; the MLP's own norm is
    absent in a parallel block that shares the attention's (``shared_norm``). With
    ``experts`` the MLP is a mixture of experts (:func:`expert_rules`)."""
    p = prefix
    rules: tuple[TensorRule, ...] = (TensorRule(embed + ".weight", ("tok_embd.weight",)),)
    rules += norm_rules(p + attn_norm, "blk.{i}.attn_norm", norm_transform, "branch_input_norm")
    if qkv is not None:
        for hf, c in zip(qkv, ("attn_q", "attn_k", "attn_v")):
            rules += linear_rules(p + hf, f"blk.{{i}}.{c}", "qkv_bias")
    rules += linear_rules(p + attn_out, "blk.{i}.attn_output", "attn_out_bias", out_transform)
    if ffn_norm is not None:
        when = "!shared_norm&branch_input_norm"
        rules += norm_rules(p + ffn_norm, "blk.{i}.ffn_norm", norm_transform, when=when)
    if post_norms is not None:  # each branch's output, normed before it is added
        for hf, c in zip(post_norms, ("attn_post_norm", "ffn_post_norm")):
            rules += norm_rules(p + hf, f"blk.{{i}}.{c}", norm_transform)
    if qk_norms is not None:  # per head, before RoPE
        for hf, c in zip(qk_norms, ("attn_q_norm", "attn_k_norm")):
            rules += (
                TensorRule(p + hf + ".weight", (f"blk.{{i}}.{c}.weight",), qk_norm_transform),
            )
    if experts is not None:
        rules += expert_rules(p, experts)
    else:
        if gate is not None:
            rules += linear_rules(p + gate, "blk.{i}.ffn_gate", "mlp_bias")
        if up is not None:
            rules += linear_rules(p + up, "blk.{i}.ffn_up", "mlp_bias")
        rules += linear_rules(p + down, "blk.{i}.ffn_down", "mlp_bias", out_transform)
    rules += norm_rules(final_norm, "output_norm", norm_transform)
    rules += (
        TensorRule(head + ".weight", ("output.weight",), when="untied"),
        TensorRule(head + ".bias", ("output.bias",), when="lm_head_bias"),
    )
    return rules


ROTARY_BUFFERS = (
    r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq",
    r"model\.rotary_emb\.inv_freq",
)
