"""The model record: hyperdex_config.json's ``model``, typed.

``registry.model_traits`` makes it from a Hugging Face config; the compiler writes it with
the converted weights; the runtime, sharding, calibration and the exporters read it back;
``spec.model_spec`` turns it into the C++ core's ModelSpec, from which the layer graph is
built. Its fields are ModelSpec's (tests/test_model_record.py checks that the two agree),
plus what only the Python side needs (the RoPE parameters as transformers wrote them, the
positions limit, and ``layout``: how the checkpoint laid its tensors out, for the converter).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

from ..errors import ConfigError


@dataclass(frozen=True)
class ModelRecord:
    """What the layer graph is built from: a model's sizes and traits (docs/architecture.md,
    "The layer graph", lists each trait)."""

    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    max_position_embeddings: int
    norm: str  # "layernorm" | "rmsnorm"
    norm_eps: float
    act: str  # "relu" | "gelu" | "gelu_tanh" | "silu"
    positions: str  # "learned" | "rope" | "none"
    norm_bias: bool = False
    pre_norm: bool = True
    final_norm: bool = True
    gated_mlp: bool = False
    parallel_block: bool = False
    shared_norm: bool = False
    qkv_bias: bool = False
    attn_out_bias: bool = False
    mlp_bias: bool = False
    lm_head_bias: bool = False
    qk_norm: bool = False
    qk_norm_bias: bool = False
    qk_norm_whole: bool = False  # over the whole projection, not per head (OLMo 2)
    clip_qkv: Optional[float] = None
    branch_input_norm: bool = True  # pre-norm blocks: a branch reads norm(x) (else x)
    branch_output_norm: bool = False  # x += norm(branch): Gemma 2/3, EXAONE 4
    attn_softcap: float = 0.0  # Gemma 2's attn_logit_softcapping (0: none)
    final_logit_softcap: float = 0.0  # Gemma 2's final_logit_softcapping (0: none)
    # Folded into the output projections' weights by the converter (Granite's
    # residual_multiplier): x += m * branch.
    residual_scale: float = 1.0
    learned_pos_rows: int = 0
    learned_pos_offset: int = 0
    attn_scale: Optional[float] = None  # None: 1/sqrt(head_dim)
    sliding_window: int = 0
    layer_windows: tuple[int, ...] = ()  # per layer; empty: sliding_window everywhere
    embed_scale: float = 1.0
    logit_scale: float = 1.0
    tie_word_embeddings: bool = True
    embed_dim: int = 0  # OPT's word_embed_proj_dim; hidden_size: no projection
    rope_style: Optional[str] = None  # "neox" | "gptj"
    rope_dim: int = 0
    rope_parameters: dict[str, Any] = field(default_factory=dict)
    rope_inv_freq: tuple[float, ...] = ()
    rope_attention_factor: float = 1.0
    # Per layer: 0 no rotary, 1 the rotary table, 2 the local one (empty: all 1), and the
    # local table's frequencies (Gemma 3's sliding layers).
    layer_rope: tuple[int, ...] = ()
    rope_local_inv_freq: tuple[float, ...] = ()
    # A mixture of experts in every layer (0: a dense MLP): each token's MLP is the sum of its
    # experts_per_token best experts (softmax over all, in fp32, then top-k), weighted by
    # their probabilities, divided by the sum of those when router_renormalize. Each expert
    # is a gated MLP of intermediate_size.
    num_experts: int = 0
    experts_per_token: int = 0
    router_renormalize: bool = False
    # Switches of the converter's renaming rules (e.g. Falcon's QKV layout): no trait of the
    # graph, so the core never sees them.
    layout: dict[str, bool] = field(default_factory=dict)

    @classmethod
    def from_dict(
        cls, data: Mapping[str, Any], where: str = "the model record", prefix: str = ""
    ) -> ModelRecord:
        """The record from its JSON form; a ConfigError names a missing, unknown or mistyped
        field (``where``: which file; ``prefix``: the record's place in it, e.g. "model.")."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"{where}: {prefix or 'the model record'} is not a JSON object")
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ConfigError(
                f"{where}: field {prefix + unknown[0]!r} is none this hyperdex knows; "
                "recompile the model with this version"
            )
        for name, f in known.items():
            required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            if required and name not in data:
                raise ConfigError(f"{where}: field {prefix + name!r} is missing")
        values = {name: _typed(name, value, where, prefix) for name, value in data.items()}
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (hyperdex_config.json's ``model``)."""
        out = dataclasses.asdict(self)
        for name in ("layer_windows", "rope_inv_freq", "layer_rope", "rope_local_inv_freq"):
            out[name] = list(getattr(self, name))
        return out

    def holds(self, key: str) -> bool:
        """Whether a trait or layout switch is true (the condition of a renaming rule)."""
        if key in self.layout:
            return bool(self.layout[key])
        if key not in {f.name for f in dataclasses.fields(self)}:
            raise ConfigError(f"a renaming rule asks for {key!r}, no trait or layout switch")
        return bool(getattr(self, key))

    @property
    def has_projection(self) -> bool:
        return self.embed_dim not in (0, self.hidden_size)


# The sizes (> 0); every integer is held in a uint32_t by the core.
_POSITIVE = {
    "vocab_size",
    "hidden_size",
    "num_layers",
    "num_heads",
    "num_kv_heads",
    "head_dim",
    "intermediate_size",
    "max_position_embeddings",
}
_U32_MAX = 2**32 - 1
_INT = _POSITIVE | {
    "learned_pos_rows",
    "learned_pos_offset",
    "sliding_window",
    "embed_dim",
    "rope_dim",
    "num_experts",
    "experts_per_token",
}
_FLOAT = {
    "norm_eps",
    "embed_scale",
    "logit_scale",
    "rope_attention_factor",
    "attn_softcap",
    "final_logit_softcap",
    "residual_scale",
}
_OPTIONAL_FLOAT = {"clip_qkv", "attn_scale"}
_STR = {"norm", "act", "positions"}


def _finite(value: Any) -> Optional[float]:
    """A JSON number as a finite float, or None (not a number, or beyond a float's range: a
    hostile record's 5000-digit integer)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def _typed(name: str, value: Any, where: str, prefix: str) -> Any:
    """A JSON value as the field's type, or a ConfigError naming the field."""

    def bad(kind: str) -> ConfigError:
        return ConfigError(f"{where}: field {prefix + name!r} must be {kind}, found {value!r}")

    if name in _INT:
        low = 1 if name in _POSITIVE else 0
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= _U32_MAX:
            raise bad(f"an integer in [{low}, 2^32)")
        return value
    if name in _FLOAT or name in _OPTIONAL_FLOAT:
        if value is None and name in _OPTIONAL_FLOAT:
            return None
        number = _finite(value)
        if number is None:
            raise bad("a finite number")
        return number
    if name in _STR or name == "rope_style":
        if value is None and name == "rope_style":
            return None
        if not isinstance(value, str):
            raise bad("a string")
        return value
    if name in ("layer_windows", "layer_rope"):
        if not isinstance(value, (list, tuple)) or not all(
            isinstance(w, int) and not isinstance(w, bool) and 0 <= w <= _U32_MAX for w in value
        ):
            raise bad("a list of integers in [0, 2^32)")
        return tuple(value)
    if name in ("rope_inv_freq", "rope_local_inv_freq"):
        numbers = [_finite(x) for x in value] if isinstance(value, (list, tuple)) else [None]
        if any(x is None for x in numbers):
            raise bad("a list of finite numbers")
        return tuple(numbers)
    if name in ("rope_parameters", "layout"):
        if not isinstance(value, Mapping):
            raise bad("an object")
        return dict(value)
    if not isinstance(value, bool):
        raise bad("true or false")
    return value


def as_record(
    model: ModelRecord | Mapping[str, Any], where: str = "the model record"
) -> ModelRecord:
    """A record, from itself or its JSON form (hyperdex_config.json's ``model`` as read)."""
    return model if isinstance(model, ModelRecord) else ModelRecord.from_dict(model, where)
