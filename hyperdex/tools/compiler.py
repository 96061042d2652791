"""AutoCompiler: a Hugging Face checkpoint -> a compiled LPU model folder.

Phases (docs/architecture.md), each leaving files under ``<prefix>/<org>/<model>/``:

0. check    architecture, device count, options and HBM capacity, before any work
1. fetch    ``ckpt/``: the HF files (local folder or the Hub)
2. convert  ``ckpt/hyperdex_config.json`` + ``ckpt/hyperdex_model.bin``
3. map      ``param/hbm_chNN.bin`` (one per HBM pseudo-channel) + ``config/memory_map.json``
4. instgen  ``inst/prefill.bin`` + ``inst/decode.bin`` (and readable ``.lst`` listings)

``compile.json`` is written last: a folder without it is not a finished compile. Every file
is written under a temporary name and renamed, so an interrupted compile never leaves a file
that looks complete. With ``fast_compile=True`` a phase is skipped when its outputs exist and
were made from the same inputs (a hash of the inputs and options, recorded in a stamp).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any, Optional, Union

from .. import __version__, _core
from ..arch.registry import model_traits
from ..errors import ConfigError
from ..paths import compiled_dir, is_local_model
from ..presets import load_preset
from .converter import (
    HYPERDEX_CONFIG_NAME,
    HYPERDEX_MODEL_NAME,
    AutoModelConverter,
    load_converted,
    read_hf_config,
)
from .fetch import copy_local, download
from .lowering import device_preset, memory_map_dict, model_spec
from .progress import progress_bar

log = logging.getLogger("hyperdex")

COMPILE_INFO_NAME = "compile.json"
MEMORY_MAP_NAME = "memory_map.json"
DEFAULT_MAX_LENGTH = 2048
_STAMP = ".stamp.json"
PathLike = Union[str, Path]


def _hash(*parts: Any) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(json.dumps(p, sort_keys=True, default=str).encode())
    return h.hexdigest()


def _stamp_matches(folder: Path, key: str, outputs: list[Path]) -> bool:
    stamp = folder / _STAMP
    if not stamp.is_file() or not all(p.is_file() for p in outputs):
        return False
    try:
        return json.loads(stamp.read_text())["inputs"] == key
    except (json.JSONDecodeError, KeyError):
        return False


def _write_stamp(folder: Path, key: str) -> None:
    _write_json(folder / _STAMP, {"inputs": key, "hyperdex_version": __version__})


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)


def _check_num_device(num_device: Any) -> int:
    if isinstance(num_device, bool) or not isinstance(num_device, int):
        raise ConfigError(f"num_device must be an integer, got {num_device!r}")
    if num_device < 1 or num_device & (num_device - 1):
        raise ConfigError(
            f"num_device must be a power of two (1, 2, 4, 8, ...): the devices form a ring; "
            f"got {num_device}"
        )
    if num_device != 1:
        raise ConfigError(
            f"num_device={num_device}: tensor-parallel mapping over several LPUs is not "
            "available in this version of hyperdex; compile with num_device=1"
        )
    return num_device


class AutoCompiler:
    """Compiles Hugging Face causal LMs for LPU devices (and the emulator).

    >>> path = AutoCompiler().compile(model_id="/path/to/hf/folder", num_device=1)
    """

    def __init__(self, prefix: Optional[PathLike] = None) -> None:
        self.prefix = prefix

    def compile(
        self,
        model_id: PathLike,
        num_device: int = 1,
        max_length: Optional[int] = None,
        low_memory_usage: bool = False,
        fast_compile: bool = False,
        token: Optional[str] = None,
        type_device: str = "u55c",
        prefix: Optional[PathLike] = None,
        quantization: Optional[str] = None,
        progress: bool = True,
    ) -> str:
        """Runs phases 0-4 and returns the compiled model's folder."""
        timings: dict[str, float] = {}
        out = compiled_dir(model_id, prefix if prefix is not None else self.prefix)
        t0 = time.perf_counter()

        # Phase 0: check everything that can be checked before any work.
        num_device = _check_num_device(num_device)
        if quantization is not None:
            raise ConfigError(
                f"quantization={quantization!r} is not available in this version of hyperdex; "
                "compile in fp16 (quantization=None)"
            )
        for name, value in (("low_memory_usage", low_memory_usage), ("fast_compile", fast_compile)):
            if not isinstance(value, bool):
                raise ConfigError(f"{name} must be True or False, got {value!r}")
        preset = load_preset(type_device)
        local = is_local_model(model_id)
        ckpt = out / "ckpt"
        if local:
            source_config = read_hf_config(Path(model_id).expanduser())
        else:
            log.info("Phase 1: download %s into %s", model_id, ckpt)
            download(str(model_id), ckpt, token=token)
            source_config = read_hf_config(ckpt)
        hf_name, _, model = model_traits(source_config)
        max_length = self._check_max_length(max_length, model)
        spec = model_spec({"architecture": hf_name, "model": model})
        core_preset = device_preset(preset)
        max_tokens = _core.choose_max_tokens(spec, core_preset, max_length)
        _core.plan_memory(spec, core_preset, max_length, max_tokens)  # raises CapacityError
        timings["check"] = time.perf_counter() - t0
        log.info("Phase 0: %s fits one %s (max_length=%d)", hf_name, preset["name"], max_length)

        out.mkdir(parents=True, exist_ok=True)
        (out / COMPILE_INFO_NAME).unlink(missing_ok=True)  # not finished until rewritten

        # Phase 1: fetch.
        t = time.perf_counter()
        if local:
            src = Path(model_id).expanduser()
            log.info("Phase 1: copy %s into %s", src, ckpt)
            copy_local(src, ckpt)
        timings["fetch"] = time.perf_counter() - t

        # Phase 2: convert.
        t = time.perf_counter()
        converted = [ckpt / HYPERDEX_CONFIG_NAME, ckpt / HYPERDEX_MODEL_NAME]
        convert_key = _hash(
            "convert",
            __version__,
            source_config,
            quantization,
            sorted(
                (p.name, p.stat().st_size)
                for p in ckpt.iterdir()
                if p.suffix in (".safetensors", ".bin") and p.name != HYPERDEX_MODEL_NAME
            ),
        )
        stamp_dir = out / "ckpt"
        if fast_compile and _stamp_matches(stamp_dir, convert_key, converted):
            log.info("Phase 2: converted checkpoint is up to date (fast_compile)")
        else:
            log.info("Phase 2: convert %s to hyperdex format", ckpt)
            AutoModelConverter(ckpt).save_pretrained(ckpt, progress=progress)
            _write_stamp(stamp_dir, convert_key)
        if low_memory_usage:
            for p in ckpt.iterdir():
                if p.suffix in (".safetensors", ".bin") and p.name != HYPERDEX_MODEL_NAME:
                    p.unlink()
        timings["convert"] = time.perf_counter() - t

        # Phase 3: map.
        t = time.perf_counter()
        config, model_file = load_converted(ckpt, verify=not fast_compile)
        spec = model_spec(config)
        plan = _core.plan_memory(spec, core_preset, max_length, max_tokens)
        param_dir, config_dir = out / "param", out / "config"
        map_key = _hash(
            "map",
            __version__,
            config,
            model_file.info("tok_embd.weight").crc32,
            preset,
            max_length,
            num_device,
        )
        memory_map = config_dir / MEMORY_MAP_NAME
        if fast_compile and _stamp_matches(config_dir, map_key, [memory_map]):
            log.info("Phase 3: parameters are up to date (fast_compile)")
        else:
            log.info("Phase 3: map parameters onto %d HBM pseudo-channels", plan.num_channels)
            for d in (param_dir, config_dir):
                if d.exists():
                    shutil.rmtree(d)
                d.mkdir(parents=True)
            tensors = {name: model_file[name] for name in model_file.names}
            with progress_bar(plan.num_channels, "map", "channel", enabled=progress) as bar:
                files = _core.write_params(
                    spec, plan, tensors, str(param_dir), lambda _c: bar.update(1)
                )
            del tensors
            param_files = [
                {"file": f"param/{Path(f.path).name}", "bytes": f.bytes, "crc32": f.crc32}
                for f in files
            ]
            _write_json(memory_map, memory_map_dict(plan, preset, num_device, param_files))
            _write_stamp(config_dir, map_key)
        model_file.close()
        timings["map"] = time.perf_counter() - t

        # Phase 4: instgen.
        t = time.perf_counter()
        inst_dir = out / "inst"
        inst_key = _hash("instgen", __version__, json.loads(memory_map.read_text()), config)
        programs = [inst_dir / "prefill.bin", inst_dir / "decode.bin"]
        if fast_compile and _stamp_matches(inst_dir, inst_key, programs):
            log.info("Phase 4: programs are up to date (fast_compile)")
        else:
            log.info("Phase 4: generate LPU instructions")
            inst_dir.mkdir(exist_ok=True)
            names = {r.base: r.name for r in plan.regions}
            for program, path in zip(_core.generate_programs(spec, plan), programs):
                program.save(str(path))
                listing = path.with_suffix(".lst")
                listing.with_name(listing.name + ".tmp").write_text(program.disassemble(names))
                listing.with_name(listing.name + ".tmp").replace(listing)
            _write_stamp(inst_dir, inst_key)
        timings["instgen"] = time.perf_counter() - t

        _write_json(
            out / COMPILE_INFO_NAME,
            {
                "format": "hyperdex-compile",
                "format_version": 1,
                "hyperdex_version": __version__,
                "model_id": str(model_id),
                "architecture": hf_name,
                "num_device": num_device,
                "max_length": max_length,
                "type_device": preset["name"],
                "quantization": quantization,
                "low_memory_usage": low_memory_usage,
                "timings_s": {k: round(v, 3) for k, v in timings.items()},
            },
        )
        log.info("Compiled %s into %s", model_id, out)
        return str(out)

    @staticmethod
    def _check_max_length(max_length: Any, model: dict[str, Any]) -> int:
        limit = int(model["max_position_embeddings"])
        if max_length is None:
            return min(limit, DEFAULT_MAX_LENGTH)
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1:
            raise ConfigError(f"max_length must be a positive integer, got {max_length!r}")
        if max_length > limit:
            raise ConfigError(
                f"max_length={max_length} exceeds the model's {limit} positions "
                "(max_position_embeddings); use max_length <= " + str(limit)
            )
        return max_length
