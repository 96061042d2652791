"""Device presets: design points as data (JSON files here, or any file a user passes)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Union

from ..errors import ConfigError

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
    "sources": dict,
}


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
        if key in ("description", "sources"):
            continue
        if key not in data:
            raise ConfigError(f"device preset {path} lacks the field {key!r}")
        value = data[key]
        ok = (
            isinstance(value, (int, float)) and not isinstance(value, bool)
            if kind is float
            else (isinstance(value, kind) and not isinstance(value, bool))
        )
        if not ok or (kind is not str and value <= 0):
            raise ConfigError(f"device preset {path}: {key} must be a positive {kind.__name__}")
    return data
