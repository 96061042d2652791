"""Finding and checking a compiled model folder, and opening a device session on it."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Optional, Union

from .. import __version__
from ..errors import ConfigError, DeviceError, FormatError
from ..paths import compiled_dir

log = logging.getLogger("hyperdex")

PathLike = Union[str, Path]
BACKENDS = ("emu", "xrt")


def resolve_compiled(model_id: PathLike, prefix: Optional[PathLike] = None) -> Path:
    """The compiled folder for a path (the folder compile() returned) or for the model id and
    prefix given to compile()."""
    path = Path(model_id).expanduser()
    if (path / "config" / "memory_map.json").is_file() or (path / "compile.json").is_file():
        folder = path
    else:
        folder = compiled_dir(model_id, prefix)
    if not (folder / "compile.json").is_file():
        if folder == path:  # given a compiled folder: we cannot know the source's name
            hint = "compile the source model again (AutoCompiler().compile(model_id=...))"
        else:
            hint = (
                f"compile it first: AutoCompiler().compile(model_id={str(model_id)!r}"
                + (f", prefix={str(prefix)!r}" if prefix is not None else "")
                + ")"
            )
        if folder.is_dir():
            raise FormatError(
                f"{folder} is not a finished compile (compile.json is missing: the compile was "
                f"interrupted or failed); {hint}"
            )
        raise FormatError(f"no compiled model at {folder}; {hint}")
    return folder


def read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise FormatError(f"{path} is missing; recompile the model") from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise FormatError(f"{path} ({what}) is corrupt: {e}; recompile the model") from e
    if not isinstance(data, dict):
        raise FormatError(f"{path} ({what}) is corrupt; recompile the model")
    return data


def read_memory_map(folder: Path) -> dict[str, Any]:
    from .. import _core

    path = folder / "config" / "memory_map.json"
    mm = read_json(path, "memory map")
    if (
        mm.get("format") != "hyperdex-memory-map"
        or mm.get("format_version") != _core.PLAN_FORMAT_VERSION
        or mm.get("isa_version") != _core.ISA_VERSION
    ):
        raise FormatError(
            f"{path} is memory-map format {mm.get('format_version')!r} / ISA "
            f"{mm.get('isa_version')!r}; this hyperdex ({__version__}) reads format "
            f"{_core.PLAN_FORMAT_VERSION} / ISA {_core.ISA_VERSION}. Recompile the model "
            "(AutoCompiler().compile(..., fast_compile=False))"
        )
    return mm


def kv_regions(memory_map: dict[str, Any]) -> list[dict[str, Any]]:
    """The KV cache regions of the memory map in plan order (per layer: K, then V)."""
    return [r for r in memory_map["regions"] if r.get("kind") == "KvCache"]


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
    from ..tools.lowering import device_preset

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
                f"{folder / 'config' / 'memory_map.json'} lists no parameter files for each of "
                f"its {num_device} devices; recompile the model"
            )
        configs = [_session_config(folder, memory_map, d["param_files"]) for d in devices]
    else:
        configs = [_session_config(folder, memory_map, memory_map["param_files"])]
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


def _session_config(
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
        config.add_kv_region(int(r["offset"]), int(r["row_bytes"]), int(r["rows"]), int(r["cols"]))
    return config
