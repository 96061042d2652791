"""The architecture table: every supported Hugging Face architecture as data.

What differs between architectures (norm, activation, positions, biases, residual shape, the
names and layout of their tensors) lives in one `Architecture` record per family. The
converter, the mapper and the instruction generator are shared code that reads these records;
adding an architecture means adding a record (and a tiny-model test), not copying code.

Canonical tensor names follow llama.cpp's scheme (``tok_embd``, ``blk.N.attn_q``, ...);
every canonical matrix is ``[out_features, in_features]`` in float16.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any, Callable

from ..errors import ConfigError, UnsupportedArchitectureError

Config = dict[str, Any]

# How a HF tensor becomes canonical tensors.
COPY = "copy"  # same layout
TRANSPOSE = "transpose"  # GPT-2's Conv1D stores [in, out]
CONV1D_SPLIT = "conv1d_split"  # GPT-2's fused c_attn [in, 3*out] -> q, k, v [out, in]
VECTOR_SPLIT = "vector_split"  # GPT-2's fused c_attn bias [3*out] -> q, k, v biases


@dataclass(frozen=True)
class TensorRule:
    """One HF tensor (``{i}`` stands for the layer index) and the canonical tensor(s) it
    becomes."""

    hf: str
    canonical: tuple[str, ...]
    transform: str = COPY
    # Present only when this trait of the model spec is true (e.g. "qkv_bias").
    when: str | None = None


def _first(config: Config, *keys: str, default: Any = None) -> Any:
    for k in keys:
        if config.get(k) is not None:
            return config[k]
    return default


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
    # Derived traits that depend on the config (biases, norm placement, ...).
    traits: Callable[[Config], dict[str, Any]] = field(default=lambda c: {})
    # Config values this implementation cannot honour: (key, predicate, why).
    unsupported: tuple[tuple[str, Callable[[Any], bool], str], ...] = ()


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

_LAYER_NORM = ("layernorm", True)

_GPT2 = Architecture(
    family="gpt2",
    hf_names=("GPT2LMHeadModel",),
    vocab_size=("vocab_size",),
    hidden_size=("n_embd", "hidden_size"),
    num_layers=("n_layer", "num_hidden_layers"),
    num_heads=("n_head", "num_attention_heads"),
    num_kv_heads=("n_head", "num_attention_heads"),
    intermediate_size=("n_inner",),
    max_positions=("n_positions", "max_position_embeddings"),
    norm_eps=("layer_norm_epsilon",),
    activation=("activation_function",),
    norm="layernorm",
    positions="learned",
    gated_mlp=False,
    tensors=(
        TensorRule("transformer.wte.weight", ("tok_embd.weight",)),
        TensorRule("transformer.wpe.weight", ("pos_embd.weight",)),
        TensorRule("transformer.h.{i}.ln_1.weight", ("blk.{i}.attn_norm.weight",)),
        TensorRule("transformer.h.{i}.ln_1.bias", ("blk.{i}.attn_norm.bias",)),
        TensorRule(
            "transformer.h.{i}.attn.c_attn.weight",
            ("blk.{i}.attn_q.weight", "blk.{i}.attn_k.weight", "blk.{i}.attn_v.weight"),
            CONV1D_SPLIT,
        ),
        TensorRule(
            "transformer.h.{i}.attn.c_attn.bias",
            ("blk.{i}.attn_q.bias", "blk.{i}.attn_k.bias", "blk.{i}.attn_v.bias"),
            VECTOR_SPLIT,
        ),
        TensorRule(
            "transformer.h.{i}.attn.c_proj.weight", ("blk.{i}.attn_output.weight",), TRANSPOSE
        ),
        TensorRule("transformer.h.{i}.attn.c_proj.bias", ("blk.{i}.attn_output.bias",)),
        TensorRule("transformer.h.{i}.ln_2.weight", ("blk.{i}.ffn_norm.weight",)),
        TensorRule("transformer.h.{i}.ln_2.bias", ("blk.{i}.ffn_norm.bias",)),
        TensorRule("transformer.h.{i}.mlp.c_fc.weight", ("blk.{i}.ffn_up.weight",), TRANSPOSE),
        TensorRule("transformer.h.{i}.mlp.c_fc.bias", ("blk.{i}.ffn_up.bias",)),
        TensorRule("transformer.h.{i}.mlp.c_proj.weight", ("blk.{i}.ffn_down.weight",), TRANSPOSE),
        TensorRule("transformer.h.{i}.mlp.c_proj.bias", ("blk.{i}.ffn_down.bias",)),
        TensorRule("transformer.ln_f.weight", ("output_norm.weight",)),
        TensorRule("transformer.ln_f.bias", ("output_norm.bias",)),
        TensorRule("lm_head.weight", ("output.weight",), when="untied"),
    ),
    ignored=(r"transformer\.h\.\d+\.attn\.(masked_)?bias", r"lm_head\.weight"),
    traits=lambda c: {
        "qkv_bias": True,
        "attn_out_bias": True,
        "mlp_bias": True,
        "attn_scale": None if c.get("scale_attn_weights", True) else 1.0,
    },
    unsupported=(
        ("scale_attn_by_inverse_layer_idx", bool, "per-layer attention scaling"),
        ("reorder_and_upcast_attn", bool, "reordered upcast attention"),
        ("add_cross_attention", bool, "cross-attention"),
    ),
)

_OPT = Architecture(
    family="opt",
    hf_names=("OPTForCausalLM",),
    vocab_size=("vocab_size",),
    hidden_size=("hidden_size",),
    num_layers=("num_hidden_layers",),
    num_heads=("num_attention_heads",),
    num_kv_heads=("num_attention_heads",),
    intermediate_size=("ffn_dim",),
    max_positions=("max_position_embeddings",),
    norm_eps=("layer_norm_eps",),
    activation=("activation_function",),
    norm="layernorm",
    positions="learned",
    gated_mlp=False,
    learned_pos_offset=2,
    default_activation="relu",
    tensors=(
        TensorRule("model.decoder.embed_tokens.weight", ("tok_embd.weight",)),
        TensorRule("model.decoder.embed_positions.weight", ("pos_embd.weight",)),
        TensorRule("model.decoder.project_in.weight", ("proj_in.weight",), when="projection"),
        TensorRule("model.decoder.project_out.weight", ("proj_out.weight",), when="projection"),
        TensorRule("model.decoder.layers.{i}.self_attn.q_proj.weight", ("blk.{i}.attn_q.weight",)),
        TensorRule("model.decoder.layers.{i}.self_attn.k_proj.weight", ("blk.{i}.attn_k.weight",)),
        TensorRule("model.decoder.layers.{i}.self_attn.v_proj.weight", ("blk.{i}.attn_v.weight",)),
        TensorRule(
            "model.decoder.layers.{i}.self_attn.q_proj.bias",
            ("blk.{i}.attn_q.bias",),
            when="qkv_bias",
        ),
        TensorRule(
            "model.decoder.layers.{i}.self_attn.k_proj.bias",
            ("blk.{i}.attn_k.bias",),
            when="qkv_bias",
        ),
        TensorRule(
            "model.decoder.layers.{i}.self_attn.v_proj.bias",
            ("blk.{i}.attn_v.bias",),
            when="qkv_bias",
        ),
        TensorRule(
            "model.decoder.layers.{i}.self_attn.out_proj.weight", ("blk.{i}.attn_output.weight",)
        ),
        TensorRule(
            "model.decoder.layers.{i}.self_attn.out_proj.bias",
            ("blk.{i}.attn_output.bias",),
            when="attn_out_bias",
        ),
        TensorRule(
            "model.decoder.layers.{i}.self_attn_layer_norm.weight", ("blk.{i}.attn_norm.weight",)
        ),
        TensorRule(
            "model.decoder.layers.{i}.self_attn_layer_norm.bias", ("blk.{i}.attn_norm.bias",)
        ),
        TensorRule("model.decoder.layers.{i}.fc1.weight", ("blk.{i}.ffn_up.weight",)),
        TensorRule("model.decoder.layers.{i}.fc1.bias", ("blk.{i}.ffn_up.bias",), when="mlp_bias"),
        TensorRule("model.decoder.layers.{i}.fc2.weight", ("blk.{i}.ffn_down.weight",)),
        TensorRule(
            "model.decoder.layers.{i}.fc2.bias", ("blk.{i}.ffn_down.bias",), when="mlp_bias"
        ),
        TensorRule(
            "model.decoder.layers.{i}.final_layer_norm.weight", ("blk.{i}.ffn_norm.weight",)
        ),
        TensorRule("model.decoder.layers.{i}.final_layer_norm.bias", ("blk.{i}.ffn_norm.bias",)),
        TensorRule(
            "model.decoder.final_layer_norm.weight", ("output_norm.weight",), when="final_norm"
        ),
        TensorRule("model.decoder.final_layer_norm.bias", ("output_norm.bias",), when="final_norm"),
        TensorRule("lm_head.weight", ("output.weight",), when="untied"),
    ),
    ignored=(r"lm_head\.weight",),
    traits=lambda c: {
        "pre_norm": bool(c.get("do_layer_norm_before", True)),
        "final_norm": bool(c.get("do_layer_norm_before", True))
        and not c.get("_remove_final_layer_norm", False),
        "qkv_bias": bool(c.get("enable_bias", True)),
        "attn_out_bias": bool(c.get("enable_bias", True)),
        "mlp_bias": bool(c.get("enable_bias", True)),
        "embed_dim": int(c.get("word_embed_proj_dim") or c["hidden_size"]),
    },
    unsupported=(
        ("layer_norm_elementwise_affine", lambda v: v is False, "LayerNorm without affine weights"),
    ),
)


def _llama_like(
    family: str,
    hf_names: tuple[str, ...],
    traits: Callable[[Config], dict[str, Any]],
    unsupported: tuple[tuple[str, Callable[[Any], bool], str], ...] = (),
) -> Architecture:
    """Llama and its descendants share names; they differ only in traits."""
    p = "model.layers.{i}."
    return Architecture(
        family=family,
        hf_names=hf_names,
        vocab_size=("vocab_size",),
        hidden_size=("hidden_size",),
        num_layers=("num_hidden_layers",),
        num_heads=("num_attention_heads",),
        num_kv_heads=("num_key_value_heads", "num_attention_heads"),
        intermediate_size=("intermediate_size",),
        max_positions=("max_position_embeddings",),
        norm_eps=("rms_norm_eps",),
        activation=("hidden_act",),
        norm="rmsnorm",
        positions="rope",
        gated_mlp=True,
        default_activation="silu",
        tensors=(
            TensorRule("model.embed_tokens.weight", ("tok_embd.weight",)),
            TensorRule(p + "input_layernorm.weight", ("blk.{i}.attn_norm.weight",)),
            TensorRule(p + "self_attn.q_proj.weight", ("blk.{i}.attn_q.weight",)),
            TensorRule(p + "self_attn.k_proj.weight", ("blk.{i}.attn_k.weight",)),
            TensorRule(p + "self_attn.v_proj.weight", ("blk.{i}.attn_v.weight",)),
            TensorRule(p + "self_attn.q_proj.bias", ("blk.{i}.attn_q.bias",), when="qkv_bias"),
            TensorRule(p + "self_attn.k_proj.bias", ("blk.{i}.attn_k.bias",), when="qkv_bias"),
            TensorRule(p + "self_attn.v_proj.bias", ("blk.{i}.attn_v.bias",), when="qkv_bias"),
            TensorRule(p + "self_attn.o_proj.weight", ("blk.{i}.attn_output.weight",)),
            TensorRule(
                p + "self_attn.o_proj.bias", ("blk.{i}.attn_output.bias",), when="attn_out_bias"
            ),
            TensorRule(p + "post_attention_layernorm.weight", ("blk.{i}.ffn_norm.weight",)),
            TensorRule(p + "mlp.gate_proj.weight", ("blk.{i}.ffn_gate.weight",)),
            TensorRule(p + "mlp.up_proj.weight", ("blk.{i}.ffn_up.weight",)),
            TensorRule(p + "mlp.down_proj.weight", ("blk.{i}.ffn_down.weight",)),
            TensorRule(p + "mlp.gate_proj.bias", ("blk.{i}.ffn_gate.bias",), when="mlp_bias"),
            TensorRule(p + "mlp.up_proj.bias", ("blk.{i}.ffn_up.bias",), when="mlp_bias"),
            TensorRule(p + "mlp.down_proj.bias", ("blk.{i}.ffn_down.bias",), when="mlp_bias"),
            TensorRule("model.norm.weight", ("output_norm.weight",)),
            TensorRule("lm_head.weight", ("output.weight",), when="untied"),
        ),
        ignored=(r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq", r"lm_head\.weight"),
        traits=traits,
        unsupported=unsupported,
    )


_LLAMA = _llama_like(
    "llama",
    ("LlamaForCausalLM", "MistralForCausalLM"),
    lambda c: {
        "qkv_bias": bool(c.get("attention_bias", False)),
        "attn_out_bias": bool(c.get("attention_bias", False)),
        "mlp_bias": bool(c.get("mlp_bias", False)),
        "sliding_window": int(c.get("sliding_window") or 0),
    },
)

_QWEN2 = _llama_like(
    "qwen2",
    ("Qwen2ForCausalLM",),
    lambda c: {"qkv_bias": True, "attn_out_bias": False, "mlp_bias": False},
    unsupported=(
        (
            "use_sliding_window",
            bool,
            "per-layer sliding-window attention (use_sliding_window=true)",
        ),
    ),
)

ARCHITECTURES: tuple[Architecture, ...] = (_GPT2, _OPT, _LLAMA, _QWEN2)
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
    close = difflib.get_close_matches(names[0], supported_architectures(), n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    raise UnsupportedArchitectureError(
        f"architecture {', '.join(names)} is not supported{hint}. Supported architectures: "
        f"{', '.join(supported_architectures())}"
    )


def _required(config: Config, keys: tuple[str, ...], what: str) -> Any:
    value = _first(config, *keys)
    if value is None:
        raise ConfigError(f"config.json has no {what} (looked for {', '.join(keys)})")
    return value


def _positive_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"config.json {what} must be a positive integer, found {value!r}")
    return value


def model_traits(config: Config) -> tuple[str, Architecture, dict[str, Any]]:
    """Reads a HF config into hyperdex's canonical model description (the ``model`` section of
    hyperdex_config.json). Raises ConfigError for missing or inconsistent values."""
    hf_name, arch = lookup(config)
    for key, bad, why in arch.unsupported:
        if key in config and bad(config[key]):
            raise ConfigError(
                f"{hf_name} with {key}={config[key]!r} ({why}) is not supported yet; "
                "use a checkpoint without it"
            )
    hidden = _positive_int(_required(config, arch.hidden_size, "hidden size"), "hidden size")
    heads = _positive_int(_required(config, arch.num_heads, "attention head count"), "heads")
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
    model: dict[str, Any] = {
        "vocab_size": vocab,
        "hidden_size": hidden,
        "num_layers": _positive_int(_required(config, arch.num_layers, "layer count"), "layers"),
        "num_heads": heads,
        "num_kv_heads": kv_heads,
        "head_dim": _positive_int(head_dim, "head_dim"),
        "intermediate_size": _positive_int(intermediate, "intermediate size"),
        "norm": arch.norm,
        "norm_eps": float(_first(config, *arch.norm_eps, default=1e-5)),
        "norm_bias": arch.norm == "layernorm",
        "pre_norm": True,
        "final_norm": True,
        "act": ACTIVATIONS[act_name],
        "gated_mlp": arch.gated_mlp,
        "qkv_bias": False,
        "attn_out_bias": False,
        "mlp_bias": False,
        "lm_head_bias": False,
        "positions": arch.positions,
        "max_position_embeddings": max_positions,
        "learned_pos_rows": max_positions + arch.learned_pos_offset
        if arch.positions == "learned"
        else 0,
        "learned_pos_offset": arch.learned_pos_offset,
        "attn_scale": None,
        "sliding_window": 0,
        "embed_scale": 1.0,
        "tie_word_embeddings": bool(config.get("tie_word_embeddings", True)),
        "embed_dim": hidden,
    }
    model.update(arch.traits(config))
    if arch.positions == "rope":
        from .rope import inverse_frequencies, rope_parameters

        params = rope_parameters(config)
        rotary_dim = int(model["head_dim"] * float(params.get("partial_rotary_factor", 1.0)))
        inv_freq, factor = inverse_frequencies(params, rotary_dim, max_positions)
        model.update(
            rope_style="neox",
            rope_dim=rotary_dim,
            rope_parameters=params,
            rope_inv_freq=[float(x) for x in inv_freq],
            rope_attention_factor=factor,
        )
    return hf_name, arch, model


def expected_tensors(arch: Architecture, model: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """Canonical tensor name -> shape, for this model."""
    H, hd = model["hidden_size"], model["head_dim"]
    q, kv, ff = model["num_heads"] * hd, model["num_kv_heads"] * hd, model["intermediate_size"]
    E = model["embed_dim"]
    projection = E != H
    shapes: dict[str, tuple[int, ...]] = {"tok_embd.weight": (model["vocab_size"], E)}
    if model["positions"] == "learned":
        shapes["pos_embd.weight"] = (model["learned_pos_rows"], H)
    if projection:
        shapes["proj_in.weight"] = (H, E)
        shapes["proj_out.weight"] = (E, H)
    norm_bias = model["norm"] == "layernorm" and model["norm_bias"]

    def norm(name: str) -> None:
        shapes[name + ".weight"] = (H,)
        if norm_bias:
            shapes[name + ".bias"] = (H,)

    for i in range(model["num_layers"]):
        b = f"blk.{i}."
        norm(b + "attn_norm")
        norm(b + "ffn_norm")
        shapes[b + "attn_q.weight"] = (q, H)
        shapes[b + "attn_k.weight"] = (kv, H)
        shapes[b + "attn_v.weight"] = (kv, H)
        if model["qkv_bias"]:
            shapes[b + "attn_q.bias"], shapes[b + "attn_k.bias"] = (q,), (kv,)
            shapes[b + "attn_v.bias"] = (kv,)
        shapes[b + "attn_output.weight"] = (H, q)
        if model["attn_out_bias"]:
            shapes[b + "attn_output.bias"] = (H,)
        if model["gated_mlp"]:
            shapes[b + "ffn_gate.weight"] = (ff, H)
            if model["mlp_bias"]:
                shapes[b + "ffn_gate.bias"] = (ff,)
        shapes[b + "ffn_up.weight"] = (ff, H)
        shapes[b + "ffn_down.weight"] = (H, ff)
        if model["mlp_bias"]:
            shapes[b + "ffn_up.bias"], shapes[b + "ffn_down.bias"] = (ff,), (H,)
    if model["final_norm"]:
        norm("output_norm")
    if not model["tie_word_embeddings"]:
        shapes["output.weight"] = (model["vocab_size"], E)
    return shapes


def rule_applies(rule: TensorRule, model: dict[str, Any]) -> bool:
    if rule.when is None:
        return True
    if rule.when == "untied":
        return not model["tie_word_embeddings"]
    if rule.when == "projection":
        return model["embed_dim"] != model["hidden_size"]
    return bool(model.get(rule.when))
