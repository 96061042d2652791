"""Device presets: design points as data (JSON files here, or any file a user passes), and
the C++ core's DevicePreset made from one."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

from ..errors import ConfigError, HyperdexError
from ..jsonfile import load_json

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
# The C++ DevicePreset's uint64_t fields; its other integers are uint32_t.
_U64_FIELDS = ("hbm_channel_bytes", "lmem_bytes", "weight_buffer_bytes")
_U64_MAX = 2**64 - 1
_U32_MAX = 2**32 - 1
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
        raw = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"cannot read device preset {path}: {e}") from e
    data = load_json(raw, lambda why: ConfigError(f"cannot read device preset {path}: {why}"))
    if not isinstance(data, dict):
        raise ConfigError(f"device preset {path} is not a JSON object")
    unknown = sorted(set(data) - set(_FIELDS))
    if unknown:
        raise ConfigError(f"device preset {path} has unknown field(s) {', '.join(unknown)}")
    check_preset(data, f"device preset {path}")
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


def check_preset(
    data: Any,
    where: str,
    error: type[HyperdexError] = ConfigError,
    field: str = "",
    hint: str = "",
) -> None:
    """Raises ``error`` naming ``where`` and the field (``field`` + key: ``device_preset.``
    when the preset is a memory map's) unless ``data`` holds every field of a preset with its
    type and range (the C++ DevicePreset's: 32- or 64-bit unsigned, finite numbers)."""
    tail = f"; {hint}" if hint else ""
    if not isinstance(data, dict):
        raise error(f"{where}: field {field.rstrip('.') or 'the preset'!r} must be an object{tail}")
    for key, kind in _FIELDS.items():
        name = f"{field}{key}"
        if key not in data:
            if key in _OPTIONAL:
                continue
            raise error(f"{where} lacks the field {name!r}{tail}")
        value = data[key]
        if kind in (str, dict):
            if not isinstance(value, kind):
                raise error(f"{where}: field {name!r} must be a {kind.__name__}{tail}")
            continue
        limit = _U64_MAX if key in _U64_FIELDS else _U32_MAX if kind is int else math.inf
        ok = (
            isinstance(value, (int, float)) and not isinstance(value, bool)
            if kind is float
            else (isinstance(value, kind) and not isinstance(value, bool))
        )
        if ok and kind is float:
            try:
                ok = math.isfinite(float(value))  # an integer past the float range: not
            except OverflowError:
                ok = False
        if ok and (value > limit or (value < 0 if key in _MAY_BE_ZERO else value <= 0)):
            ok = False
        if not ok:
            what = "a non-negative" if key in _MAY_BE_ZERO else "a positive"
            bound = f" at most {limit}" if kind is int else " (finite)"
            raise error(
                f"{where}: field {name!r} must be {what} {kind.__name__}{bound}, got "
                f"{_short(value)}{tail}"
            )
    if data["hbm_efficiency"] > 1:
        raise error(
            f"{where}: field '{field}hbm_efficiency' is the share of peak bandwidth a stream "
            f"sustains, at most 1; got {data['hbm_efficiency']}{tail}"
        )


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def device_preset(preset: dict[str, Any], where: str = "device preset") -> _core.DevicePreset:
    """The C++ core's DevicePreset from a preset's data (what load_preset returns); a
    ConfigError naming ``where`` and the field for data that is not a preset."""
    from .. import _core  # here, so that loading a preset needs no C++ core

    check_preset(preset, where)
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
