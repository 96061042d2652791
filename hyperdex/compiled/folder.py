"""A compiled folder: where it is, and its JSON records (compile record, memory map), checked
before anything in them is used.

``compile.json`` is written last by the compiler and records the size and CRC-32 of every
file the runtime reads that is not checked otherwise (:func:`recorded_files`: the memory map,
hyperdex_config.json and the Hugging Face files in ``ckpt/`` but the weights), plus a CRC-32
of itself. :func:`verify_compiled` checks them all, and the structure of the JSON records, when
a folder is resolved (``from_pretrained``, ``AutoConfig``, ``AutoTokenizer``, serving): a
file edited, replaced or added after the compile is a FormatError naming it and saying how
to recompile. The binary files carry checksums of their own (parameter files: sizes and
CRC-32s in the memory map; programs: their header), checked when the session opens.
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Optional, Union

from .. import __version__
from ..errors import ConfigError, FormatError
from ..jsonfile import load_json
from ..paths import compiled_dir
from ..presets import check_preset
from .record import HYPERDEX_CONFIG_NAME, check_converted_config, scheme_name
from .schema import (
    Schema,
    check_fields,
    is_bool,
    is_dict,
    is_dict_or_none,
    is_pos32,
    is_str,
    is_u32,
    is_uint,
)

PathLike = Union[str, Path]

COMPILE_INFO_NAME = "compile.json"  # written last: a folder without it is unfinished
COMPILE_FORMAT = "hyperdex-compile"
COMPILE_FORMAT_VERSION = 2  # 2: records the checksums of the JSON files ("files")
MEMORY_MAP_NAME = "memory_map.json"  # under config/
MEMORY_MAP_FORMAT = "hyperdex-memory-map"
MEMORY_MAP_FILE = f"config/{MEMORY_MAP_NAME}"
# Any of these marks a folder holding a Hugging Face tokenizer (ckpt/, or an HF folder).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")
# The files of ckpt/ that compile.json records (every one the compile fetched but the weights:
# config, generation config, tokenizer): all change what the runtime computes or samples.
RECORDED_SUFFIXES = (".json", ".model", ".txt", ".tiktoken", ".jinja")
# JSON records whose structure is checked (file -> checker), before their checksum.
CONVERTED_CONFIG_FILES = (f"ckpt/{HYPERDEX_CONFIG_NAME}", f"ckpt/quantized/{HYPERDEX_CONFIG_NAME}")


def resolve_compiled(model_id: PathLike, prefix: Optional[PathLike] = None) -> Path:
    """The compiled folder for a path (the folder compile() returned) or for the model id and
    prefix given to compile(), checked with :func:`verify_compiled`."""
    path = Path(model_id).expanduser()
    if (path / "config" / MEMORY_MAP_NAME).is_file() or (path / COMPILE_INFO_NAME).is_file():
        folder = path
    else:
        folder = compiled_dir(model_id, prefix)
    if not (folder / COMPILE_INFO_NAME).is_file():
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
                f"{folder} is not a finished compile ({COMPILE_INFO_NAME} is missing: the "
                f"compile was interrupted or failed); {hint}"
            )
        raise FormatError(f"no compiled model at {folder}; {hint}")
    verify_compiled(folder)
    return folder


def read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        raw = path.read_bytes()
    except FileNotFoundError as e:
        raise FormatError(f"{path} is missing; recompile the model") from e
    except OSError as e:
        raise FormatError(f"{path} ({what}) cannot be read ({e}); recompile the model") from e
    return json_object(raw, path, "recompile the model", what)


def json_object(raw: bytes, path: Path, hint: str, what: str = "") -> dict[str, Any]:
    """The JSON object in ``raw`` (the bytes of ``path``); a FormatError naming the file and
    ending with ``hint`` for anything else (:func:`load_json`: never another exception)."""
    label = f"{path} ({what})" if what else str(path)
    data = load_json(raw, lambda why: FormatError(f"{label} is corrupt: {why}; {hint}"))
    if not isinstance(data, dict):
        raise FormatError(f"{label} is corrupt (not a JSON object); {hint}")
    return data


def read_memory_map(folder: Path) -> dict[str, Any]:
    path = folder / "config" / MEMORY_MAP_NAME
    mm = read_json(path, "memory map")
    check_memory_map(mm, path)
    return mm


def kv_regions(memory_map: dict[str, Any]) -> list[dict[str, Any]]:
    """The KV cache regions of the memory map in plan order (per layer: K, then V)."""
    return [r for r in memory_map["regions"] if r.get("kind") == "KvCache"]


# -- checksums ----------------------------------------------------------------------------------


def recorded_files(folder: Path) -> list[str]:
    """The files (relative, '/'-separated) a compile.json written now would record."""
    names = [MEMORY_MAP_FILE]
    ckpt = folder / "ckpt"
    if ckpt.is_dir():
        names += [f"ckpt/{n}" for n in _recordable(ckpt)]
    quantized = folder / CONVERTED_CONFIG_FILES[1]
    if quantized.is_file():
        names.append(CONVERTED_CONFIG_FILES[1])
    return names


def _recordable(ckpt: Path) -> list[str]:
    return sorted(
        p.name
        for p in ckpt.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.name.endswith(RECORDED_SUFFIXES)
    )


def file_records(folder: Path, names: list[str]) -> list[dict[str, Any]]:
    """``{"file", "bytes", "crc32"}`` of each file, as the memory map lists parameter files."""
    records = []
    for name in names:
        data = (folder / name).read_bytes()
        records.append({"file": name, "bytes": len(data), "crc32": zlib.crc32(data)})
    return records


def record_crc32(info: dict[str, Any]) -> int:
    """The CRC-32 of a compile record without its own ``record_crc32`` (canonical JSON)."""
    body = {k: v for k, v in info.items() if k != "record_crc32"}
    return zlib.crc32(json.dumps(body, sort_keys=True, separators=(",", ":")).encode())


def seal_compile_info(folder: Path, info: dict[str, Any]) -> dict[str, Any]:
    """``info`` with the checksums of the folder's files as they are now and its own CRC:
    what the compiler writes as compile.json once every other file is in place."""
    sealed = dict(info, files=file_records(folder, recorded_files(folder)))
    sealed["record_crc32"] = record_crc32(sealed)
    return sealed


def recompile_call(folder: Path, info: Optional[dict[str, Any]], trusted: bool = True) -> str:
    """The compile() call that rebuilds ``folder``, from its compile record, for messages.
    A record that failed its own checks (not ``trusted``) gives only the model and prefix."""
    if not info or not isinstance(info.get("model_id"), str):
        return "AutoCompiler().compile(model_id=<the source model>, fast_compile=True)"
    model_id = info["model_id"]
    args = [f"model_id={model_id!r}"]
    if not trusted:
        if compiled_dir_matches(folder, model_id, None):
            args.append(f"prefix={str(folder.parents[1])!r}")
        return (
            f"AutoCompiler().compile({', '.join(args)}, <the options it was compiled with>, "
            "fast_compile=True)"
        )
    record = info.get("quantization")
    imported = isinstance(record, dict) and record.get("method") == "gptq-import"
    variant = None if imported or not isinstance(record, dict) else scheme_name(record)
    if compiled_dir_matches(folder, model_id, variant):
        args.append(f"prefix={str(folder.parents[1])!r}")
    if variant:
        args.append(f"quantization={variant!r}")
    for key in ("num_device", "max_length"):
        if isinstance(info.get(key), int):
            args.append(f"{key}={info[key]}")
    if isinstance(info.get("type_device"), str) and info["type_device"] != "u55c":
        args.append(f"type_device={info['type_device']!r}")
    passes = info.get("passes")
    if isinstance(passes, dict) and not all(v is True for v in passes.values()):
        args.append(f"passes={passes!r}")
    return f"AutoCompiler().compile({', '.join(args)}, fast_compile=True)"


def compiled_dir_matches(folder: Path, model_id: str, variant: Optional[str]) -> bool:
    """Whether ``folder`` is where compile(model_id, prefix=<its grandparent>) writes."""
    try:
        return compiled_dir(model_id, folder.parents[1], variant) == folder
    except (ConfigError, IndexError, TypeError, ValueError):
        return False


def verify_compiled(folder: Path) -> dict[str, Any]:
    """Checks a finished compiled folder before anything in it is used, and returns its
    compile record: compile.json's format, structure and own CRC, then every file it records
    (a JSON record's format and structure first, then size and CRC-32), and that ``ckpt/``
    holds no file the compile did not record. Each failure is a FormatError naming the file
    (and the field, for a structural error) with the compile() call that rebuilds it."""
    path = folder / COMPILE_INFO_NAME
    info = read_json(path, "compile record")
    untrusted = f"recompile the model: {recompile_call(folder, info, trusted=False)}"
    if info.get("format") != COMPILE_FORMAT or info.get("format_version") != COMPILE_FORMAT_VERSION:
        raise FormatError(
            f"{path} is format {info.get('format')!r} version {info.get('format_version')!r}; "
            f"this hyperdex ({__version__}) reads {COMPILE_FORMAT!r} version "
            f"{COMPILE_FORMAT_VERSION}: {untrusted}"
        )
    check_fields(info, _COMPILE_FIELDS, path, untrusted)
    if info["record_crc32"] != record_crc32(info):
        raise FormatError(
            f"{path} was changed after the compile (its record_crc32 no longer matches its "
            f"content): {untrusted}"
        )
    hint = f"recompile the model: {recompile_call(folder, info)} rebuilds what changed"
    listed = {f["file"]: f for f in info["files"]}
    for required in (MEMORY_MAP_FILE, CONVERTED_CONFIG_FILES[0]):
        if required not in listed:
            raise FormatError(f"{path}: 'files' does not list {required}: {hint}")
    for i, rec in enumerate(info["files"]):
        rel = PurePosixPath(rec["file"])
        if rel.is_absolute() or ".." in rel.parts or not rel.parts or "\0" in rec["file"]:
            raise FormatError(
                f"{path}: field 'files[{i}].file' must be a path inside the "
                f"folder, got {rec['file']!r}: {hint}"
            )
        _verify_file(folder, rec, hint)
    ckpt = folder / "ckpt"
    if ckpt.is_dir():
        added = [f"ckpt/{n}" for n in _recordable(ckpt) if f"ckpt/{n}" not in listed]
        if added:
            raise FormatError(
                f"{folder / added[0]} was added after the compile (compile.json does not "
                f"record it; it may change what the model computes): remove it or {hint}"
            )
    return info


def _verify_file(folder: Path, rec: dict[str, Any], hint: str) -> None:
    path = folder / rec["file"]
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise FormatError(f"{path} is missing (compile.json records it): {hint}") from None
    except OSError as e:
        raise FormatError(f"{path} cannot be read ({e}): {hint}") from e
    checker = _JSON_CHECKS.get(rec["file"])
    if checker is not None:
        checker(json_object(data, path, hint), path, hint)
    crc = zlib.crc32(data)
    if len(data) != rec["bytes"] or crc != rec["crc32"]:
        raise FormatError(
            f"{path} was changed after the compile ({len(data)} bytes, CRC-32 {crc:08x}; "
            f"compile.json records {rec['bytes']} bytes, CRC-32 {rec['crc32']:08x}), so the "
            f"folder no longer holds the model that was compiled: {hint}"
        )


# -- structure ----------------------------------------------------------------------------------

_FILE_RECORD: Schema = {"file": is_str, "bytes": is_uint, "crc32": is_u32}
_COMPILE_FIELDS: Schema = {
    "hyperdex_version": is_str,
    "model_id": is_str,
    "architecture": is_str,
    "num_device": is_pos32,
    "max_length": is_pos32,
    "type_device": is_str,
    "quantization": is_dict_or_none,
    "low_memory_usage": is_bool,
    "passes": is_dict,
    "timings_s": is_dict,
    "files[]": _FILE_RECORD,
    "record_crc32": is_u32,
}
# Each number's kind is the C++ field it fills (SessionConfig, IoLayout, KvRegion,
# DeviceLayout: session.py): 64-bit offsets and sizes, 32-bit counts.
_REGION: Schema = {
    "name": is_str,
    "kind": is_str,
    "offset": is_uint,
    "row_bytes": is_u32,
    "rows": is_u32,
    "cols": is_u32,
}
_MEMORY_MAP_FIELDS: Schema = {
    "fingerprint": is_u32,
    "device_preset": is_dict,
    "num_device": is_pos32,
    "num_channels": is_pos32,
    "max_length": is_pos32,
    "max_tokens": is_pos32,
    "vocab_size": is_pos32,
    "device_vocab_size": is_pos32,
    "segments.weights.bytes_per_channel": is_uint,
    "segments.io.offset": is_uint,
    "segments.io.bytes": is_u32,
    "segments.io.ids_offset": is_u32,
    "segments.io.argmax_offset": is_u32,
    "segments.io.logits_offset": is_u32,
    "channel_bytes[]": is_uint,
    "regions[]": _REGION,
    "param_files[]": _FILE_RECORD,
}
_DEVICE: Schema = {"device": is_u32, "param_files[]": _FILE_RECORD}


def check_memory_map(mm: dict[str, Any], path: Path, hint: str = "recompile the model") -> None:
    """The memory map's format version and the structure of every field the runtime reads;
    a FormatError naming the file and the field ends with ``hint``."""
    from .. import _core

    if (
        mm.get("format") != MEMORY_MAP_FORMAT
        or mm.get("format_version") != _core.PLAN_FORMAT_VERSION
        or mm.get("isa_version") != _core.ISA_VERSION
    ):
        raise FormatError(
            f"{path} is memory-map format {mm.get('format_version')!r} / ISA "
            f"{mm.get('isa_version')!r}; this hyperdex ({__version__}) reads format "
            f"{_core.PLAN_FORMAT_VERSION} / ISA {_core.ISA_VERSION}. Recompile the model "
            "(AutoCompiler().compile(..., fast_compile=False))"
        )
    check_fields(mm, _MEMORY_MAP_FIELDS, path, hint)
    check_preset(
        mm["device_preset"],
        str(path),
        FormatError,
        "device_preset.",
        f"the file was edited or damaged after the compile: {hint}",
    )
    if mm["num_device"] > 1:
        check_fields(mm, {"devices[]": _DEVICE}, path, hint)


_JSON_CHECKS: dict[str, Callable[[dict[str, Any], Path, str], None]] = {
    MEMORY_MAP_FILE: check_memory_map,
    **{name: check_converted_config for name in CONVERTED_CONFIG_FILES},
}
