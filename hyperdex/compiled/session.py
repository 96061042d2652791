"""A device session on a compiled folder: the emulator (one device or a ring) or a board
through XRT, with the compiled model's parameters and programs loaded."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional

from ..errors import ConfigError, DeviceError, FormatError
from .folder import MEMORY_MAP_NAME, kv_regions

log = logging.getLogger("hyperdex")

BACKENDS = ("emu", "xrt")


def open_session(
    folder: Path,
    memory_map: dict[str, Any],
    backend: Optional[str],
    num_threads: int = 0,
    timeout: Optional[float] = None,
) -> tuple[Any, str]:
    """A device session with the compiled model loaded; returns (session, backend name).
    ``timeout`` (seconds) bounds each run: None is no limit on the emulator and
    ``hyperdex.xrt.DEFAULT_TIMEOUT_S`` on a board."""
    from .. import _core
    from .. import xrt as xrt_env
    from ..presets import device_preset

    if backend is None:
        backend, why = xrt_env.choose_backend(memory_map["device_preset"])
        log.info("hyperdex: %s", why)
    if backend not in BACKENDS:
        raise ConfigError(f"backend must be one of {BACKENDS} or None, got {backend!r}")
    if backend == "xrt" and not xrt_env.has_xrt():
        raise DeviceError(xrt_env.missing_message())
    if isinstance(num_threads, bool) or not isinstance(num_threads, int) or num_threads < 0:
        raise ConfigError(f"num_threads must be an integer >= 0, got {num_threads!r}")
    if timeout is not None and (
        isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0
    ):
        raise ConfigError(f"timeout must be a number of seconds > 0 or None, got {timeout!r}")

    num_device = int(memory_map.get("num_device", 1))
    if num_device > 1:
        devices = memory_map.get("devices")
        if not isinstance(devices, list) or len(devices) != num_device:
            raise FormatError(
                f"{folder / 'config' / MEMORY_MAP_NAME} lists no parameter files for each of "
                f"its {num_device} devices; recompile the model"
            )
        configs = [session_config(folder, memory_map, d["param_files"]) for d in devices]
    else:
        configs = [session_config(folder, memory_map, memory_map["param_files"])]
    preset = device_preset(memory_map["device_preset"])
    if backend == "xrt":
        if num_device > 1:
            raise DeviceError(
                f"the model was compiled for a ring of {num_device} LPUs; the XRT backend drives "
                "one board so far: load it with backend='emu' or recompile with num_device=1"
            )
        xclbin, kernel, index = xrt_env.board_options(memory_map["device_preset"])
        xrt_env.ensure_xilinx_xrt()
        seconds = xrt_env.DEFAULT_TIMEOUT_S if timeout is None else float(timeout)
        return _core.Session.xrt(preset, configs[0], xclbin, kernel, index, seconds), backend
    seconds = 0.0 if timeout is None else float(timeout)
    if num_device > 1:
        vocab = int(memory_map["vocab_size"])
        return (
            _core.Session.emulator_ring(preset, configs, vocab, num_threads, seconds),
            backend,
        )
    return _core.Session.emulator(preset, configs[0], num_threads, seconds), backend


def session_config(
    folder: Path, memory_map: dict[str, Any], param_files: list[dict[str, Any]]
) -> Any:
    """One device's SessionConfig: the shared plan with its own parameter files."""
    from .. import _core

    io = memory_map["segments"]["io"]
    config = _core.SessionConfig()
    layout = _core.DeviceLayout()
    layout.channel_bytes = [int(b) for b in memory_map["channel_bytes"]]
    layout.io_base = int(io["offset"])
    layout.io_bytes = int(io["bytes"])
    config.layout = layout
    config.set_io(
        int(io["offset"]),
        int(io["ids_offset"]),
        int(io["argmax_offset"]),
        int(io["logits_offset"]),
        int(io["bytes"]),
    )
    # The logits each device writes: its vocabulary slice on a ring, else the vocabulary.
    config.vocab_size = int(memory_map.get("device_vocab_size", memory_map["vocab_size"]))
    config.max_length = int(memory_map["max_length"])
    config.plan_fingerprint = int(memory_map["fingerprint"])
    config.weights_bytes = int(memory_map["segments"]["weights"]["bytes_per_channel"])
    config.params = [
        _core.ParamFile(str(folder / p["file"]), int(p["bytes"]), int(p["crc32"]))
        for p in param_files
    ]
    config.prefill_path = str(folder / "inst" / "prefill.bin")
    config.decode_path = str(folder / "inst" / "decode.bin")
    for r in kv_regions(memory_map):  # the prefix cache and hybrid mode move KV rows
        config.add_kv_region(
            int(r["offset"]),
            int(r["row_bytes"]),
            int(r["rows"]),
            int(r["cols"]),
            name=str(r.get("name", "")),  # errors then name the region
        )
    return config
