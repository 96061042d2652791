"""Bridges hyperdex_config.json and the C++ core's ModelSpec, and writes the memory plan as
``config/memory_map.json``. (A preset's bridge is ``hyperdex.presets.device_preset``: the
runtime needs it too.)"""

from __future__ import annotations

from typing import Any, Optional

from .. import _core
from ..compiled.folder import MEMORY_MAP_FORMAT
from ..errors import ConfigError

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


def model_spec(config: dict[str, Any]) -> _core.ModelSpec:
    """The core's ModelSpec from hyperdex_config.json's content."""
    m = config["model"]
    s = _core.ModelSpec()
    s.architecture = config["architecture"]
    for key in (
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
    ):
        setattr(s, key, int(m[key]))
    for key in (
        "norm_bias",
        "pre_norm",
        "final_norm",
        "gated_mlp",
        "qkv_bias",
        "attn_out_bias",
        "mlp_bias",
        "lm_head_bias",
        "tie_word_embeddings",
    ):
        setattr(s, key, bool(m[key]))
    s.norm = _NORMS[m["norm"]]
    s.norm_eps = float(m["norm_eps"])
    s.act = _ACTS[m["act"]]
    s.positions = _POSITIONS[m["positions"]]
    s.attn_scale = float(m["attn_scale"] or 0.0)
    s.embed_scale = float(m["embed_scale"])
    if m["positions"] == "rope":
        s.rope_style = _ROPE_STYLES[m["rope_style"]]
        s.rope_dim = int(m["rope_dim"])
        s.rope_inv_freq = [float(x) for x in m["rope_inv_freq"]]
        s.rope_attention_factor = float(m["rope_attention_factor"])
    _quantization(s, config.get("quantization"))
    s.validate()
    return s


def _quantization(s: _core.ModelSpec, q: Optional[dict[str, Any]]) -> None:
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


def memory_map_dict(
    plan: _core.MemoryPlan,
    preset: dict[str, Any],
    num_device: int,
    param_files: list[dict[str, Any]],
    vocab_size: Optional[int] = None,
    device_param_files: Optional[list[list[dict[str, Any]]]] = None,
    scratch_bytes: int = 0,
) -> dict[str, Any]:
    """The readable memory map (docs/formats.md, ``config/memory_map.json``). On a ring every
    device has the same plan (the shards have the same shapes); only its parameter files
    differ: ``devices[d]["param_files"]``, device 0's also as ``param_files``."""
    mm = {
        "format": MEMORY_MAP_FORMAT,
        "format_version": _core.PLAN_FORMAT_VERSION,
        "isa_version": _core.ISA_VERSION,
        "fingerprint": plan.fingerprint(),
        "device_preset": preset,
        "num_device": num_device,
        "device": 0,
        "num_channels": plan.num_channels,
        "channel_capacity": plan.channel_capacity,
        "max_length": plan.max_length,
        "max_tokens": plan.max_tokens,
        "vocab_size": plan.vocab_size if vocab_size is None else vocab_size,
        "device_vocab_size": plan.vocab_size,  # logits per row each device writes (its slice)
        "segments": {
            "weights": {"offset": 0, "bytes_per_channel": plan.weights_bytes},
            "kv_cache": {"offset": plan.kv_base, "bytes_per_channel": plan.kv_bytes},
            "io": {
                "channel": 0,
                "offset": plan.io.base,
                "bytes": plan.io.bytes,
                "ids_offset": plan.io.ids_offset,
                "argmax_offset": plan.io.argmax_offset,
                "logits_offset": plan.io.logits_offset,
            },
        },
        "channel_bytes": list(plan.channel_bytes),
        "regions": [
            {
                "name": r.name,
                "kind": r.kind.name,
                "offset": r.base,
                "row_bytes": r.row_bytes,
                "rows": r.rows,
                "cols": r.cols,
                "bytes_per_channel": r.bytes_per_channel(plan.num_channels),
                "sources": list(r.sources),
                **(
                    {"bits": r.bits, "group_size": r.group_size}
                    if r.kind == _core.RegionKind.QMatrix
                    else {}
                ),
            }
            for r in plan.regions
        ],
        "param_files": param_files,
        # Activations live on chip, not in HBM; programs in buffers of their own.
        "scratch": {"space": "on-chip", "bytes": scratch_bytes},
        "programs": {"prefill": "inst/prefill.bin", "decode": "inst/decode.bin"},
    }
    if device_param_files is not None:
        mm["devices"] = [
            {"device": d, "param_files": files} for d, files in enumerate(device_param_files)
        ]
    return mm
