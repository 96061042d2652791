"""Writes the memory plan as ``config/memory_map.json``. (The model record's bridge to the
core's ModelSpec is ``hyperdex.arch.spec.model_spec``, a preset's
``hyperdex.presets.device_preset``.)"""

from __future__ import annotations

from typing import Any, Optional

from .. import _core
from ..compiled.folder import MEMORY_MAP_FORMAT


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
                # A mixture's experts: each a block of rows / experts rows (expert_rows of
                # its sources, then zero padding), starting on channel 0.
                **({"experts": r.experts, "expert_rows": r.expert_rows} if r.experts else {}),
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
