"""The architecture registry: looks a Hugging Face config up in the architecture table
(hyperdex/arch/families/) and reads it into hyperdex's model record, the description of a
model the layer graph (csrc/graph/layer_graph.h) is built from.

The converter, the mapper, the sharding, the instruction generator, the cost model and the
explorer all read that record through the one layer graph; adding an architecture made of
known traits means adding a record to the table (and a tiny-model test), not code.
"""

from __future__ import annotations

import dataclasses
import difflib
from typing import Any

from ..errors import ConfigError, UnsupportedArchitectureError
from .families import ARCHITECTURES
from .record import ModelRecord
from .types import (
    ACTIVATIONS,
    ADD_ONE,
    ADD_ONE_TILE,
    CONCAT,
    CONV1D_SPLIT,
    COPY,
    FLATTEN,
    FUSED_EXPERTS,
    GROUP_SPLIT,
    HEAD_SPLIT,
    ONES,
    ROW_SPLIT,
    SCALE_RESIDUAL,
    STACKED_EXPERTS,
    TILE,
    TRANSPOSE,
    VECTOR_SPLIT,
    Architecture,
    Config,
    TensorRule,
)
from .types import first as _first

__all__ = [
    "ACTIVATIONS",
    "ADD_ONE",
    "ADD_ONE_TILE",
    "ARCHITECTURES",
    "CONCAT",
    "CONV1D_SPLIT",
    "COPY",
    "FLATTEN",
    "FUSED_EXPERTS",
    "GROUP_SPLIT",
    "HEAD_SPLIT",
    "ONES",
    "ROW_SPLIT",
    "SCALE_RESIDUAL",
    "STACKED_EXPERTS",
    "TILE",
    "TRANSPOSE",
    "VECTOR_SPLIT",
    "Architecture",
    "ModelRecord",
    "TensorRule",
    "lookup",
    "max_length_limit",
    "model_traits",
    "rule_applies",
    "supported_architectures",
]

_BY_HF_NAME = {name: arch for arch in ARCHITECTURES for name in arch.hf_names}


def supported_architectures() -> list[str]:
    return sorted(_BY_HF_NAME)


def lookup(config: Config) -> tuple[str, Architecture]:
    """The registry entry for a HF config.json, or an error listing what is supported."""
    names = config.get("architectures") or []
    if not names:
        raise UnsupportedArchitectureError(
            "config.json names no 'architectures'; add the HF class name (one of "
            f"{', '.join(supported_architectures())}) to it"
        )
    for name in names:
        if name in _BY_HF_NAME:
            return name, _BY_HF_NAME[name]
    close = _close_match(names[0])
    hint = f" (did you mean {close}?)" if close else ""
    raise UnsupportedArchitectureError(
        f"architecture {', '.join(names)} is not supported{hint}. Supported architectures: "
        f"{', '.join(supported_architectures())}"
    )


_HEADS = ("forcausallm", "lmheadmodel")


def _stem(name: str) -> str:
    name = name.lower()
    for head in _HEADS:
        if name.endswith(head):
            return name[: -len(head)]
    return name


def _close_match(name: str) -> str | None:
    """A supported name the unsupported one is probably a typo of: compared without the
    shared ``ForCausalLM`` suffix, which would make every name look close."""
    stems = {_stem(n): n for n in supported_architectures()}
    close = difflib.get_close_matches(_stem(name), list(stems), n=1, cutoff=0.85)
    return stems[close[0]] if close else None


def _read(hf_name: str, reader: Any, config: Config) -> Any:
    """A family's reading of its config (traits, implied KV heads): a value of the wrong type
    or a missing key is a ConfigError naming it, not a bare ValueError or KeyError."""
    try:
        return reader(config)
    except ConfigError:
        raise
    except KeyError as e:
        raise ConfigError(f"{hf_name}'s config.json has no {e.args[0]!r}") from e
    except (TypeError, ValueError, OverflowError) as e:
        raise ConfigError(
            f"{hf_name}'s config.json has a value hyperdex cannot read ({e}); fix the value"
        ) from e


def _required(config: Config, keys: tuple[str, ...], what: str) -> Any:
    value = _first(config, *keys)
    if value is None:
        raise ConfigError(f"config.json has no {what} (looked for {', '.join(keys)})")
    return value


def _positive_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"config.json {what} must be a positive integer, found {value!r}")
    if value >= 2**32:
        raise ConfigError(f"config.json {what} is {value}, past the core's 32-bit sizes")
    return value


def model_traits(config: Config) -> tuple[str, Architecture, ModelRecord]:
    """Reads a HF config into hyperdex's model record (the ``model`` section of
    hyperdex_config.json). Raises ConfigError for missing, inconsistent or unsupported
    values, naming the key."""
    hf_name, arch = lookup(config)
    for key, bad, why in arch.unsupported:
        if key in config and bad(config[key]):
            raise ConfigError(
                f"{hf_name} with {key}={config[key]!r} ({why}) is not supported yet; "
                "use a checkpoint without it"
            )
    hidden = _positive_int(_required(config, arch.hidden_size, "hidden size"), "hidden size")
    heads = _positive_int(_required(config, arch.num_heads, "attention head count"), "heads")
    if arch.kv_heads_of is not None:
        kv_heads = _positive_int(_read(hf_name, arch.kv_heads_of, config), "KV heads")
    else:
        kv_heads = _positive_int(_required(config, arch.num_kv_heads, "KV head count"), "KV heads")
    head_dim = config.get("head_dim") or hidden // heads
    if not config.get("head_dim") and hidden % heads:
        raise ConfigError(
            f"config.json hidden size {hidden} is not a multiple of the {heads} attention heads"
        )
    if heads % kv_heads:
        raise ConfigError(
            f"config.json has {heads} attention heads, not a multiple of {kv_heads} KV heads"
        )
    act_name = _first(config, *arch.activation, default=arch.default_activation)
    if act_name not in ACTIVATIONS:
        raise ConfigError(
            f"activation {act_name!r} is not supported "
            f"(supported: {', '.join(sorted(ACTIVATIONS))})"
        )
    intermediate = _first(config, *arch.intermediate_size)
    if intermediate is None:
        intermediate = arch.default_intermediate_factor * hidden
    max_positions = _positive_int(
        _required(config, arch.max_positions, "maximum position count"), "max positions"
    )
    vocab = _positive_int(_required(config, arch.vocab_size, "vocabulary size"), "vocab size")
    num_layers = _positive_int(_required(config, arch.num_layers, "layer count"), "layers")
    model: dict[str, Any] = {
        "vocab_size": vocab,
        "hidden_size": hidden,
        "num_layers": num_layers,
        "num_heads": heads,
        "num_kv_heads": kv_heads,
        "head_dim": _positive_int(head_dim, "head_dim"),
        "intermediate_size": _positive_int(intermediate, "intermediate size"),
        "norm": arch.norm,
        "norm_eps": float(_first(config, *arch.norm_eps, default=arch.default_norm_eps)),
        "norm_bias": arch.norm == "layernorm",
        "pre_norm": True,
        "final_norm": True,
        "act": ACTIVATIONS[act_name],
        "gated_mlp": arch.gated_mlp,
        "parallel_block": False,
        "shared_norm": False,
        "qkv_bias": False,
        "attn_out_bias": False,
        "mlp_bias": False,
        "lm_head_bias": False,
        "qk_norm": False,
        "qk_norm_bias": False,
        "clip_qkv": None,
        "positions": arch.positions,
        "max_position_embeddings": max_positions,
        "learned_pos_rows": max_positions + arch.learned_pos_offset
        if arch.positions == "learned"
        else 0,
        "learned_pos_offset": arch.learned_pos_offset,
        "attn_scale": None,
        "sliding_window": 0,
        "layer_windows": [],
        "embed_scale": 1.0,
        "logit_scale": 1.0,
        "tie_word_embeddings": bool(config.get("tie_word_embeddings", arch.default_tied)),
        "embed_dim": hidden,
        "num_experts": 0,
        "experts_per_token": 0,
        "router_renormalize": False,
    }
    if arch.num_experts:
        model.update(_experts(config, arch))
    model.update(_read(hf_name, arch.traits, config))
    windows = [int(w) for w in model["layer_windows"] or ()]
    if len(set(windows)) == 1:  # one window for every layer: the scalar says it
        model["sliding_window"], windows = windows[0], []
    model["layer_windows"] = windows
    rotary_dim = model.pop("rotary_dim", None)
    rope_style = model.pop("rope_style", "neox")
    layer_rope = [int(t) for t in model.pop("layer_rope", None) or ()]
    if layer_rope and len(layer_rope) != num_layers:
        raise ConfigError(
            f"config.json sets rotary positions for {len(layer_rope)} layers; the model has "
            f"{num_layers}"
        )
    if all(t == 1 for t in layer_rope):
        layer_rope = []  # every layer rotates with the one table
    if arch.positions == "rope":
        rotary = (rotary_dim, rope_style, layer_rope)
        _read(hf_name, lambda c: _rotary(hf_name, c, model, *rotary), config)
    # What is no field of the record is a switch of the family's renaming rules.
    fields = {f.name for f in dataclasses.fields(ModelRecord)}
    model["layout"] = {k: bool(model.pop(k)) for k in list(model) if k not in fields}
    return hf_name, arch, ModelRecord.from_dict(model, f"{hf_name}'s model record")


def _experts(config: Config, arch: Architecture) -> dict[str, Any]:
    """The sizes of a mixture of experts, each key named where it is wrong: the expert count,
    the experts per token (at most that many), and the width of one expert (no default: a
    dense model's factor says nothing about an expert). The checkpoint's layout of the
    experts is a switch of the renaming rules, set by the converter from its tensors."""

    def size(keys: tuple[str, ...], what: str) -> int:
        value = _required(config, keys, what)
        return _positive_int(value, next(k for k in keys if config.get(k) is not None))

    experts = size(arch.num_experts, "expert count")
    per_token = size(arch.experts_per_token, "count of experts per token")
    if per_token > experts:
        raise ConfigError(
            f"config.json routes each token to {per_token} experts "
            f"({'/'.join(arch.experts_per_token)}) of only {experts} "
            f"({'/'.join(arch.num_experts)}); it must be at most the expert count"
        )
    size(arch.intermediate_size, "expert width")
    return {"num_experts": experts, "experts_per_token": per_token, FUSED_EXPERTS: False}


def _rotary(
    hf_name: str,
    config: Config,
    model: dict[str, Any],
    rotary_dim: Any,
    rope_style: str,
    layer_rope: list[int],
) -> None:
    """The rotary fields of the record (``model``) from the config's RoPE parameters."""
    from .rope import inverse_frequencies, rope_parameters

    max_positions = int(model["max_position_embeddings"])
    params, local = rope_parameters(config)
    if rotary_dim is None:
        rotary_dim = int(model["head_dim"] * float(params["partial_rotary_factor"]))
    rotary_dim = int(rotary_dim)
    if not 0 < rotary_dim <= model["head_dim"] or rotary_dim % 2:
        raise ConfigError(
            f"config.json rotates {rotary_dim} dims of each head (rotary_dim / "
            f"partial_rotary_factor); it must be even and in (0, head_dim={model['head_dim']}]"
        )
    inv_freq, factor = inverse_frequencies(params, rotary_dim, max_positions)
    model.update(
        rope_style=rope_style,
        rope_dim=rotary_dim,
        rope_parameters=params,
        rope_inv_freq=[float(x) for x in inv_freq],
        rope_attention_factor=factor,
        layer_rope=layer_rope,
    )
    if 2 in layer_rope:  # the local table (Gemma 3's sliding layers)
        if local is None:
            raise ConfigError(f"{hf_name}'s config.json gives no local rotary parameters")
        local_freq, local_factor = inverse_frequencies(local, rotary_dim, max_positions)
        if local_factor != 1.0:
            raise ConfigError(
                f"the local rotary parameters ({local['rope_type']}) scale cos and sin; "
                "hyperdex's local table has no attention factor: use default or linear"
            )
        model["rope_local_inv_freq"] = [float(x) for x in local_freq]
        model["rope_parameters"] = dict(params, local=local)


def max_length_limit(model: ModelRecord) -> tuple[int, str]:
    """The longest sequence a compiled model may hold, and what sets it."""
    short = model.rope_parameters.get("longrope_short_positions")
    if short:
        return int(short), (
            "LongRoPE: past original_max_position_embeddings transformers switches to the "
            "long factors mid-sequence, which one rotary table cannot follow"
        )
    return model.max_position_embeddings, "max_position_embeddings"


def rule_applies(rule: TensorRule, model: ModelRecord) -> bool:
    """Whether a rule's condition holds: a record key, "untied", "projection", a "!" in front
    negates, "a&b" needs both."""
    if rule.when is None:
        return True
    return all(_holds(term, model) for term in rule.when.split("&"))


def _holds(term: str, model: ModelRecord) -> bool:
    if term.startswith("!"):
        return not _holds(term[1:], model)
    if term == "untied":
        return not model.tie_word_embeddings
    if term == "projection":
        return model.has_projection
    return model.holds(term)
