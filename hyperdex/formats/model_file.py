"""hyperdex's converted-model file, ``hyperdex_model.bin``.

Layout (all integers little-endian)::

    offset       size  field
    0            8     magic b"HDXMODEL"
    8            4     u32 format version (1)
    12           4     u32 CRC-32 (IEEE, zlib.crc32) of the JSON header bytes
    16           8     u64 length of the JSON header in bytes
    24           8     u64 data_offset: where tensor data starts (multiple of 64)
    32           ...   JSON header, UTF-8:
                       {"tensors": [{"name", "dtype", "shape", "offset", "nbytes", "crc32"},
                                    ...],
                        "metadata": {...}}
    ...                zero padding up to data_offset
    data_offset        tensor data; each tensor's "offset" is relative to data_offset and a
                       multiple of 64; zero padding between tensors

Tensor entries:

- ``name``: unique, non-empty string.
- ``dtype``: ``"f16"``, ``"f32"``, ``"i32"``, ``"u8"`` or ``"i8"`` (numpy little-endian
  ``<f2``, ``<f4``, ``<i4``, ``u1``, ``i1``).
- ``shape``: list of non-negative integers, C (row-major) order. ``[]`` is a 0-d tensor
  (a scalar, ``nbytes`` = one element); a shape with a 0 is an empty tensor (``nbytes`` 0).
- ``offset``: start of the data relative to ``data_offset``, a multiple of 64; tensors do
  not overlap.
- ``nbytes``: product of ``shape`` x element size.
- ``crc32``: CRC-32 (zlib.crc32) of the tensor's ``nbytes`` data bytes (0 when empty).

``metadata`` is a JSON object the converter fills (architecture, config, ...); it is
strict JSON (no NaN/Infinity).

The JSON header may be shorter than the space before ``data_offset``; the gap is zeros.

How the writer streams
----------------------
`write_model_file` takes ``(name, array)`` pairs, possibly from a generator that produces
each array on demand, and writes each tensor as it arrives, so a 7B model is never in memory
at once. Tensor CRCs are only known after the data is written, so the header is written
last, into space reserved before the data:

- when ``tensors`` is a sequence (list/tuple) the arrays are already at hand, and the
  reserve is the exact upper bound of the header (every CRC printed at its widest);
- otherwise the reserve is the metadata's size plus ``header_reserve`` bytes (default
  1 MiB, about 7000 tensor entries; a 70B Llama has ~720). Should the header outgrow it,
  the data already written is shifted forward within the file (one extra copy, only then).

The file is written to ``<name>.tmp.<pid>-<random>`` in the destination folder (see
``hyperdex/formats/atomic.py``: a later compile removes it if the writer was killed), fsynced and
renamed over ``path`` with `os.replace`, so ``path`` holds either the old file or the
complete new one. On any exception, KeyboardInterrupt included, the temporary file is
removed.

Reading
-------
`ModelFile.open` memory-maps the file read-only and checks magic, version, header CRC,
header structure, alignment and that every tensor lies inside the file; with
``verify=True`` (the default) it also checks every tensor's CRC-32. ``model[name]`` is a
read-only, zero-copy numpy view into the mapping. Views stay valid after `close`: the
mapping is released when the last view is gone.
"""

from __future__ import annotations

import json
import math
import mmap
import os
import struct
import zlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import (
    Any,
    Dict,
    Iterable,
    Iterator,
    List,
    Mapping,
    Optional,
    Tuple,
    Type,
    Union,
)

import numpy as np

from hyperdex.errors import FormatError
from hyperdex.formats.atomic import temp_path
from hyperdex.jsonfile import load_json

__all__ = [
    "MODEL_FILE_MAGIC",
    "MODEL_FILE_VERSION",
    "MODEL_FILE_NAME",
    "MODEL_FILE_ALIGNMENT",
    "MODEL_FILE_DTYPES",
    "ModelFile",
    "TensorInfo",
    "write_model_file",
    "shape_problem",
]

MODEL_FILE_MAGIC = b"HDXMODEL"
MODEL_FILE_VERSION = 1
MODEL_FILE_NAME = "hyperdex_model.bin"
MODEL_FILE_ALIGNMENT = 64
MODEL_FILE_DTYPES: Dict[str, np.dtype] = {
    "f16": np.dtype("<f2"),
    "f32": np.dtype("<f4"),
    "i32": np.dtype("<i4"),
    "u8": np.dtype("u1"),
    "i8": np.dtype("i1"),
}
# (numpy kind, itemsize) -> dtype code; byte order is normalised on write.
_KIND_TO_CODE = {("f", 2): "f16", ("f", 4): "f32", ("i", 4): "i32", ("u", 1): "u8", ("i", 1): "i8"}

_PREFIX = struct.Struct("<8sIIQQ")  # magic, version, header crc, header length, data_offset
_DEFAULT_HEADER_RESERVE = 1 << 20
_CHUNK = 16 << 20  # CRC/copy granularity: large enough to be fast, small enough for memory
_PARALLEL_CRC_BYTES = 256 << 20  # below this, threads cost more than they save
_MAX_CRC = 0xFFFFFFFF

PathLike = Union[str, "os.PathLike[str]"]


@dataclass(frozen=True)
class TensorInfo:
    """One tensor's header entry. ``offset`` is relative to the file's data_offset."""

    name: str
    dtype: str
    shape: Tuple[int, ...]
    offset: int
    nbytes: int
    crc32: int

    def to_json(self) -> Dict[str, Any]:
        return {
            "name": self.name,
            "dtype": self.dtype,
            "shape": list(self.shape),
            "offset": self.offset,
            "nbytes": self.nbytes,
            "crc32": self.crc32,
        }


# -- shapes read from a file (shared by the readers of tensor files) --------------------------

# numpy's limit on a dimension and on an array's size (np.intp); a shape past it cannot be
# mapped, whatever the file says its bytes are.
MAX_ARRAY_BYTES = 2**63 - 1


def shape_problem(shape: Any, itemsize: int = 1) -> Optional[str]:
    """What is wrong with ``shape`` as an array's shape (None: nothing): a list of integers
    >= 0 whose element count times ``itemsize`` fits numpy (:data:`MAX_ARRAY_BYTES`, every
    dimension included, an empty array's too)."""
    if not isinstance(shape, list):
        return "it is not a list"
    size = itemsize
    for d in shape:
        if isinstance(d, bool) or not isinstance(d, int) or d < 0:
            return f"dimension {d!r} is not an integer >= 0"
        if d > MAX_ARRAY_BYTES:
            return f"dimension {d} is past 2^63 - 1"
        size *= max(d, 1)
        if size > MAX_ARRAY_BYTES:
            return "it holds more than 2^63 - 1 bytes"
    return None


def _align(n: int) -> int:
    return -(-n // MODEL_FILE_ALIGNMENT) * MODEL_FILE_ALIGNMENT


def _header_bytes(infos: List[TensorInfo], metadata: Mapping[str, Any]) -> bytes:
    doc = {"tensors": [i.to_json() for i in infos], "metadata": metadata}
    return json.dumps(doc, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode(
        "utf-8"
    )


def _prepare(name: Any, arr: Any, seen: set) -> Tuple[str, np.ndarray]:
    """Validate one input pair; return its dtype code and C-contiguous little-endian data."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"tensor names must be non-empty strings, got {name!r}")
    if name in seen:
        raise ValueError(f"tensor '{name}' is given twice: names in a model file are unique")
    if not isinstance(arr, np.ndarray):
        raise TypeError(f"tensor '{name}' is a {type(arr).__name__}, expected a numpy array")
    code = _KIND_TO_CODE.get((arr.dtype.kind, arr.dtype.itemsize))
    if code is None:
        raise ValueError(
            f"tensor '{name}' has dtype {arr.dtype}; model files store "
            f"{', '.join(MODEL_FILE_DTYPES)}: cast it first"
        )
    # asarray keeps 0-d arrays 0-d (ascontiguousarray would make them 1-d).
    return code, np.asarray(arr, dtype=MODEL_FILE_DTYPES[code], order="C")


def write_model_file(
    path: PathLike,
    tensors: Iterable[Tuple[str, np.ndarray]],
    metadata: Optional[Mapping[str, Any]] = None,
    *,
    header_reserve: Optional[int] = None,
) -> Path:
    """Write ``tensors`` ((name, array) pairs, possibly lazy) and ``metadata`` to ``path``.

    Arrays must be f16/f32/i32/u8/i8 (any byte order, any strides: they are written
    little-endian, C order). ``header_reserve`` overrides the space reserved for the header
    when ``tensors`` is not a sequence (see the module docstring). Returns ``path``.
    Raises ValueError/TypeError for bad input; ``path`` is then left untouched.
    """
    path = Path(path)
    if header_reserve is not None and header_reserve < 0:
        raise ValueError(f"header_reserve must be >= 0, got {header_reserve}")
    metadata = dict(metadata or {})
    try:
        meta_len = len(json.dumps(metadata, ensure_ascii=False, allow_nan=False))
    except (TypeError, ValueError) as e:
        raise ValueError(f"model file metadata must be strict JSON: {e}") from e

    if isinstance(tensors, Sequence) and header_reserve is None:
        # Arrays are in memory already: size the header exactly, CRCs at their widest.
        seen: set = set()
        bound: List[TensorInfo] = []
        pos = 0
        for name, arr in tensors:
            code, data = _prepare(name, arr, seen)
            seen.add(name)
            pos = _align(pos)
            bound.append(TensorInfo(name, code, data.shape, pos, data.nbytes, _MAX_CRC))
            pos += data.nbytes
        reserve = len(_header_bytes(bound, metadata))
    else:
        reserve = meta_len + (_DEFAULT_HEADER_RESERVE if header_reserve is None else header_reserve)
    data_offset = _align(_PREFIX.size + reserve)

    tmp = temp_path(path)
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "w+b") as f:
            infos: List[TensorInfo] = []
            names: set = set()
            pos = 0  # relative to data_offset
            f.seek(data_offset)
            for item in tensors:
                name, arr = item
                code, data = _prepare(name, arr, names)
                names.add(name)
                pad = _align(pos) - pos
                if pad:
                    f.write(b"\0" * pad)
                    pos += pad
                crc = 0
                with memoryview(data.reshape(-1).view(np.uint8)) as mv:
                    for i in range(0, len(mv), _CHUNK):
                        chunk = mv[i : i + _CHUNK]
                        crc = zlib.crc32(chunk, crc)
                        f.write(chunk)
                        del chunk
                infos.append(TensorInfo(name, code, tuple(data.shape), pos, data.nbytes, crc))
                pos += data.nbytes
                del data, arr, item  # let a lazy producer's array go before the next one

            header = _header_bytes(infos, metadata)
            if _PREFIX.size + len(header) > data_offset:
                new_offset = _align(_PREFIX.size + len(header))
                _shift_forward(f, data_offset, pos, new_offset - data_offset)
                data_offset = new_offset
            f.seek(0)
            f.write(
                _PREFIX.pack(
                    MODEL_FILE_MAGIC,
                    MODEL_FILE_VERSION,
                    zlib.crc32(header),
                    len(header),
                    data_offset,
                )
            )
            f.write(header)
            # Zero the gap: after a shift it holds stale data bytes.
            f.write(b"\0" * (data_offset - _PREFIX.size - len(header)))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(path.parent)
    return path


def _shift_forward(f: Any, start: int, length: int, delta: int) -> None:
    """Move file bytes [start, start+length) to start+delta, last chunk first so that
    nothing is overwritten before it is copied."""
    end = start + length
    while end > start:
        n = min(_CHUNK, end - start)
        end -= n
        f.seek(end)
        buf = f.read(n)
        f.seek(end + delta)
        f.write(buf)


def _fsync_dir(folder: Path) -> None:
    # Makes the rename durable on POSIX; directories cannot be opened on Windows.
    try:
        dfd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)


def _crc_of(mm: mmap.mmap, start: int, nbytes: int) -> int:
    crc = 0
    with memoryview(mm) as whole:
        for i in range(start, start + nbytes, _CHUNK):
            chunk = whole[i : min(i + _CHUNK, start + nbytes)]
            crc = zlib.crc32(chunk, crc)  # releases the GIL: threads check tensors in parallel
            chunk.release()
    return crc


class ModelFile:
    """A validated, memory-mapped ``hyperdex_model.bin`` (see the module docstring)."""

    def __init__(
        self,
        path: Path,
        mm: mmap.mmap,
        data_offset: int,
        infos: Dict[str, TensorInfo],
        metadata: Dict[str, Any],
    ) -> None:
        self.path = path
        self.version = MODEL_FILE_VERSION
        self.data_offset = data_offset
        self._mm: Optional[mmap.mmap] = mm
        self._infos = infos
        self._metadata = metadata

    @classmethod
    def open(cls, path: PathLike, verify: bool = True) -> ModelFile:
        path = Path(path)
        try:
            f = open(path, "rb")
        except FileNotFoundError as e:
            raise FormatError(
                f"no hyperdex model file at {path}: convert the checkpoint first (hdex-compile)"
            ) from e
        except OSError as e:
            raise FormatError(f"cannot read hyperdex model file {path}: {e}") from e
        with f:
            size = os.fstat(f.fileno()).st_size
            prefix = f.read(_PREFIX.size)
            infos, metadata, data_offset = _parse(path, size, prefix, f)
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        model = cls(path, mm, data_offset, infos, metadata)
        if verify:
            try:
                model.verify()
            except BaseException:
                model.close()
                raise
        return model

    def verify(self) -> None:
        """Check every tensor's CRC-32; FormatError names the first corrupt tensor."""
        mm = self._live()
        infos = [i for i in self._infos.values() if i.nbytes]
        total = sum(i.nbytes for i in infos)

        def crc(i: TensorInfo) -> int:
            return _crc_of(mm, self.data_offset + i.offset, i.nbytes)

        if total >= _PARALLEL_CRC_BYTES and len(infos) > 1:
            with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
                found = list(pool.map(crc, infos))
        else:
            found = [crc(i) for i in infos]
        for info, got in zip(infos, found):
            if got != info.crc32:
                raise FormatError(
                    f"tensor '{info.name}' in {self.path} is corrupt: CRC-32 of its "
                    f"{info.nbytes} bytes is {got:#010x}, the header says {info.crc32:#010x}; "
                    "the file was damaged on disk or in transfer: copy it again or re-run the "
                    "conversion"
                )

    def _live(self) -> mmap.mmap:
        if self._mm is None:
            raise ValueError(f"model file {self.path} is closed")
        return self._mm

    @property
    def names(self) -> List[str]:
        """Tensor names in file order."""
        return list(self._infos)

    @property
    def metadata(self) -> Dict[str, Any]:
        return self._metadata

    def info(self, name: str) -> TensorInfo:
        info = self._infos.get(name)
        if info is None:
            raise FormatError(
                f"{self.path} has no tensor '{name}' ({len(self._infos)} tensors): was it "
                "converted for another model or by another hyperdex version? Re-run the "
                "conversion"
            )
        return info

    def __getitem__(self, name: str) -> np.ndarray:
        """Read-only, zero-copy view of the tensor in the mapping."""
        info = self.info(name)
        mm = self._live()
        dt = MODEL_FILE_DTYPES[info.dtype]
        if info.nbytes == 0:
            empty = np.empty(info.shape, dtype=dt)
            empty.flags.writeable = False
            return empty
        return np.frombuffer(
            mm, dtype=dt, count=info.nbytes // dt.itemsize, offset=self.data_offset + info.offset
        ).reshape(info.shape)

    def __contains__(self, name: object) -> bool:
        return name in self._infos

    def __iter__(self) -> Iterator[str]:
        return iter(self._infos)

    def __len__(self) -> int:
        return len(self._infos)

    def __repr__(self) -> str:
        state = "closed" if self._mm is None else f"{len(self._infos)} tensors"
        return f"ModelFile({str(self.path)!r}, {state})"

    def close(self) -> None:
        if self._mm is not None:
            try:
                self._mm.close()
            except BufferError:
                pass  # arrays still view it; the mapping goes with the last of them
            self._mm = None

    def __enter__(self) -> ModelFile:
        return self

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self.close()


def _is_uint(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def _parse(
    path: Path, size: int, prefix: bytes, f: Any
) -> Tuple[Dict[str, TensorInfo], Dict[str, Any], int]:
    redo = "re-run the conversion (hdex-compile) to rebuild it"

    def truncated(need: int, what: str) -> FormatError:
        return FormatError(
            f"{path} is truncated: it is {size} bytes but {what} needs {need} bytes; the "
            f"write or copy was cut short: copy it again or {redo}"
        )

    head = prefix[: len(MODEL_FILE_MAGIC)]
    if head != MODEL_FILE_MAGIC[: len(head)] or (size >= 8 and head != MODEL_FILE_MAGIC):
        raise FormatError(
            f"{path} is not a hyperdex model file: it starts with {head!r}, expected "
            f"{MODEL_FILE_MAGIC!r}; pass the {MODEL_FILE_NAME} a conversion wrote"
        )
    if size < _PREFIX.size:
        raise truncated(_PREFIX.size, "the fixed header")
    _, version, header_crc, header_len, data_offset = _PREFIX.unpack(prefix)
    if version != MODEL_FILE_VERSION:
        raise FormatError(
            f"{path} is model file format version {version}; this hyperdex reads version "
            f"{MODEL_FILE_VERSION}: {redo} with this hyperdex (or use the hyperdex that "
            "wrote it)"
        )
    if _PREFIX.size + header_len > size:
        raise truncated(_PREFIX.size + header_len, "its header")
    if data_offset % MODEL_FILE_ALIGNMENT or data_offset < _PREFIX.size + header_len:
        raise FormatError(
            f"{path} is corrupt: data_offset {data_offset} must be a multiple of "
            f"{MODEL_FILE_ALIGNMENT} at or after the header's end ({_PREFIX.size + header_len})"
            f"; {redo}"
        )
    raw = f.read(header_len)
    got = zlib.crc32(raw)
    if got != header_crc:
        raise FormatError(
            f"{path} is corrupt: the CRC-32 of its JSON header is {got:#010x}, the file says "
            f"{header_crc:#010x}; copy it again or {redo}"
        )

    def bad(what: str) -> FormatError:
        return FormatError(f"{path} has a malformed header: {what}; {redo}")

    doc = load_json(raw, bad)
    if not (
        isinstance(doc, dict)
        and isinstance(doc.get("tensors"), list)
        and isinstance(doc.get("metadata"), dict)
    ):
        raise bad("expected an object with a 'tensors' list and a 'metadata' object")

    infos: Dict[str, TensorInfo] = {}
    need, need_name = 0, ""
    spans: List[Tuple[int, int, str]] = []
    for e in doc["tensors"]:
        if not isinstance(e, dict):
            raise bad(f"tensor entry {e!r} is not an object")
        name, dtype, shape = e.get("name"), e.get("dtype"), e.get("shape")
        offset, nbytes, crc = e.get("offset"), e.get("nbytes"), e.get("crc32")
        if not isinstance(name, str) or not name or name in infos:
            raise bad(f"tensor name {name!r} is missing, empty or repeated")
        if not isinstance(dtype, str) or dtype not in MODEL_FILE_DTYPES:
            raise bad(
                f"tensor '{name}' has dtype {dtype!r}, expected one of "
                f"{', '.join(MODEL_FILE_DTYPES)}"
            )
        problem = shape_problem(shape, MODEL_FILE_DTYPES[dtype].itemsize)
        if problem:
            raise bad(f"tensor '{name}' has invalid shape {shape!r}: {problem}")
        if not (_is_uint(offset) and _is_uint(nbytes) and _is_uint(crc) and crc <= _MAX_CRC):
            raise bad(
                f"tensor '{name}' has invalid offset/nbytes/crc32 {offset!r}/{nbytes!r}/{crc!r}"
            )
        if offset % MODEL_FILE_ALIGNMENT:
            raise bad(
                f"tensor '{name}' offset {offset} is not a multiple of {MODEL_FILE_ALIGNMENT}"
            )
        want = math.prod(shape) * MODEL_FILE_DTYPES[dtype].itemsize
        if nbytes != want:
            raise bad(
                f"tensor '{name}' has nbytes {nbytes}, but shape {shape} x {dtype} needs {want}"
            )
        infos[name] = TensorInfo(name, dtype, tuple(shape), offset, nbytes, crc)
        if nbytes:
            spans.append((offset, offset + nbytes, name))
            if data_offset + offset + nbytes > need:
                need, need_name = data_offset + offset + nbytes, name
    spans.sort()
    for (b0, e0, n0), (b1, e1, n1) in zip(spans, spans[1:]):
        if b1 < e0:
            raise bad(f"tensors '{n0}' [{b0}, {e0}) and '{n1}' [{b1}, {e1}) overlap")
    if need > size:
        raise truncated(need, f"its tensor data (up to the end of '{need_name}')")
    return infos, doc["metadata"], data_offset
