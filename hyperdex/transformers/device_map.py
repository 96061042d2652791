"""The ``device_map`` argument of ``from_pretrained``: how many LPUs, and GPUs for hybrid
mode."""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError


def check_device_map(device_map: Any, compiled_devices: int) -> int:
    """Validates ``device_map`` ({"lpu": N}, or {"gpu": G, "lpu": N} for hybrid mode) against
    the compile; returns N. :func:`hybrid_gpus` gives G."""
    if device_map is None or device_map == "auto":
        return compiled_devices
    if not isinstance(device_map, dict):
        raise ConfigError(f"device_map must be a dict like {{'lpu': 1}}, got {device_map!r}")
    unknown = sorted(set(device_map) - {"lpu", "gpu"})
    if unknown:
        raise ConfigError(
            f"device_map has unknown key(s) {unknown}; use {{'lpu': N}} or, for hybrid mode, "
            "{'gpu': G, 'lpu': N}"
        )
    gpus = device_map.get("gpu", 0)
    if isinstance(gpus, bool) or not isinstance(gpus, int) or gpus < 0:
        raise ConfigError(f"device_map['gpu'] must be an integer >= 0, got {gpus!r}")
    n = device_map.get("lpu", compiled_devices)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"device_map['lpu'] must be a positive integer, got {n!r}")
    if n != compiled_devices:
        raise ConfigError(
            f"the model was compiled for {compiled_devices} LPU device(s) but device_map asks "
            f"for {n}; load it with device_map={{'lpu': {compiled_devices}}} or recompile with "
            f"num_device={n}"
        )
    return n


def hybrid_gpus(device_map: Any) -> int:
    """G of a hybrid ``device_map={"gpu": G, "lpu": N}`` (0: no hybrid mode); call after
    :func:`check_device_map`."""
    return int(device_map.get("gpu", 0)) if isinstance(device_map, dict) else 0
