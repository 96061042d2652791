"""Rotary position embedding parameters, computed as transformers computes them.

The device holds a table of cos/sin per position (docs/formats.md); the compiler needs the
inverse frequencies (after any context-extension scaling) and the factor that multiplies cos
and sin. The arithmetic mirrors transformers' ``modeling_rope_utils`` in float32.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import numpy as np

from ..errors import ConfigError

SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3", "longrope")


def rope_parameters(config: dict[str, Any]) -> tuple[dict[str, Any], Optional[dict[str, Any]]]:
    """The RoPE parameters of a HF config.json, in either transformers 4 (``rope_theta`` and
    ``rope_scaling``) or transformers 5 (``rope_parameters``) form: (those of the model, or of
    its full-attention layers; those of its sliding layers where they have their own, as
    Gemma 3's do, else None)."""
    given = config.get("rope_parameters")
    if isinstance(given, dict) and isinstance(given.get("full_attention"), dict):
        # transformers 5: one set per layer type.
        local = given.get("sliding_attention")
        main = _one_set(dict(config, rope_parameters=given["full_attention"]))
        return main, None if not isinstance(local, dict) else _one_set(
            dict(config, rope_parameters=local, rope_scaling=None)
        )
    main = _one_set(config)
    if config.get("rope_local_base_freq") is not None:  # Gemma 3, transformers 4 form
        local = _one_set(
            {"rope_theta": config["rope_local_base_freq"], "partial_rotary_factor": 1.0}
        )
        local["partial_rotary_factor"] = main["partial_rotary_factor"]
        return main, local
    return main, None


def _one_set(config: dict[str, Any]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    if isinstance(config.get("rope_parameters"), dict):
        params.update(config["rope_parameters"])
    if isinstance(config.get("rope_scaling"), dict):
        params.update(config["rope_scaling"])
    if "rope_theta" not in params:  # GPT-NeoX's older configs call it rotary_emb_base
        params["rope_theta"] = float(config.get("rope_theta", config.get("rotary_emb_base", 1e4)))
    if "partial_rotary_factor" not in params:  # older configs: top level, or NeoX's rotary_pct
        params["partial_rotary_factor"] = float(
            config.get("partial_rotary_factor", config.get("rotary_pct", 1.0))
        )
    rope_type = params.get("rope_type", params.get("type", "default")) or "default"
    params["rope_type"] = rope_type
    if rope_type == "longrope":
        params.setdefault(
            "original_max_position_embeddings",
            config.get("original_max_position_embeddings") or config["max_position_embeddings"],
        )
        # One table holds the short factors: positions up to here (docs/architecture.md).
        params["longrope_short_positions"] = int(params["original_max_position_embeddings"])
    return params


def inverse_frequencies(
    params: dict[str, Any], rotary_dim: int, max_position_embeddings: int
) -> tuple[np.ndarray, float]:
    """``(inv_freq[rotary_dim // 2] as float32, attention_factor)`` for a rope parameter dict."""
    rope_type = params["rope_type"]
    if rope_type not in SUPPORTED_ROPE_TYPES:
        raise ConfigError(
            f"RoPE scaling type {rope_type!r} is not supported yet (supported: "
            f"{', '.join(SUPPORTED_ROPE_TYPES)}); use a checkpoint without it or open an issue"
        )
    base = np.float32(params["rope_theta"])
    exponents = np.arange(0, rotary_dim, 2, dtype=np.int64).astype(np.float32) / np.float32(
        rotary_dim
    )
    if rope_type == "longrope":
        return _longrope(params, base, exponents, rotary_dim, max_position_embeddings)
    inv_freq = (np.float32(1.0) / (base**exponents)).astype(np.float32)
    if rope_type == "linear":
        inv_freq = (inv_freq / np.float32(params["factor"])).astype(np.float32)
    elif rope_type == "llama3":
        inv_freq = _llama3(inv_freq, params, max_position_embeddings)
    return inv_freq, 1.0


def _llama3(inv_freq: np.ndarray, p: dict[str, Any], max_positions: int) -> np.ndarray:
    factor = float(p["factor"])
    low_freq_factor = float(p["low_freq_factor"])
    high_freq_factor = float(p["high_freq_factor"])
    old_context_len = float(p.get("original_max_position_embeddings", max_positions))
    low_freq_wavelen = old_context_len / low_freq_factor
    high_freq_wavelen = old_context_len / high_freq_factor
    f32 = np.float32
    wavelen = (f32(2 * math.pi) / inv_freq).astype(np.float32)
    scaled = np.where(wavelen > low_freq_wavelen, inv_freq / f32(factor), inv_freq).astype(f32)
    smooth = (
        (f32(old_context_len) / wavelen - f32(low_freq_factor))
        / f32(high_freq_factor - low_freq_factor)
    ).astype(f32)
    smoothed = ((f32(1) - smooth) * scaled / f32(factor) + smooth * scaled).astype(f32)
    medium = ~(wavelen < high_freq_wavelen) & ~(wavelen > low_freq_wavelen)
    return np.where(medium, smoothed, scaled).astype(f32)


def _longrope(
    p: dict[str, Any], base: np.float32, exponents: np.ndarray, rotary_dim: int, max_positions: int
) -> tuple[np.ndarray, float]:
    """Phi-3's LongRoPE with its short factors (sequences up to the original context; the
    compiler refuses a longer max_length) and its cos/sin scale."""
    original = int(p["original_max_position_embeddings"])
    short = np.asarray(p["short_factor"], dtype=np.float32)
    if short.shape != (rotary_dim // 2,):
        raise ConfigError(
            f"rope_scaling short_factor has {short.size} entries; LongRoPE needs one per rotated "
            f"pair ({rotary_dim // 2})"
        )
    factor = p.get("factor")
    if factor is None:
        factor = max_positions / original
    attention_factor = p.get("attention_factor")
    if attention_factor is None:
        attention_factor = (
            1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(original))
        )
    inv_freq = (np.float32(1.0) / (short * base**exponents)).astype(np.float32)
    return inv_freq, float(attention_factor)
