"""AutoCompiler: a Hugging Face checkpoint -> a compiled LPU model folder.

Phases (docs/architecture.md), each leaving files under ``<prefix>/<org>/<model>/``:

0. check    architecture, device count, options and HBM capacity, before any work
1. fetch    ``ckpt/``: the HF files (local folder or the Hub)
2. convert  ``ckpt/hyperdex_config.json`` + ``ckpt/hyperdex_model.bin``
3. map      ``param/hbm_chNN.bin`` (one per HBM pseudo-channel; ``param/devD/`` per device of
            a ring) + ``config/memory_map.json``
4. instgen  ``inst/prefill.bin`` + ``inst/decode.bin`` (and readable ``.lst`` listings)

``compile.json`` is written last: a folder without it is not a finished compile. It records
the size and CRC-32 of the JSON (and other small) files the runtime reads, which loading
checks (hyperdex/compiled/folder.py). Every file is written under a temporary name
(``<name>.tmp.<pid>-<random>``) and renamed, so an interrupted compile never leaves a file
that looks complete. With ``fast_compile=True`` a phase is skipped when its outputs exist,
were made from the same inputs (a hash of the inputs and options, recorded in a stamp) and
are still what it wrote (their checksums, also in the stamp; a converted model's JSON must
equal the config inside its hyperdex_model.bin).

Phases 1-4 run holding the folder's lock (hyperdex/tools/locking.py): a second compile of the
same folder waits for the first, and the compile that holds the lock first removes what a
killed one left (temporary files of processes that no longer exist).
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
from ..arch.record import ModelRecord, as_record
from ..arch.registry import max_length_limit, model_traits
from ..arch.spec import model_spec
from ..compiled.folder import (
    COMPILE_FORMAT,
    COMPILE_FORMAT_VERSION,
    COMPILE_INFO_NAME,
    MEMORY_MAP_NAME,
    seal_compile_info,
)
from ..compiled.record import HYPERDEX_CONFIG_NAME, HYPERDEX_MODEL_NAME, load_converted
from ..errors import CapacityError, ConfigError, FormatError
from ..formats import ModelFile
from ..formats.atomic import file_crc32, remove_stale_temps, write_json_atomic, write_text_atomic
from ..formats.gptq_checkpoint import gptq_settings
from ..paths import compiled_dir, is_local_model
from ..presets import device_preset, load_preset
from .calibration import quantize_converted
from .converter import AutoModelConverter, read_hf_config
from .fetch import copy_local, download, download_config
from .locking import compile_lock
from .lowering import memory_map_dict
from .passes import PassesArg, core_passes, pass_options
from .progress import progress_bar
from .quantization import QuantizationConfig, resolve_quantization
from .sharding import shard_tensors

log = logging.getLogger("hyperdex")

DEFAULT_MAX_LENGTH = 2048
MAX_DEVICES = 1024  # the largest ring compile() accepts (and a capacity error suggests)

_STAMP = ".stamp.json"
EXPORTS = (None, "vcu128")  # board-format exports compile() can write beside the programs
QUANTIZED_DIR = "quantized"  # ckpt/quantized/: the quantized conversion beside the fp16 one
PathLike = Union[str, Path]
QuantizationArg = Union[None, str, QuantizationConfig]


def _formats() -> dict[str, int]:
    """Format versions of everything a compile writes: a stamp from an older hyperdex whose
    files another version would reject must not count as up to date."""
    from ..compiled.record import CONFIG_FORMAT_VERSION
    from ..formats import MODEL_FILE_VERSION

    return {
        "config": CONFIG_FORMAT_VERSION,
        "model_file": MODEL_FILE_VERSION,
        "plan": _core.PLAN_FORMAT_VERSION,
        "isa": _core.ISA_VERSION,
        "program": _core.PROGRAM_FORMAT_VERSION,
    }


def _hash(*parts: Any) -> str:
    h = hashlib.sha256()
    h.update(json.dumps(_formats(), sort_keys=True).encode())
    for p in parts:
        h.update(json.dumps(p, sort_keys=True, default=str).encode())
    return h.hexdigest()


def _checksums(folder: Path, files: list[Path]) -> dict[str, list[int]]:
    """name (relative to the stamp's folder) -> [bytes, CRC-32] of each file."""
    return {p.relative_to(folder).as_posix(): list(file_crc32(p)) for p in files}


def _stamp_matches(
    folder: Path, key: str, outputs: list[Path], checked: Optional[list[Path]] = None
) -> bool:
    """Whether the phase that writes ``outputs`` into ``folder`` is up to date: they exist,
    the stamp was made from the same inputs (``key``), and each file of ``checked`` (small
    ones: the JSON records, the programs) still has the size and CRC-32 the stamp recorded,
    so an edited memory map or program is made again rather than kept."""
    stamp = folder / _STAMP
    if not stamp.is_file() or not all(p.is_file() for p in outputs):
        return False
    try:
        data = json.loads(stamp.read_text())
        if data["inputs"] != key:
            return False
        recorded = data["outputs"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return False
    if not isinstance(recorded, dict):
        return False
    for name, now in _checksums(folder, checked or []).items():
        if recorded.get(name) != now:
            log.info("%s changed since it was written; making it again", folder / name)
            return False
    return True


def _converted_current(folder: Path) -> bool:
    """Whether a converted model (hyperdex_config.json + hyperdex_model.bin) is whole and
    consistent: the model file passes every checksum, and hyperdex_config.json equals the
    config the model file carries under its header CRC (an edited JSON is stale)."""
    try:
        with ModelFile.open(folder / HYPERDEX_MODEL_NAME, verify=True) as model_file:
            inside = model_file.metadata.get("config")
    except FormatError as e:
        log.info("The converted checkpoint is damaged (%s); converting again", e)
        return False
    try:
        config = json.loads((folder / HYPERDEX_CONFIG_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        config = None
    if config != inside:
        log.info(
            "%s differs from the config recorded in %s; converting again",
            folder / HYPERDEX_CONFIG_NAME,
            HYPERDEX_MODEL_NAME,
        )
        return False
    return True


def _param_sizes_match(out: Path, memory_map: Path) -> bool:
    """Whether every parameter file the memory map lists has its recorded size (a cheap
    check; the runtime checks their CRC-32s when it loads them)."""
    try:
        mm = json.loads(memory_map.read_text(encoding="utf-8"))
        lists = [d["param_files"] for d in mm["devices"]] if "devices" in mm else []
        for rec in [r for files in [mm["param_files"], *lists] for r in files]:
            if (out / rec["file"]).stat().st_size != rec["bytes"]:
                log.info("%s has another size than the memory map says", out / rec["file"])
                return False
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return True


def _write_stamp(folder: Path, key: str, checked: Optional[list[Path]] = None) -> None:
    _write_json(
        folder / _STAMP,
        {
            "inputs": key,
            "hyperdex_version": __version__,
            "outputs": _checksums(folder, checked or []),
        },
    )


def _write_json(path: Path, data: Any) -> None:
    write_json_atomic(path, data)


def _check_num_device(num_device: Any) -> int:
    if isinstance(num_device, bool) or not isinstance(num_device, int):
        raise ConfigError(f"num_device must be an integer, got {num_device!r}")
    if num_device < 1 or num_device & (num_device - 1):
        raise ConfigError(
            f"num_device must be a power of two (1, 2, 4, 8, ...): the devices form a ring; "
            f"got {num_device}"
        )
    if num_device > MAX_DEVICES:
        raise ConfigError(f"num_device must be at most {MAX_DEVICES}, got {num_device}")
    return num_device


def _plan_shard(
    spec: Any, preset: Any, max_length: int, passes: Any, num_device: int
) -> tuple[Any, int, Any]:
    """(one device's ModelSpec, prefill chunk, memory plan) on a ring of ``num_device``;
    CapacityError when a share does not fit one device."""
    shard = _core.shard_spec(spec, num_device)
    max_tokens = _core.choose_max_tokens(shard, preset, max_length)
    return shard, max_tokens, _core.plan_memory(shard, preset, max_length, max_tokens, passes)


def _check_capacity(
    spec: Any, preset: Any, max_length: int, passes: Any, num_device: int
) -> tuple[Any, int]:
    """Phase 0's capacity check: the share of each of ``num_device`` devices must fit one
    device's HBM. The error gives the numbers and the smallest device count that fits."""
    try:
        shard, max_tokens, _ = _plan_shard(spec, preset, max_length, passes, num_device)
        return shard, max_tokens
    except CapacityError as e:
        smallest = None
        n = num_device * 2
        while n <= MAX_DEVICES and smallest is None:
            try:
                _plan_shard(spec, preset, max_length, passes, n)
                smallest = n
            except CapacityError:
                n *= 2
        what = str(e).split(" Use about")[0]
        if num_device > 1:
            what = f"with num_device={num_device}, one device's share: " + what
        if smallest is None:
            hint = (
                f" Not even {MAX_DEVICES} devices hold it: use a smaller max_length or "
                "quantization."
            )
        else:
            hint = (
                f" The smallest ring that fits has {smallest} devices: compile with "
                f"num_device={smallest} (or a smaller max_length, or quantization)."
            )
        raise CapacityError(what + hint) from None


# What each phase does and where it writes (seed 000's announcements).
PHASES = {
    "check": (
        "Phase-0 : Check the model against the device",
        "Architecture, device count, options and HBM capacity are checked before any work.",
    ),
    "fetch": (
        "Phase-1 : Download model from HuggingFace Hub",
        "The HF files are downloaded (or copied from a local folder) into {ckpt}.",
    ),
    "convert": (
        "Phase-2 : Convert the checkpoint format to HyperDex style",
        "Every tensor is validated against config.json and written as "
        "hyperdex_config.json + hyperdex_model.bin into {ckpt}.",
    ),
    "quantize": (
        "Phase-2b: Quantize the weights",
        "The linear layers' weights are quantized (GPTQ calibrates on the emulator, layer by "
        "layer) into {ckpt}/quantized.",
    ),
    "map": (
        "Phase-3 : Generate Optimized Model Mapping",
        "Parameters are laid out per HBM pseudo-channel in streaming order into {param}; "
        "the memory map goes to {config}.",
    ),
    "instgen": (
        "Phase-4 : Generate Optimized Model Instruction",
        "Prefill and decode programs for the LPU are generated into {inst}.",
    ),
}


def _dataset_digest(qconfig: QuantizationConfig) -> str:
    """The calibration data by content, so fast_compile notices other data."""
    h = hashlib.blake2b(digest_size=16)
    h.update(json.dumps(qconfig.dataset, default=str).encode())
    return h.hexdigest()


def _quantization_record(
    source_config: dict[str, Any],
    qconfig: Optional[QuantizationConfig],
    model_id: Any,
    folder: Optional[Path],
) -> Optional[dict[str, Any]]:
    """What the device will store: the requested scheme, or a GPTQ checkpoint's own (other
    quantization methods are rejected here, before any download)."""
    imported = gptq_settings(source_config, folder)
    if imported is None:
        return qconfig.to_dict() if qconfig is not None else None
    if qconfig is not None:
        raise ConfigError(
            f"{model_id} is already GPTQ-quantized ({imported.bits} bits); compile it with "
            "quantization=None to use its quantized weights as they are, or compile the fp16 "
            "model to quantize it with hyperdex"
        )
    return {
        "method": "gptq-import",
        "bits": imported.bits,
        "group_size": imported.group_size,
        "sym": True,
        "quantize_lm_head": imported.lm_head,
    }


def _file_digest(path: Path) -> str:
    """A content hash (not a timestamp): fast_compile reruns a phase when bytes change."""
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


class AutoCompiler:
    """Compiles Hugging Face causal LMs for LPU devices (and the emulator).

    >>> path = AutoCompiler().compile(model_id="/path/to/hf/folder", num_device=1)
    """

    def __init__(self, prefix: Optional[PathLike] = None) -> None:
        self.prefix = prefix
        self.last_timings: dict[str, float] = {}
        self.last_quantization: dict[str, Any] = {}  # GPTQ statistics of the last compile

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
        quantization: QuantizationArg = None,
        progress: bool = True,
        passes: PassesArg = None,
        export: Optional[str] = None,
        lock_timeout: Optional[float] = None,
    ) -> str:
        """Runs phases 0-4 and returns the compiled model's folder. Per-phase wall times are
        left in ``self.last_timings`` (and compile.json). ``passes`` switches the map and
        instgen passes (hyperdex.tools.passes; all on by default, e.g. ``{"reorder": False}``);
        none changes the model's outputs, only the device's time. ``quantization`` is None
        (fp16 weights), ``"w4a16"`` (GPTQ, 4-bit, group 128), ``"w8a16"`` (GPTQ, 8-bit, group
        128), ``"rtn-w4a16"`` (round to nearest) or a
        :class:`hyperdex.tools.QuantizationConfig`; a GPTQ checkpoint from the Hub is used as
        it is (pass None). ``export="vcu128"`` also writes seed 003's board files
        (``export/vcu128/``, docs/formats.md; int4 with group 128 only).

        One compile of a folder runs at a time: a second one waits for the first (and says
        so, naming its process), then proceeds; ``lock_timeout`` (seconds, default None: no
        limit) makes it give up with a ``CompileLockTimeout`` instead."""
        timings: dict[str, float] = {}
        self.last_timings = timings
        model_id = str(model_id) if isinstance(model_id, Path) else model_id
        qconfig = resolve_quantization(quantization)
        # Each scheme of a model gets a folder of its own (<name>-w4a16, ...).
        out = compiled_dir(
            model_id,
            prefix if prefix is not None else self.prefix,
            qconfig.variant if qconfig is not None else None,
        )
        where = {k: out / k for k in ("ckpt", "param", "config", "inst")}
        ckpt = where["ckpt"]

        def announce(phase: str) -> float:
            title, text = PHASES[phase]
            log.info("** %s **", title)
            log.info(text.format(**where))
            return time.perf_counter()

        # Phase 0: check everything that can be checked before any work.
        t = announce("check")
        num_device = _check_num_device(num_device)
        if export not in EXPORTS:
            raise ConfigError(
                f"export must be one of {', '.join(repr(e) for e in EXPORTS)}, got {export!r}"
            )
        for name, value in (("low_memory_usage", low_memory_usage), ("fast_compile", fast_compile)):
            if not isinstance(value, bool):
                raise ConfigError(f"{name} must be True or False, got {value!r}")
        if lock_timeout is not None and (
            isinstance(lock_timeout, bool)
            or not isinstance(lock_timeout, (int, float))
            or not lock_timeout >= 0
        ):
            raise ConfigError(
                f"lock_timeout must be a number of seconds >= 0 or None, got {lock_timeout!r}"
            )
        pass_settings = pass_options(passes)
        core_pass_options = core_passes(pass_settings)
        preset = load_preset(type_device)
        local = is_local_model(model_id)
        if local:
            source_config = read_hf_config(Path(model_id).expanduser())
        else:
            source_config = download_config(str(model_id), token=token)
        hf_name, _, model = model_traits(source_config)
        max_length = self._check_max_length(max_length, model)
        quant_record = _quantization_record(
            source_config, qconfig, model_id, Path(model_id).expanduser() if local else None
        )
        spec = model_spec({"architecture": hf_name, "model": model, "quantization": quant_record})
        if export == "vcu128" and (
            not quant_record or quant_record["bits"] != 4 or quant_record["group_size"] != 128
        ):
            raise ConfigError(
                "export='vcu128' writes seed 003's board format, int4 weights in groups of 128: "
                "compile with quantization='w4a16' (or a GPTQ checkpoint of 4 bits, group 128)"
            )
        if export == "vcu128":
            from .export_vcu128 import check_model_exportable

            check_model_exportable(hf_name, model)
        core_preset = device_preset(preset)
        _check_capacity(spec, core_preset, max_length, core_pass_options, num_device)
        log.info(
            "%s fits %d x %s with max_length=%d", hf_name, num_device, preset["name"], max_length
        )
        timings["check"] = time.perf_counter() - t

        out.mkdir(parents=True, exist_ok=True)
        # Phases 1-4 write the folder holding its lock: one compile of a folder at a time.
        with compile_lock(out, model_id, lock_timeout):
            # What a killed compile left: temporary files of processes that no longer exist.
            remove_stale_temps(out, legacy=True)
            (out / COMPILE_INFO_NAME).unlink(missing_ok=True)  # not finished until rewritten

            # Phase 1: fetch.
            t = announce("fetch")
            if local:
                src = Path(model_id).expanduser()
                log.info("Copy %s into %s", src, ckpt)
                copy_local(src, ckpt)
            else:
                log.info("Download %s into %s", model_id, ckpt)
                download(str(model_id), ckpt, token=token)
            weight_files = sorted(
                p
                for p in ckpt.iterdir()
                if p.suffix in (".safetensors", ".bin") and p.name != HYPERDEX_MODEL_NAME
            )
            timings["fetch"] = time.perf_counter() - t

            # Phase 2: convert.
            t = announce("convert")
            converted = [ckpt / HYPERDEX_CONFIG_NAME, ckpt / HYPERDEX_MODEL_NAME]
            convert_key = _hash(
                "convert",
                __version__,
                source_config,
                [(p.name, _file_digest(p)) for p in weight_files],
            )
            if (
                fast_compile
                and _stamp_matches(ckpt, convert_key, converted, converted[:1])
                and _converted_current(ckpt)
            ):
                log.info("The converted checkpoint is up to date (fast_compile)")
            else:
                AutoModelConverter(ckpt).save_pretrained(ckpt, progress=progress)
                _write_stamp(ckpt, convert_key, converted[:1])
            if low_memory_usage:
                for p in weight_files:
                    p.unlink()
                log.info("Removed the HF weights from %s (low_memory_usage)", ckpt)
            timings["convert"] = time.perf_counter() - t

            converted_dir = ckpt
            if qconfig is not None:
                t = announce("quantize")
                converted_dir = ckpt / QUANTIZED_DIR
                quantize_key = _hash(
                    "quantize",
                    __version__,
                    convert_key,
                    qconfig.to_dict(),
                    _dataset_digest(qconfig),
                )
                outputs = [
                    converted_dir / HYPERDEX_CONFIG_NAME,
                    converted_dir / HYPERDEX_MODEL_NAME,
                ]
                if (
                    fast_compile
                    and _stamp_matches(converted_dir, quantize_key, outputs, outputs[:1])
                    and _converted_current(converted_dir)
                ):
                    log.info("The quantized weights are up to date (fast_compile)")
                else:
                    self.last_quantization = quantize_converted(
                        ckpt, converted_dir, qconfig, preset, ckpt, progress
                    )
                    _write_stamp(converted_dir, quantize_key, outputs[:1])
                timings["quantize"] = time.perf_counter() - t

            # Phase 3: map.
            t = announce("map")
            # Verified above (fast_compile) or just written: no second checksum pass.
            config, model_file = load_converted(converted_dir, verify=False)
            spec, max_tokens, plan = _plan_shard(
                model_spec(config), core_preset, max_length, core_pass_options, num_device
            )
            param_dir, config_dir = where["param"], where["config"]
            tensor_crcs = [(n, model_file.info(n).crc32) for n in model_file.names]
            map_key = _hash(
                "map",
                __version__,
                config,
                tensor_crcs,
                preset,
                max_length,
                num_device,
                pass_settings,
            )
            memory_map = config_dir / MEMORY_MAP_NAME
            # One device keeps param/hbm_chNN.bin; device d of a ring has param/devD/hbm_chNN.bin.
            device_dirs = [
                param_dir if num_device == 1 else param_dir / f"dev{d}" for d in range(num_device)
            ]
            param_files = [
                d / _core.param_file_name(c) for d in device_dirs for c in range(plan.num_channels)
            ]
            if (
                fast_compile
                and _stamp_matches(config_dir, map_key, [memory_map, *param_files], [memory_map])
                and _param_sizes_match(out, memory_map)
            ):
                log.info("The parameter mapping is up to date (fast_compile)")
            else:
                for d in (param_dir, config_dir):
                    if d.exists():
                        shutil.rmtree(d)
                    d.mkdir(parents=True)
                tensors = {name: model_file[name] for name in model_file.names}
                records: list[list[dict[str, Any]]] = []
                total = plan.num_channels * num_device
                with progress_bar(total, "map", "channel", enabled=progress) as bar:
                    for rank, ddir in enumerate(device_dirs):
                        ddir.mkdir(exist_ok=True)
                        shard = shard_tensors(
                            config["model"],
                            tensors,
                            num_device,
                            rank,
                            quantization=config.get("quantization"),
                        )
                        files = _core.write_params(
                            spec, plan, shard, str(ddir), lambda _c: bar.update(1)
                        )
                        del shard
                        records.append(
                            [
                                {
                                    "file": (ddir / Path(f.path).name).relative_to(out).as_posix(),
                                    "bytes": f.bytes,
                                    "crc32": f.crc32,
                                }
                                for f in files
                            ]
                        )
                del tensors
                _write_json(
                    memory_map,
                    memory_map_dict(
                        plan,
                        preset,
                        num_device,
                        records[0],
                        vocab_size=as_record(config["model"]).vocab_size,
                        device_param_files=records if num_device > 1 else None,
                        scratch_bytes=_core.lmem_bytes_per_token(spec) * max_tokens,
                    ),
                )
                _write_stamp(config_dir, map_key, [memory_map])
            model_file.close()
            timings["map"] = time.perf_counter() - t

            # Phase 4: instgen.
            t = announce("instgen")
            inst_dir = where["inst"]
            inst_key = _hash(
                "instgen", __version__, json.loads(memory_map.read_text()), config, pass_settings
            )
            programs = [inst_dir / "prefill.bin", inst_dir / "decode.bin"]
            if fast_compile and _stamp_matches(inst_dir, inst_key, programs, programs):
                log.info("The programs are up to date (fast_compile)")
            else:
                inst_dir.mkdir(exist_ok=True)
                names = {r.base: r.name for r in plan.regions}
                with progress_bar(len(programs), "instgen", "program", enabled=progress) as bar:
                    generated = _core.generate_programs(spec, plan, core_pass_options, num_device)
                    for program, path in zip(generated, programs):
                        program.save(str(path))
                        write_text_atomic(path.with_suffix(".lst"), program.disassemble(names))
                        bar.update(1)
                _write_stamp(inst_dir, inst_key, programs)
            timings["instgen"] = time.perf_counter() - t

            if export == "vcu128":
                t = time.perf_counter()
                from .export_vcu128 import export_vcu128

                skip_head = not (quant_record or {}).get("quantize_lm_head", False)
                if skip_head:
                    log.warning(
                        "The LM head is fp16 (quantize_lm_head=False): the VCU128 export leaves "
                        "out its board files; quantize it too for a complete board image"
                    )
                where_export = export_vcu128(out, skip_lm_head=skip_head)
                log.info("Wrote seed 003's VCU128 board files into %s", where_export)
                timings["export"] = time.perf_counter() - t

            # Last, with the checksums of the files as they are now (every phase has checked
            # or written them above).
            record = {
                "format": COMPILE_FORMAT,
                "format_version": COMPILE_FORMAT_VERSION,
                "hyperdex_version": __version__,
                "model_id": str(model_id),
                "architecture": hf_name,
                "num_device": num_device,
                "max_length": max_length,
                "type_device": preset["name"],
                "quantization": config.get("quantization"),
                "low_memory_usage": low_memory_usage,
                "passes": pass_settings,
                "timings_s": {k: round(v, 3) for k, v in timings.items()},
            }
            _write_json(out / COMPILE_INFO_NAME, seal_compile_info(out, record))
            log.info("Compiled %s into %s", model_id, out)
            return str(out)

    @staticmethod
    def _check_max_length(max_length: Any, model: ModelRecord) -> int:
        limit, why = max_length_limit(model)
        if max_length is None:
            return min(limit, DEFAULT_MAX_LENGTH)
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1:
            raise ConfigError(f"max_length must be a positive integer, got {max_length!r}")
        if max_length > limit:
            raise ConfigError(
                f"max_length={max_length} exceeds the model's {limit} positions "
                f"({why}); use max_length <= {limit}"
            )
        return max_length
