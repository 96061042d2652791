"""The model record (hyperdex_config.json's ``model``, made by :func:`registry.model_traits`)
as the C++ core's ModelSpec, and the layer graph's canonical tensors read back from it.

The layer graph itself (csrc/graph/layer_graph.h) is the one description of what a model
computes: the converter's expected tensors, the sharding rule of each tensor, the memory
plan, the programs and the cost model all come from it.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

from .. import _core
from ..errors import ConfigError
from .record import ModelRecord, as_record

_NORMS = {"layernorm": _core.NormKind.LayerNorm, "rmsnorm": _core.NormKind.RmsNorm}
_ACTS = {
    "none": _core.ActKind.None_,
    "relu": _core.ActKind.Relu,
    "gelu": _core.ActKind.Gelu,
    "gelu_tanh": _core.ActKind.GeluTanh,
    "silu": _core.ActKind.Silu,
}
_POSITIONS = {
    "learned": _core.PositionKind.Learned,
    "rope": _core.PositionKind.Rope,
    "none": _core.PositionKind.None_,
}
_ROPE_STYLES = {"neox": _core.RopeStyle.Neox, "gptj": _core.RopeStyle.Gptj}

_INTS = (
    "vocab_size",
    "hidden_size",
    "num_layers",
    "num_heads",
    "num_kv_heads",
    "head_dim",
    "intermediate_size",
    "learned_pos_rows",
    "learned_pos_offset",
    "sliding_window",
    "embed_dim",
    "num_experts",
    "experts_per_token",
)
_BOOLS = (
    "norm_bias",
    "pre_norm",
    "final_norm",
    "gated_mlp",
    "parallel_block",
    "shared_norm",
    "qkv_bias",
    "attn_out_bias",
    "mlp_bias",
    "lm_head_bias",
    "qk_norm",
    "qk_norm_bias",
    "qk_norm_whole",
    "branch_input_norm",
    "branch_output_norm",
    "tie_word_embeddings",
    "router_renormalize",
)
_FLOATS = ("norm_eps", "embed_scale", "logit_scale", "attn_softcap", "final_logit_softcap")
# Record fields the core does not read: the Python side's (the rope parameters as the HF
# config wrote them, the position limit, the converter's layout switches).
PYTHON_ONLY = ("max_position_embeddings", "rope_parameters", "layout", "residual_scale")


def model_spec(config: Mapping[str, Any]) -> _core.ModelSpec:
    """The core's ModelSpec from hyperdex_config.json's content: ``architecture``, ``model``
    (a ModelRecord, or its JSON form) and ``quantization``."""
    m = as_record(config["model"], "hyperdex_config.json's model")
    s = _core.ModelSpec()
    s.architecture = config["architecture"]
    for key in _INTS + _BOOLS + _FLOATS:
        setattr(s, key, getattr(m, key))
    s.layer_windows = list(m.layer_windows)
    s.clip_qkv = m.clip_qkv or 0.0
    s.attn_scale = m.attn_scale or 0.0
    s.norm = _NORMS[m.norm]
    s.act = _ACTS[m.act]
    s.positions = _POSITIONS[m.positions]
    if m.positions == "rope":
        s.rope_style = _ROPE_STYLES[m.rope_style or "neox"]
        s.rope_dim = m.rope_dim
        s.rope_inv_freq = list(m.rope_inv_freq)
        s.rope_attention_factor = m.rope_attention_factor
        s.layer_rope = list(m.layer_rope)
        s.rope_local_inv_freq = list(m.rope_local_inv_freq)
    _quantization(s, config.get("quantization"))
    s.validate()
    return s


def _quantization(s: _core.ModelSpec, q: Optional[Mapping[str, Any]]) -> None:
    """The device's weight format from hyperdex_config.json's ``quantization`` (None: fp16).
    Group size -1 (one scale per row) is 0 in the spec: each matrix's own input width."""
    if q is None:
        return
    bits = q.get("bits")
    if bits not in (4, 8):
        raise ConfigError(f"quantization bits must be 4 or 8, got {bits!r}")
    if not q.get("sym", True):
        raise ConfigError(
            "asymmetric quantization (sym=False) is not supported: the device format has no "
            "zero points; quantize with sym=True"
        )
    group = q.get("group_size", 128)
    if isinstance(group, bool) or not isinstance(group, int) or (group <= 0 and group != -1):
        raise ConfigError(f"quantization group_size must be > 0 or -1, got {group!r}")
    s.weight_bits = int(bits)
    s.group_size = 0 if group == -1 else int(group)
    s.quantize_lm_head = bool(q.get("quantize_lm_head", False))


def canonical_tensors(model: ModelRecord) -> dict[str, tuple[tuple[int, ...], str]]:
    """Canonical tensor name -> (shape, split over devices) of a model record, from the layer
    graph, in the order the device streams them."""
    spec = model_spec({"architecture": "", "model": model})
    return {t.name: (tuple(int(d) for d in t.shape), t.split) for t in _core.model_tensors(spec)}
