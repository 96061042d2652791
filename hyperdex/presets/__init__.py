"""Device presets: design points as data (JSON files here, or any file a user passes), and
the C++ core's DevicePreset made from one."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

from ..errors import ConfigError

if TYPE_CHECKING:
    from .. import _core

PRESET_DIR = Path(__file__).parent
_FIELDS = {
    "name": str,
    "description": str,
    "hbm_channels": int,
    "hbm_channel_bytes": int,
    "hbm_bandwidth_gbps": float,
    "clock_mhz": float,
    "lmem_bytes": int,
    "mac_trees": int,
    "mac_lanes": int,
    "vector_lanes": int,
    # The cost model's numbers (docs/cost-model.md).
    "hbm_efficiency": float,
    "hbm_latency_ns": float,
    "weight_buffer_bytes": int,
    "issue_cycles": int,
    "chain_cycles": int,
    "mac_pipeline_cycles": int,
    "vector_pipeline_cycles": int,
    "ring_bandwidth_gbps": float,
    "ring_latency_ns": float,
    "run_overhead_us": float,
    "sources": dict,
    # Optional, for boards (docs/xrt.md): the xclbin with the LPU kernel, and its name.
    "xclbin": str,
    "xrt_kernel": str,
}
_OPTIONAL = ("description", "sources", "xclbin", "xrt_kernel")
# Latencies and overheads may be zero (an ideal design point); the rest must be positive.
_MAY_BE_ZERO = (
    "hbm_latency_ns",
    "weight_buffer_bytes",
    "issue_cycles",
    "chain_cycles",
    "mac_pipeline_cycles",
    "vector_pipeline_cycles",
    "ring_latency_ns",
    "run_overhead_us",
)
NUMBER_FIELDS = tuple(k for k, kind in _FIELDS.items() if kind in (int, float))


def unsourced_fields(preset: dict[str, Any]) -> list[str]:
    """The numbers of a preset that no ``sources`` entry covers. A source key is a field's
    name or a prefix shared by several (``"hbm"`` covers ``hbm_channels``, ``hbm_latency_ns``,
    ...)."""
    keys = list(preset.get("sources", {}))
    return [f for f in NUMBER_FIELDS if not any(f == k or f.startswith(k + "_") for k in keys)]


def available_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.json"))


def load_preset(name_or_path: Union[str, Path]) -> dict[str, Any]:
    """A preset by name (``u55c``, ``vcu128``, ``asic``) or from a JSON file path."""
    path = Path(name_or_path)
    if not path.suffix:
        path = PRESET_DIR / f"{name_or_path}.json"
        if not path.is_file():
            raise ConfigError(
                f"unknown device type {str(name_or_path)!r}; available presets: "
                f"{', '.join(available_presets())}, or the path of a preset JSON file"
            )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"cannot read device preset {path}: {e}") from e
    unknown = sorted(set(data) - set(_FIELDS))
    if unknown:
        raise ConfigError(f"device preset {path} has unknown field(s) {', '.join(unknown)}")
    for key, kind in _FIELDS.items():
        if key in _OPTIONAL:
            if key in data and not isinstance(data[key], kind):
                raise ConfigError(f"device preset {path}: {key} must be a {kind.__name__}")
            continue
        if key not in data:
            raise ConfigError(f"device preset {path} lacks the field {key!r}")
        value = data[key]
        ok = (
            isinstance(value, (int, float)) and not isinstance(value, bool)
            if kind is float
            else (isinstance(value, kind) and not isinstance(value, bool))
        )
        if not ok or (kind is not str and (value < 0 if key in _MAY_BE_ZERO else value <= 0)):
            what = "a non-negative" if key in _MAY_BE_ZERO else "a positive"
            raise ConfigError(f"device preset {path}: {key} must be {what} {kind.__name__}")
    if data["hbm_efficiency"] > 1:
        raise ConfigError(
            f"device preset {path}: hbm_efficiency is the share of peak bandwidth a stream "
            f"sustains, at most 1; got {data['hbm_efficiency']}"
        )
    stray = [
        k
        for k in data.get("sources", {})
        if not any(f == k or f.startswith(k + "_") for f in _FIELDS)
    ]
    if stray:
        raise ConfigError(
            f"device preset {path}: sources names no field: {', '.join(sorted(stray))}"
        )
    return data


def device_preset(preset: dict[str, Any]) -> _core.DevicePreset:
    """The C++ core's DevicePreset from a preset's data (what load_preset returns)."""
    from .. import _core  # here, so that loading a preset needs no C++ core

    p = _core.DevicePreset()
    p.name = preset["name"]
    p.hbm_channels = int(preset["hbm_channels"])
    p.hbm_channel_bytes = int(preset["hbm_channel_bytes"])
    p.hbm_bandwidth_gbps = float(preset["hbm_bandwidth_gbps"])
    p.clock_mhz = float(preset["clock_mhz"])
    p.lmem_bytes = int(preset["lmem_bytes"])
    p.mac_trees = int(preset["mac_trees"])
    p.mac_lanes = int(preset["mac_lanes"])
    p.vector_lanes = int(preset["vector_lanes"])
    for key in (
        "hbm_efficiency",
        "hbm_latency_ns",
        "ring_bandwidth_gbps",
        "ring_latency_ns",
        "run_overhead_us",
    ):
        setattr(p, key, float(preset[key]))
    for key in (
        "weight_buffer_bytes",
        "issue_cycles",
        "chain_cycles",
        "mac_pipeline_cycles",
        "vector_pipeline_cycles",
    ):
        setattr(p, key, int(preset[key]))
    p.validate()
    return p
