"""Read the weights of a Hugging Face checkpoint folder safely.

`HFCheckpoint.open(folder)` looks for, in this order (the order transformers uses, so
safetensors wins when a folder holds both):

1. ``model.safetensors``
2. ``model.safetensors.index.json`` + the shards its ``weight_map`` names
3. ``pytorch_model.bin``
4. ``pytorch_model.bin.index.json`` + the shards its ``weight_map`` names
5. a folder's only ``*.safetensors`` file under another name (AutoGPTQ's
   ``gptq_model-4bit-128g.safetensors``)

Safetensors files are parsed here (8-byte little-endian header length, JSON header, data
section) and memory-mapped, without torch, so numpy-only installs can convert them. Every
header is validated before any tensor is read: offsets inside the file, no overlaps, byte
spans that match shape x dtype. PyTorch ``.bin`` files are read only through
``torch.load(weights_only=True)``, never with unrestricted pickle, since a pickle can run
arbitrary code.

Dtype names are torch's without the ``torch.`` prefix: ``"float32"``, ``"float16"``,
``"bfloat16"``, ``"int64"``, ``"bool"``, ... `load` returns float tensors (fp16, bf16,
fp32, fp64) as float32 -- bf16 exactly, by shifting its bits into the top half of an fp32 --
and integer/bool tensors with their own dtype. Returned arrays are copies: they stay valid
after `close`.

With ``tie_word_embeddings`` safetensors checkpoints usually omit ``lm_head.weight``; old
``.bin`` checkpoints may instead hold both names backed by one storage. Both read fine; the
caller decides what a missing tied tensor means.
"""

from __future__ import annotations

import difflib
import math
import mmap
import os
import re
import struct
import zipfile
from pathlib import Path
from types import TracebackType
from typing import Any, Dict, Iterator, List, Optional, Tuple, Type, Union

import numpy as np

from hyperdex.errors import CheckpointError
from hyperdex.formats.model_file import shape_problem
from hyperdex.jsonfile import load_json

__all__ = [
    "HFCheckpoint",
    "SAFE_WEIGHTS_NAME",
    "SAFE_WEIGHTS_INDEX_NAME",
    "PT_WEIGHTS_NAME",
    "PT_WEIGHTS_INDEX_NAME",
]

SAFE_WEIGHTS_NAME = "model.safetensors"
SAFE_WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
PT_WEIGHTS_NAME = "pytorch_model.bin"
PT_WEIGHTS_INDEX_NAME = "pytorch_model.bin.index.json"

# The reference safetensors implementation refuses headers above 100 MB; a larger length is
# a corrupt length field, not a real header.
_MAX_SAFETENSORS_HEADER = 100 * 1000 * 1000
_MAX_FILE_NAME = 255  # bytes: a longer shard name is no file any file system can hold

# safetensors dtype tag -> (our dtype name, bytes per element, numpy dtype or None when
# numpy has no such type and we cannot convert it).
_ST_DTYPES: Dict[str, Tuple[str, int, Optional[np.dtype]]] = {
    "BOOL": ("bool", 1, np.dtype(np.bool_)),
    "U8": ("uint8", 1, np.dtype("u1")),
    "I8": ("int8", 1, np.dtype("i1")),
    "U16": ("uint16", 2, np.dtype("<u2")),
    "I16": ("int16", 2, np.dtype("<i2")),
    "U32": ("uint32", 4, np.dtype("<u4")),
    "I32": ("int32", 4, np.dtype("<i4")),
    "U64": ("uint64", 8, np.dtype("<u8")),
    "I64": ("int64", 8, np.dtype("<i8")),
    "F16": ("float16", 2, np.dtype("<f2")),
    "BF16": ("bfloat16", 2, np.dtype("<u2")),  # raw bits; widened in _to_output
    "F32": ("float32", 4, np.dtype("<f4")),
    "F64": ("float64", 8, np.dtype("<f8")),
    "F8_E4M3": ("float8_e4m3fn", 1, None),
    "F8_E5M2": ("float8_e5m2", 1, None),
    "F8_E8M0": ("float8_e8m0fnu", 1, None),
    "C64": ("complex64", 8, None),
}
_FLOAT_NAMES = ("float16", "bfloat16", "float32", "float64")
_INT_NAMES = ("bool", "uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "int64")
_READABLE = ", ".join(_FLOAT_NAMES + _INT_NAMES)

PathLike = Union[str, "os.PathLike[str]"]


def _redownload(path: Path) -> str:
    return (
        f"the file is damaged or incomplete: download {path.name} again "
        "(e.g. `huggingface-cli download <repo> --local-dir <folder>`)"
    )


def _unsupported(name: str, dtype: str, path: Path) -> CheckpointError:
    return CheckpointError(
        f"tensor '{name}' in {path} has dtype {dtype}, which hyperdex cannot convert "
        f"(it reads {_READABLE}): use a checkpoint saved in fp16, bf16 or fp32"
    )


class _SafetensorsFile:
    """One validated, memory-mapped safetensors file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        # name -> (dtype name, shape, absolute start, absolute end, numpy dtype or None)
        self.entries: Dict[str, Tuple[str, Tuple[int, ...], int, int, Optional[np.dtype]]] = {}
        self.metadata: Dict[str, Any] = {}
        self._mm: Optional[mmap.mmap] = None
        try:
            with open(path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                self._parse_header(f, size)
                # mmap cannot map an empty region; a file of header only has no data to map.
                if size > 0:
                    self._mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except OSError as e:
            raise CheckpointError(f"cannot read {path}: {e}") from e

    def _corrupt(self, what: str) -> CheckpointError:
        return CheckpointError(
            f"{self.path} is not a valid safetensors file: {what}; {_redownload(self.path)}"
        )

    def _parse_header(self, f: Any, size: int) -> None:
        if size < 8:
            raise CheckpointError(
                f"{self.path} is truncated: it is {size} bytes, shorter than the 8-byte "
                f"safetensors header length field; {_redownload(self.path)}"
            )
        (hlen,) = struct.unpack("<Q", f.read(8))
        if hlen > _MAX_SAFETENSORS_HEADER:
            raise self._corrupt(
                f"header length field says {hlen} bytes (limit {_MAX_SAFETENSORS_HEADER})"
            )
        if 8 + hlen > size:
            raise CheckpointError(
                f"{self.path} is truncated: it is {size} bytes but its header alone needs "
                f"{8 + hlen} bytes; {_redownload(self.path)}"
            )
        raw = f.read(hlen)

        def no_duplicates(pairs: List[Tuple[str, Any]]) -> Dict[str, Any]:
            out: Dict[str, Any] = {}
            for k, v in pairs:
                if k in out:
                    raise self._corrupt(f"header names '{k}' twice")
                out[k] = v
            return out

        header = load_json(
            raw, lambda why: self._corrupt(f"header is {why}"), object_pairs_hook=no_duplicates
        )
        if not isinstance(header, dict):
            raise self._corrupt(f"header is a JSON {type(header).__name__}, expected an object")

        data_start = 8 + hlen
        data_size = size - data_start
        spans: List[Tuple[int, int, str]] = []
        for name, entry in header.items():
            if name == "__metadata__":
                if not isinstance(entry, dict):
                    raise self._corrupt("'__metadata__' is not a JSON object")
                self.metadata = entry
                continue
            if not (
                isinstance(entry, dict)
                and isinstance(entry.get("dtype"), str)
                and isinstance(entry.get("shape"), list)
                and isinstance(entry.get("data_offsets"), list)
            ):
                raise self._corrupt(
                    f"entry for tensor '{name}' lacks dtype/shape/data_offsets: {entry!r}"
                )
            tag = entry["dtype"]
            if tag not in _ST_DTYPES:
                raise self._corrupt(
                    f"tensor '{name}' has unknown dtype '{tag}' (known: {', '.join(_ST_DTYPES)})"
                )
            dname, itemsize, npdt = _ST_DTYPES[tag]
            shape = entry["shape"]
            offs = entry["data_offsets"]
            problem = shape_problem(shape, itemsize)
            if problem:
                raise self._corrupt(f"tensor '{name}' has invalid shape {shape!r}: {problem}")
            if len(offs) != 2 or not all(_is_uint(o) for o in offs):
                raise self._corrupt(f"tensor '{name}' has invalid data_offsets {offs!r}")
            begin, end = offs
            if begin > end:
                raise self._corrupt(
                    f"tensor '{name}' has data_offsets [{begin}, {end}] that end before they begin"
                )
            want = math.prod(shape) * itemsize
            if end - begin != want:
                raise self._corrupt(
                    f"tensor '{name}' spans {end - begin} bytes but shape {shape} x {tag} "
                    f"({itemsize} bytes) needs {want}"
                )
            spans.append((begin, end, name))
            self.entries[name] = (dname, tuple(shape), data_start + begin, data_start + end, npdt)

        # Overlapping tensors would alias each other's data: a corrupt or hostile header.
        spans.sort()
        prev: Optional[Tuple[int, int, str]] = None  # the non-empty span reaching furthest
        for b1, e1, n1 in spans:
            if b1 == e1:
                continue  # empty tensors hold no bytes, so they overlap nothing
            if prev is not None and b1 < prev[1]:
                b0, e0, n0 = prev
                raise self._corrupt(f"tensors '{n0}' [{b0}, {e0}) and '{n1}' [{b1}, {e1}) overlap")
            if prev is None or e1 > prev[1]:
                prev = (b1, e1, n1)
        need = max((e for _, e, _ in spans), default=0)
        if need > data_size:
            raise CheckpointError(
                f"{self.path} is truncated: it is {size} bytes but its header places tensor "
                f"data up to byte {data_start + need}; {_redownload(self.path)}"
            )

    def load_raw(self, name: str) -> np.ndarray:
        dname, shape, start, end, npdt = self.entries[name]
        if npdt is None:
            raise _unsupported(name, dname, self.path)
        if start == end:
            return np.zeros(shape, dtype=npdt)
        assert self._mm is not None, "checkpoint file is closed"
        count = (end - start) // npdt.itemsize
        return np.frombuffer(self._mm, dtype=npdt, count=count, offset=start).reshape(shape)

    def close(self) -> None:
        if self._mm is not None:
            try:
                self._mm.close()
            except BufferError:
                pass  # a view still exists; the mapping goes when it does
            self._mm = None


def _is_uint(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def _to_output(raw: np.ndarray, dname: str) -> np.ndarray:
    """raw: little-endian data as stored (bf16 as uint16 bits). Returns an owned copy."""
    if dname == "bfloat16":
        # bf16 is the top half of an fp32: widening the bits is exact.
        return (raw.astype(np.uint32) << 16).view(np.float32)
    if dname in _FLOAT_NAMES:
        return raw.astype(np.float32)  # astype copies, so the result outlives the mmap
    return raw.astype(raw.dtype.newbyteorder("="))


class _TorchFile:
    """One PyTorch .bin file loaded with weights_only=True (memory-mapped when possible)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        torch = _import_torch(path)
        # mmap only works for the zip format (torch >= 1.6); older files load into memory.
        use_mmap = zipfile.is_zipfile(path)
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=use_mmap)
        except Exception as e:  # torch raises many types: RuntimeError, UnpicklingError, EOF...
            detail = str(e).strip()
            hint = _redownload(path)
            if type(e).__name__ == "UnpicklingError":
                # Keep torch's reason, drop its boilerplate (which suggests weights_only=False).
                lines = [ln.strip() for ln in detail.splitlines() if ln.strip()]
                reason = [
                    ln
                    for ln in lines
                    if not ln.startswith(("Weights only load failed", "Check the documentation"))
                ]
                detail = " ".join(reason) or detail
                hint = (
                    "it holds objects other than tensors, which hyperdex will not unpickle "
                    "(unpickling can run arbitrary code); use a safetensors checkpoint, or "
                    "re-save this one as safetensors if you trust it. If the file is damaged, "
                    + hint
                )
            raise CheckpointError(
                f"torch cannot load {path} ({type(e).__name__}: {detail[:500]}); {hint}"
            ) from e
        if not isinstance(obj, dict):
            raise CheckpointError(
                f"{path} holds a {type(obj).__name__}, not a state dict (name -> tensor): "
                "is it a Hugging Face weights file?"
            )
        self.tensors: Dict[str, Any] = {}
        for k, v in obj.items():
            if not isinstance(k, str) or not isinstance(v, torch.Tensor):
                raise CheckpointError(
                    f"{path} is not a flat state dict: entry {k!r} is a {type(v).__name__}, "
                    "expected name -> tensor"
                )
            self.tensors[k] = v  # tied names may share one storage; each reads fine

    def dtype(self, name: str) -> str:
        return str(self.tensors[name].dtype).rsplit(".", 1)[-1]

    def shape(self, name: str) -> Tuple[int, ...]:
        return tuple(int(d) for d in self.tensors[name].shape)

    def load(self, name: str) -> np.ndarray:
        import torch

        t = self.tensors[name].detach()
        dname = self.dtype(name)
        if dname in _FLOAT_NAMES:
            return t.to(torch.float32, copy=True).contiguous().numpy()
        if dname in _INT_NAMES:
            try:
                return t.clone(memory_format=torch.contiguous_format).numpy()
            except TypeError as e:  # old torch lacks numpy for unsigned >8-bit types
                raise _unsupported(name, dname, self.path) from e
        raise _unsupported(name, dname, self.path)

    def close(self) -> None:
        self.tensors = {}


def _import_torch(path: Path) -> Any:
    try:
        import torch
    except ImportError as e:
        raise CheckpointError(
            f"{path} is a PyTorch .bin checkpoint; reading it needs torch "
            "(`pip install 'hyperdex[torch]'`), or use a safetensors version of the checkpoint "
            "(model.safetensors), which hyperdex reads without torch"
        ) from e
    return torch


_Source = Union[_SafetensorsFile, _TorchFile]


class HFCheckpoint:
    """The weights of one Hugging Face checkpoint folder (see the module docstring).

    Use as a context manager, or call `close()`; `names()`, `shape()` and `dtype()` never
    read tensor data, `load()` reads one tensor.
    """

    def __init__(
        self, folder: Path, kind: str, sources: List[_Source], where: Dict[str, _Source]
    ) -> None:
        self.folder = folder
        self.format = kind  # "safetensors" or "pytorch"
        self.files: Tuple[Path, ...] = tuple(s.path for s in sources)
        self._sources = sources
        self._where: Optional[Dict[str, _Source]] = where

    @classmethod
    def open(cls, folder: PathLike) -> HFCheckpoint:
        folder = Path(folder)
        if not folder.is_dir():
            raise CheckpointError(
                f"checkpoint folder {folder} does not exist or is not a folder: pass the "
                "folder holding config.json and the weights"
            )
        if (folder / SAFE_WEIGHTS_NAME).is_file():
            return cls._build(folder, "safetensors", [folder / SAFE_WEIGHTS_NAME], None)
        if (folder / SAFE_WEIGHTS_INDEX_NAME).is_file():
            return cls._sharded(folder, "safetensors", folder / SAFE_WEIGHTS_INDEX_NAME)
        if (folder / PT_WEIGHTS_NAME).is_file():
            return cls._build(folder, "pytorch", [folder / PT_WEIGHTS_NAME], None)
        if (folder / PT_WEIGHTS_INDEX_NAME).is_file():
            return cls._sharded(folder, "pytorch", folder / PT_WEIGHTS_INDEX_NAME)
        # AutoGPTQ-era checkpoints name their one file after the scheme
        # (gptq_model-4bit-128g.safetensors): a single unindexed safetensors file is the model.
        # A shard of a sharded checkpoint (model-00001-of-00002) is not a whole model.
        single = sorted(folder.glob("*.safetensors"))
        if len(single) == 1 and not re.search(r"-\d+-of-\d+\.safetensors$", single[0].name):
            return cls._build(folder, "safetensors", single, None)
        raise CheckpointError(_no_weights_message(folder))

    @classmethod
    def _sharded(cls, folder: Path, kind: str, index_path: Path) -> HFCheckpoint:
        weight_map = _read_index(index_path)
        shards: Dict[str, List[str]] = {}  # shard file -> names the index puts there
        for name, shard in weight_map.items():
            shards.setdefault(shard, []).append(name)
        missing = [s for s in shards if not (folder / s).is_file()]
        if missing:
            detail = "; ".join(
                f"{s} (should hold {len(shards[s])} tensors, e.g. '{shards[s][0]}')"
                for s in missing
            )
            raise CheckpointError(
                f"{index_path} names shard(s) missing from {folder}: {detail}. The download "
                "is incomplete: download the missing shard(s) again"
            )
        return cls._build(folder, kind, [folder / s for s in shards], weight_map)

    @classmethod
    def _build(
        cls, folder: Path, kind: str, paths: List[Path], weight_map: Optional[Dict[str, str]]
    ) -> HFCheckpoint:
        sources: List[_Source] = []
        try:
            where: Dict[str, _Source] = {}
            for p in paths:
                src: _Source = _SafetensorsFile(p) if kind == "safetensors" else _TorchFile(p)
                sources.append(src)
                names = src.entries if isinstance(src, _SafetensorsFile) else src.tensors
                for n in names:
                    if n in where:
                        raise CheckpointError(
                            f"tensor '{n}' is in two shards, {where[n].path.name} and "
                            f"{p.name}, in {folder}: the checkpoint is inconsistent (mixed "
                            "downloads of different revisions?); download it again"
                        )
                    where[n] = src
            for n, shard in (weight_map or {}).items():
                if n not in where or where[n].path.name != shard:
                    found = f"it is in {where[n].path.name}" if n in where else "no shard has it"
                    raise CheckpointError(
                        f"the index in {folder} puts tensor '{n}' in {shard}, but {found}: "
                        "the index and the shards disagree; download the checkpoint again"
                    )
        except BaseException:
            for s in sources:
                s.close()
            raise
        return cls(folder, kind, sources, where)

    # -- queries ---------------------------------------------------------------------------

    def _source(self, name: str) -> _Source:
        if self._where is None:
            raise ValueError(f"checkpoint {self.folder} is closed")
        src = self._where.get(name)
        if src is None:
            close = difflib.get_close_matches(name, list(self._where), n=3)
            hint = f"; similar names: {', '.join(close)}" if close else ""
            raise CheckpointError(
                f"checkpoint {self.folder} has no tensor '{name}' (it has "
                f"{len(self._where)} tensors{hint}): is the checkpoint the model its config "
                "describes?"
            )
        return src

    def names(self) -> List[str]:
        if self._where is None:
            raise ValueError(f"checkpoint {self.folder} is closed")
        return list(self._where)

    def shape(self, name: str) -> Tuple[int, ...]:
        src = self._source(name)
        if isinstance(src, _SafetensorsFile):
            return src.entries[name][1]
        return src.shape(name)

    def dtype(self, name: str) -> str:
        src = self._source(name)
        if isinstance(src, _SafetensorsFile):
            return src.entries[name][0]
        return src.dtype(name)

    def load(self, name: str) -> np.ndarray:
        """The tensor as a new array: float32 for float dtypes, else its integer dtype."""
        src = self._source(name)
        if isinstance(src, _SafetensorsFile):
            return _to_output(src.load_raw(name), src.entries[name][0])
        return src.load(name)

    def __contains__(self, name: object) -> bool:
        return self._where is not None and name in self._where

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())

    def __repr__(self) -> str:
        n = "closed" if self._where is None else f"{len(self._where)} tensors"
        return f"HFCheckpoint({str(self.folder)!r}, {self.format}, {n})"

    # -- lifetime --------------------------------------------------------------------------

    def close(self) -> None:
        for s in self._sources:
            s.close()
        self._where = None

    def __enter__(self) -> HFCheckpoint:
        return self

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self.close()


def _read_index(path: Path) -> Dict[str, str]:
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise CheckpointError(
            f"cannot read the shard index {path}: {e}; {_redownload(path)}"
        ) from e
    index = load_json(
        raw,
        lambda why: CheckpointError(
            f"cannot read the shard index {path}: {why}; {_redownload(path)}"
        ),
    )
    wm = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(wm, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in wm.items()
    ):
        raise CheckpointError(
            f"shard index {path} has no valid 'weight_map' (tensor name -> shard file); "
            f"{_redownload(path)}"
        )
    for shard in set(wm.values()):
        # Shards live next to the index; a path elsewhere is corrupt or hostile.
        if (
            Path(shard).name != shard
            or shard in ("", ".", "..")
            or "\0" in shard
            or len(os.fsencode(shard)) > _MAX_FILE_NAME
        ):
            raise CheckpointError(
                f"shard index {path} names shard {shard[:80]!r}, which is not a plain file "
                f"name (at most {_MAX_FILE_NAME} bytes) in the checkpoint folder; the index is "
                "corrupt: download it again"
            )
    return wm


def _no_weights_message(folder: Path) -> str:
    entries = sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir())
    listing = ", ".join(entries[:30]) + (
        f", ... ({len(entries)} in all)" if len(entries) > 30 else ""
    )
    hint = ""
    if any(e.endswith(".safetensors") for e in entries):
        hint = (
            f" It has .safetensors files but neither {SAFE_WEIGHTS_NAME} nor "
            f"{SAFE_WEIGHTS_INDEX_NAME}: download the index too."
        )
    elif any(e.endswith(".bin") for e in entries):
        hint = (
            f" It has .bin files but neither {PT_WEIGHTS_NAME} nor "
            f"{PT_WEIGHTS_INDEX_NAME}: download the index too."
        )
    return (
        f"no weights in {folder}: expected {SAFE_WEIGHTS_NAME}, {SAFE_WEIGHTS_INDEX_NAME}, "
        f"{PT_WEIGHTS_NAME} or {PT_WEIGHTS_INDEX_NAME}; the folder holds: "
        f"{listing or '(nothing)'}.{hint} Download the model's weights into it."
    )
