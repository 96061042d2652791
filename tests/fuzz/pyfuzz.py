"""Fuzz harnesses for hyperdex's Python readers of untrusted bytes (tests/fuzz/README.md).

Each harness feeds an artifact to a reader and accepts only hyperdex's own errors
(``hyperdex.errors.HyperdexError`` and its subclasses): any other exception escaping the
reader (a bare KeyError, TypeError, ValueError, OverflowError, UnicodeDecodeError,
RecursionError, ...) is a finding.

Every input is used twice: as the artifact's bytes (libFuzzer / the mutator changes them at
random), and as the seed of a structural mutation of the harness's seed artifact: its JSON
(a model file's header, a safetensors header, a memory map, a config) has values replaced by
hostile ones (wrong types, negative, 2^64, NaN, deep nesting, lone surrogates, ...), keys
dropped or added, then is re-serialised with its lengths and checksums made right again, so
that the reader's checks behind the checksums are reached.

Engines: atheris (coverage-guided libFuzzer, when ``import atheris`` works) or a bounded
random-mutation loop (``random`` with a fixed seed, no coverage feedback).

    python tests/fuzz/pyfuzz.py HARNESS [--engine auto|atheris|random] [--seconds S]
                                [--findings DIR] [--seed N] [--keep-going] [FILE ...]

FILEs given (and no --seconds): each is run once (a reproducer). Exit status 0 when nothing
was found, 1 on a finding, 2 on a usage error.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import io
import json
import math
import random
import shutil
import struct
import sys
import tempfile
import time
import traceback
import zlib
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
CORPUS = HERE / "corpus"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# -- hostile values ------------------------------------------------------------------------------


class Raw:
    """JSON text spliced in verbatim (what json.dumps cannot write: 5000-digit integers,
    nesting past the recursion limit, duplicate keys)."""

    def __init__(self, text: str) -> None:
        self.text = text


HOSTILE: List[Any] = [
    None,
    True,
    False,
    0,
    1,
    -1,
    2,
    3,
    7,
    8,
    63,
    64,
    65,
    4096,
    2**31 - 1,
    2**31,
    2**32 - 1,
    2**32,
    2**53 + 1,
    2**63 - 1,
    2**63,
    2**64 - 1,
    2**64,
    2**128,
    -(2**63),
    -(2**64),
    0.5,
    1.5,
    -0.0,
    1e308,
    float("inf"),
    float("-inf"),
    float("nan"),
    "",
    "a",
    "0",
    "-1",
    "1e3",
    "F16",
    "\u0000",
    "\ud800",
    "../x",
    "/etc/passwd",
    "x" * 300,
    [],
    [0],
    [-1],
    [2**64],
    [0, 0],
    [[]],
    [None],
    {},
    {"a": 1},
    Raw("1" * 5000),
    Raw("-" + "9" * 400),
    Raw("1e999999"),
    Raw("[" * 5000 + "]" * 5000),
    Raw('{"k": ' * 3000 + "1" + "}" * 3000),
]


def _paths(doc: Any, prefix: Tuple[Any, ...] = ()) -> List[Tuple[Any, ...]]:
    """Every path to a value inside doc (dict keys and list indexes)."""
    out: List[Tuple[Any, ...]] = []
    if isinstance(doc, dict):
        for k, v in doc.items():
            out.append(prefix + (k,))
            out.extend(_paths(v, prefix + (k,)))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out.append(prefix + (i,))
            out.extend(_paths(v, prefix + (i,)))
    return out


def _get(doc: Any, path: Tuple[Any, ...]) -> Any:
    for k in path:
        doc = doc[k]
    return doc


def hostile(rng: random.Random) -> Any:
    """A fresh copy of a hostile value (never the shared list or dict itself)."""
    return copy.deepcopy(rng.choice(HOSTILE))


def _near(v: Any, rng: random.Random) -> Any:
    """A value next to an integer one (off by one, doubled, negated, past 2^32 / 2^64)."""
    if isinstance(v, bool) or not isinstance(v, int):
        return hostile(rng)
    return rng.choice([v + 1, v - 1, v * 2, -v, v + 2**32, v + 2**64, v // 2, v * 64, 0])


def mutate_json(doc: Any, rng: random.Random, rounds: int = 0) -> Any:
    """A structurally mutated deep copy of doc (may hold Raw values)."""
    doc = json.loads(json.dumps(doc))
    for _ in range(rounds or rng.choice([1, 1, 1, 2, 3])):
        paths = _paths(doc)
        if not paths or rng.random() < 0.03:
            doc = hostile(rng)  # the whole document
            continue
        path = rng.choice(paths)
        parent = _get(doc, path[:-1])
        key = path[-1]
        op = rng.random()
        if op < 0.45:
            parent[key] = hostile(rng)
        elif op < 0.65:
            parent[key] = _near(parent[key], rng)
        elif op < 0.78:
            del parent[key]
        elif op < 0.86 and isinstance(parent, dict):
            parent[rng.choice(["x", "", "__metadata__", "dtype", "shape", str(key) + "_"])] = (
                hostile(rng)
            )
        elif op < 0.92 and isinstance(parent, list):
            parent.insert(rng.randrange(len(parent) + 1), hostile(rng))
        else:
            parent[key] = [parent[key]] if rng.random() < 0.5 else {"v": parent[key]}
    return doc


def dump_json(doc: Any, rng: Optional[random.Random] = None) -> bytes:
    """doc as JSON bytes, Raw values spliced in."""
    raws: List[str] = []

    def walk(v: Any) -> Any:
        if isinstance(v, Raw):
            raws.append(v.text)
            return f"@@RAW{len(raws) - 1}@@"
        if isinstance(v, dict):
            return {k: walk(x) for k, x in v.items()}
        if isinstance(v, list):
            return [walk(x) for x in v]
        return v

    text = json.dumps(walk(doc), separators=(",", ":"))
    for i, r in enumerate(raws):
        text = text.replace(f'"@@RAW{i}@@"', r)
    if rng is not None and rng.random() < 0.05:
        # A duplicate key: the first key of the top object again.
        if text.startswith("{") and ":" in text:
            first = text[1 : text.index(":") + 1]
            text = "{" + first + "0," + text[1:]
    return text.encode("utf-8", "surrogatepass")


# -- byte mutations (the random engine; libFuzzer has its own) ----------------------------------

_INTS = [0, 1, 0x7F, 0x80, 0xFF, 0x7FFF, 0xFFFF, 2**31 - 1, 2**31, 2**32 - 1, 2**63, 2**64 - 1]


def mutate_bytes(data: bytes, rng: random.Random, others: List[bytes]) -> bytes:
    b = bytearray(data)
    for _ in range(rng.choice([1, 1, 2, 4, 8])):
        op = rng.randrange(9)
        n = len(b)
        if op == 0 and n:
            b[rng.randrange(n)] ^= 1 << rng.randrange(8)
        elif op == 1 and n:
            b[rng.randrange(n)] = rng.randrange(256)
        elif op == 2 and n >= 8:
            at = rng.randrange(n - 7)
            width = rng.choice([1, 2, 4, 8])
            v = rng.choice(_INTS) & ((1 << (8 * width)) - 1)
            b[at : at + width] = v.to_bytes(width, "little")
        elif op == 3 and n:
            at = rng.randrange(n)
            del b[at : at + rng.choice([1, 4, 16, 256])]
        elif op == 4:
            at = rng.randrange(n + 1)
            b[at:at] = bytes(rng.randrange(256) for _ in range(rng.choice([1, 4, 16])))
        elif op == 5 and n:
            del b[rng.randrange(n) :]  # truncate
        elif op == 6 and others:
            o = rng.choice(others)
            if o:
                at, src = rng.randrange(n + 1), rng.randrange(len(o))
                b[at : at + 16] = o[src : src + rng.choice([4, 16, 64])]
        elif op == 7 and n:
            at = rng.randrange(n)
            b[at : at + 1] = rng.choice([b'"', b"{", b"}", b"[", b"]", b",", b":", b"-", b"e"])
        elif op == 8 and n >= 2:
            at = rng.randrange(n - 1)
            b[at : at + 2] = b[at : at + 2][::-1]
    return bytes(b)


# -- small containers for multi-file artifacts ---------------------------------------------------

_BUNDLE_MAGIC = b"HDXFZ1\n"


def pack_files(files: Dict[str, bytes]) -> bytes:
    """Several files in one corpus entry: magic, then per file: name, NUL, u32 length, bytes."""
    out = io.BytesIO()
    out.write(_BUNDLE_MAGIC)
    for name, data in files.items():
        out.write(name.encode() + b"\0" + struct.pack("<I", len(data)) + data)
    return out.getvalue()


def unpack_files(data: bytes) -> Optional[Dict[str, bytes]]:
    if not data.startswith(_BUNDLE_MAGIC):
        return None
    files: Dict[str, bytes] = {}
    at = len(_BUNDLE_MAGIC)
    while at < len(data):
        end = data.find(b"\0", at)
        if end < 0 or end + 5 > len(data):
            return None
        name = data[at:end].decode("utf-8", "replace")
        (n,) = struct.unpack_from("<I", data, end + 1)
        files[name] = data[end + 5 : end + 5 + n]
        at = end + 5 + n
    return files


def write_files(folder: Path, files: Dict[str, bytes]) -> bool:
    """Writes the files under folder (emptied first); False when a name is unusable."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    for name, data in files.items():
        rel = Path(name)
        if rel.is_absolute() or ".." in rel.parts or not rel.parts or "\\" in name:
            return False
        path = folder / rel
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        except (OSError, ValueError):  # a name the file system refuses (too long, NUL, ...)
            return False
    return True


# -- the harnesses -------------------------------------------------------------------------------


class Harness:
    """One reader. ``raw(data)`` reads data as the artifact; ``structured(rng)`` reads a
    structurally mutated seed. Both let only HyperdexError escape."""

    name = ""
    doc = ""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.seeds = [p.read_bytes() for p in sorted((CORPUS / self.name).glob("*"))]
        if not self.seeds:
            raise SystemExit(f"no seeds in {CORPUS / self.name}: run tests/fuzz/make_corpus.py")

    def raw(self, data: bytes) -> None:
        raise NotImplementedError

    def structured(self, rng: random.Random) -> None:
        raise NotImplementedError


def _align(n: int, a: int = 64) -> int:
    return -(-n // a) * a


class ModelFileHarness(Harness):
    name = "py_model_file"
    doc = "hyperdex_model.bin: ModelFile.open(verify=True), every tensor and the metadata"

    def __init__(self, work: Path) -> None:
        super().__init__(work)
        from hyperdex.formats.model_file import ModelFile

        self.ModelFile = ModelFile
        seed = self.seeds[0]
        _, _, _, hlen, data_offset = struct.unpack_from("<8sIIQQ", seed)
        self.header = json.loads(seed[32 : 32 + hlen])
        self.data = seed[data_offset:]

    def read(self, data: bytes) -> None:
        path = self.work / "hyperdex_model.bin"
        path.write_bytes(data)
        with self.ModelFile.open(path, verify=True) as m:
            for name in m.names:
                m.info(name)
                a = m[name]
                a.sum()
            json.dumps(m.metadata)

    def raw(self, data: bytes) -> None:
        self.read(data)

    def structured(self, rng: random.Random) -> None:
        header = dump_json(mutate_json(self.header, rng), rng)
        data_offset = _align(32 + len(header))
        if rng.random() < 0.2:
            data_offset = rng.choice([0, 32, data_offset - 64, data_offset + 64, 2**64 - 64])
        prefix = struct.pack(
            "<8sIIQQ", b"HDXMODEL", 1, zlib.crc32(header), len(header), data_offset
        )
        pad = max(0, min(data_offset, 1 << 20) - 32 - len(header))
        self.read(prefix + header + b"\0" * pad + self.data)


def _safetensors(header: Any, data: bytes, rng: Optional[random.Random] = None) -> bytes:
    h = dump_json(header, rng)
    return struct.pack("<Q", len(h)) + h + data


def _split_safetensors(blob: bytes) -> Tuple[Dict[str, Any], bytes]:
    (n,) = struct.unpack_from("<Q", blob)
    return json.loads(blob[8 : 8 + n]), blob[8 + n :]


class SafetensorsHarness(Harness):
    name = "py_hf_checkpoint"
    doc = (
        "HF checkpoint folder (hf_checkpoint.py): model.safetensors headers, or a sharded "
        "folder's model.safetensors.index.json; names, shapes, dtypes and every tensor loaded"
    )

    def __init__(self, work: Path) -> None:
        super().__init__(work)
        from hyperdex.formats.hf_checkpoint import HFCheckpoint

        self.HFCheckpoint = HFCheckpoint
        self.header, self.data = _split_safetensors(self.seeds[0])

    def read_folder(self, files: Dict[str, bytes]) -> None:
        folder = self.work / "ckpt"
        if not write_files(folder, files):
            return
        from hyperdex.errors import HyperdexError

        with self.HFCheckpoint.open(folder) as ck:
            for name in ck.names():
                ck.shape(name)
                ck.dtype(name)
                try:  # one tensor of a dtype hyperdex cannot convert must not hide the rest
                    ck.load(name)
                except HyperdexError:
                    pass

    def raw(self, data: bytes) -> None:
        self.read_folder({"model.safetensors": data})

    def structured(self, rng: random.Random) -> None:
        if rng.random() < 0.7:
            header = mutate_json(self.header, rng)
            self.read_folder({"model.safetensors": _safetensors(header, self.data, rng)})
            return
        # A sharded checkpoint: the seed's tensors in two shards and an index naming them.
        names = [n for n in self.header if n != "__metadata__"]
        shards: Dict[str, Dict[str, Any]] = {}
        weight_map: Dict[str, str] = {}
        for i, n in enumerate(names):
            shard = f"model-0000{1 + i % 2}-of-00002.safetensors"
            shards.setdefault(shard, {})[n] = self.header[n]
            weight_map[n] = shard
        files: Dict[str, bytes] = {}
        for shard, entries in shards.items():
            files[shard] = _safetensors(entries, self.data)  # offsets stay valid: same data
        index = {"metadata": {"total_size": len(self.data)}, "weight_map": weight_map}
        if rng.random() < 0.5:
            index = mutate_json(index, rng)
        else:
            shard = rng.choice(sorted(shards))
            files[shard] = _safetensors(mutate_json(shards[shard], rng), self.data, rng)
        files["model.safetensors.index.json"] = dump_json(index, rng)
        self.read_folder(files)


class GptqHarness(Harness):
    name = "py_gptq"
    doc = (
        "GPTQ import (gptq_checkpoint.py): quantization_config / quantize_config.json "
        "(gptq_settings), then GPTQImporter.check and .tensors over the checkpoint's "
        "qweight/qzeros/scales/g_idx"
    )

    def __init__(self, work: Path) -> None:
        super().__init__(work)
        from hyperdex.formats import gptq_checkpoint as g
        from hyperdex.formats.hf_checkpoint import HFCheckpoint

        self.g = g
        self.HFCheckpoint = HFCheckpoint
        files = unpack_files(self.seeds[0])
        assert files is not None
        self.files = files
        self.config = json.loads(files["config.json"])
        self.qconfig = json.loads(files["quantize_config.json"])
        self.header, self.data = _split_safetensors(files["model.safetensors"])
        self.plan_info = json.loads(files["plan.json"])

    def read(self, files: Dict[str, bytes]) -> None:
        folder = self.work / "gptq"
        if not write_files(folder, {k: v for k, v in files.items() if k != "plan.json"}):
            return
        try:
            config = json.loads(files["config.json"])
        except (ValueError, RecursionError):
            return  # the converter reads config.json with transformers; not this reader
        if not isinstance(config, dict):
            return
        g = self.g
        settings = g.gptq_settings(config, folder)
        if settings is None:
            return
        info = self.plan_info
        head = (info["model"]["vocab_size"], info["model"]["embed_dim"])  # a tied LM head's
        importer = g.GPTQImporter(settings, "LlamaForCausalLM", "llama", head)
        plan = [g._Plain(hf, tuple(canon)) for hf, canon in info["plan"]]
        shapes = {k: tuple(v) for k, v in info["shapes"].items()}
        with self.HFCheckpoint.open(folder) as ck:
            importer.check(ck, plan, shapes)
            for _, arr in importer.tensors(ck):
                arr.sum()
        importer.quantization_section()

    def raw(self, data: bytes) -> None:
        files = unpack_files(data)
        if files is not None and "config.json" in files:
            self.read(files)  # (the converter's plan stays the seed's: plan.json is not read)

    def structured(self, rng: random.Random) -> None:
        files = dict(self.files)
        what = rng.random()
        if what < 0.35:
            config = dict(self.config)
            config["quantization_config"] = mutate_json(self.config["quantization_config"], rng)
            files["config.json"] = dump_json(config, rng)
        elif what < 0.5:
            config = {k: v for k, v in self.config.items() if k != "quantization_config"}
            files["config.json"] = dump_json(config)
            files["quantize_config.json"] = dump_json(mutate_json(self.qconfig, rng), rng)
        elif what < 0.8:
            header = mutate_json(self.header, rng)
            files["model.safetensors"] = _safetensors(header, self.data, rng)
        else:
            # The tensors' values: zero points, g_idx, scales (NaN, not fp16-exact, ...).
            data = bytearray(self.data)
            for _ in range(rng.choice([1, 4, 32])):
                at = rng.randrange(len(data))
                data[at] = rng.randrange(256)
            files["model.safetensors"] = _safetensors(self.header, bytes(data))
        self.read(files)


class CompiledHarness(Harness):
    name = "py_compiled"
    doc = (
        "a compiled folder's JSON records (compiled/folder.py, record.py, session.py): "
        "verify_compiled, read_memory_map, the device preset, session_config, kv_regions"
    )

    def __init__(self, work: Path) -> None:
        super().__init__(work)
        from hyperdex.compiled import folder as f
        from hyperdex.compiled import session as s
        from hyperdex.presets import device_preset

        self.f, self.s, self.device_preset = f, s, device_preset
        files = unpack_files(self.seeds[0])
        assert files is not None
        self.files = files
        self.json_files = sorted(n for n in files if n.endswith(".json"))

    def read(self, files: Dict[str, bytes], reseal: bool) -> None:
        folder = self.work / "compiled"
        if not write_files(folder, files):
            return
        f = self.f
        if reseal:
            # Checksums made right again, as a compiler would have written them: what stops
            # the mutation now is the structure check, not the CRC-32.
            # (The compiler's writer, not a reader: when it cannot seal, the folder stays as
            # it is.)
            try:
                info = json.loads((folder / f.COMPILE_INFO_NAME).read_text())
                if isinstance(info, dict):
                    sealed = json.dumps(f.seal_compile_info(folder, info))
                    (folder / f.COMPILE_INFO_NAME).write_text(sealed)
            except Exception:  # noqa: BLE001
                pass
        info = f.verify_compiled(folder)
        f.recompile_call(folder, info)
        mm = f.read_memory_map(folder)
        self.device_preset(mm["device_preset"])
        f.kv_regions(mm)
        if int(mm.get("num_device", 1)) > 1:
            for d in mm["devices"]:
                self.s.session_config(folder, mm, d["param_files"])
        else:
            self.s.session_config(folder, mm, mm["param_files"])

    def raw(self, data: bytes) -> None:
        files = unpack_files(data)
        if files is not None and files:
            self.read(files, reseal=bool(zlib.crc32(data) & 1))

    def structured(self, rng: random.Random) -> None:
        files = dict(self.files)
        name = rng.choice(self.json_files)
        doc = json.loads(files[name])
        files[name] = dump_json(mutate_json(doc, rng), rng)
        self.read(files, reseal=rng.random() < 0.8)


class GgufHarness(Harness):
    name = "py_gguf"
    doc = (
        "GGUF reading (tools/real_weights.py, gguf_to_hf_folder's reading steps): "
        "gguf.GGUFReader, _llama_config, _hf_tensors"
    )

    def __init__(self, work: Path) -> None:
        super().__init__(work)
        from hyperdex.tools import real_weights as rw

        self.rw = rw
        files = unpack_files(self.seeds[0])
        assert files is not None
        self.gguf = files["model.gguf"]
        self.spec = json.loads(files["spec.json"])

    def read(self, data: bytes) -> None:

        path = self.work / "model.gguf"
        path.write_bytes(data)
        reader = self.rw.read_gguf(path)  # the reader's own errors become a CheckpointError
        config = self.rw._llama_config(reader, path, "float32")
        self.rw._hf_tensors(reader, config, "float32")

    def raw(self, data: bytes) -> None:
        files = unpack_files(data)  # the seed bundle, or a GGUF file as it is
        self.read(files.get("model.gguf", b"") if files is not None else data)

    def structured(self, rng: random.Random) -> None:
        spec = mutate_json(self.spec, rng)
        try:
            data = write_gguf(spec)
        except Exception:  # the writer refusing a mutated spec: nothing to read
            return
        self.read(data)


def write_gguf(spec: Any) -> bytes:
    """A GGUF file from {"kv": {key: value}, "tensors": {name: [shape, fill]}} (F32 tensors)."""
    import gguf
    import numpy as np

    buf = Path(tempfile.mkdtemp(prefix="hyperdex-gguf-")) / "w.gguf"
    try:
        w = gguf.GGUFWriter(str(buf), arch=str(spec["kv"].get("general.architecture", "llama")))
        for key, value in spec["kv"].items():
            if key == "general.architecture":
                continue
            if isinstance(value, bool):
                w.add_bool(key, value)
            elif isinstance(value, int):
                w.add_uint32(key, value) if 0 <= value < 2**32 else w.add_int64(key, value)
            elif isinstance(value, float):
                w.add_float32(key, value)
            elif isinstance(value, str):
                w.add_string(key, value)
            elif isinstance(value, list):
                w.add_array(key, value)
        for name, (shape, fill) in spec["tensors"].items():
            count = math.prod(int(d) for d in shape)
            if count > 1 << 16:
                raise ValueError("too large")
            arr = np.full([int(d) for d in shape], float(fill), dtype=np.float32)
            w.add_tensor(name, arr)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        return buf.read_bytes()
    finally:
        shutil.rmtree(buf.parent, ignore_errors=True)


HARNESSES: Dict[str, Callable[[Path], Harness]] = {
    h.name: h
    for h in (ModelFileHarness, SafetensorsHarness, GptqHarness, CompiledHarness, GgufHarness)
}

# -- running -------------------------------------------------------------------------------------


class Findings:
    """Distinct findings (by exception type and innermost hyperdex frame), written to DIR."""

    def __init__(self, harness: str, folder: Path) -> None:
        self.harness = harness
        self.folder = folder
        self.seen: Dict[str, int] = {}

    def add(self, exc: BaseException, data: bytes, mode: str) -> bool:
        tb = traceback.extract_tb(exc.__traceback__)
        ours = [f for f in tb if "/hyperdex/" in f.filename.replace("\\", "/")]
        frame = (ours or tb or [None])[-1]
        where = f"{Path(frame.filename).name}:{frame.name}" if frame else "?"
        key = f"{type(exc).__name__} at {where}"
        first = key not in self.seen
        self.seen[key] = self.seen.get(key, 0) + 1
        if first:
            self.folder.mkdir(parents=True, exist_ok=True)
            digest = hashlib.sha1(data).hexdigest()[:16]
            stem = self.folder / f"{self.harness}-{digest}"
            stem.with_suffix(".input").write_bytes(data)
            text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
            if frame:
                key_line = f"{key} (first seen at {Path(frame.filename).name}:{frame.lineno})"
            else:
                key_line = key
            stem.with_suffix(".txt").write_text(
                f"{key_line} ({mode} mode)\nreproduce: python tests/fuzz/pyfuzz.py {self.harness} "
                f"{stem.with_suffix('.input')}\n\n{text}"
            )
            msg = str(exc).replace("\n", " ")[:160]
            print(f"[{self.harness}] FINDING {key}: {type(exc).__name__}: {msg}", flush=True)
        return first


def one_input(h: Harness, data: bytes) -> None:
    """What both engines run per input: the bytes as they are, then a structural mutation
    seeded by them. Lets non-hyperdex exceptions through (tagged with the mode)."""
    from hyperdex.errors import HyperdexError

    for mode in ("raw", "structured"):
        try:
            if mode == "raw":
                h.raw(data)
            else:
                h.structured(random.Random(zlib.crc32(data) ^ len(data)))
        except HyperdexError:
            pass
        except Exception as e:  # noqa: BLE001 - every other type is a finding
            e.fuzz_mode = mode  # type: ignore[attr-defined]
            raise


def run_random(h: Harness, seconds: float, seed: int, findings: Findings, keep_going: bool) -> int:
    rng = random.Random(seed)
    runs = 0
    deadline = time.monotonic() + seconds
    inputs = list(h.seeds)
    while time.monotonic() < deadline:
        base = inputs[runs % len(inputs)] if runs < len(inputs) else rng.choice(inputs)
        data = base if runs < len(inputs) else mutate_bytes(base, rng, inputs)
        runs += 1
        try:
            one_input(h, data)
        except Exception as e:  # noqa: BLE001
            findings.add(e, data, getattr(e, "fuzz_mode", "?"))
            if not keep_going:
                break
    return runs


def run_atheris(h: Harness, seconds: float, corpus_dirs: List[str], findings: Path) -> int:
    import atheris

    def test_one(data: bytes) -> None:
        one_input(h, data)

    findings.mkdir(parents=True, exist_ok=True)
    args = [
        sys.argv[0],
        f"-max_total_time={max(1, int(seconds))}",
        f"-artifact_prefix={findings}/{h.name}-",
        "-timeout=20",
        "-rss_limit_mb=4096",
        "-print_final_stats=1",
    ] + corpus_dirs
    atheris.Setup(args, test_one)
    atheris.Fuzz()  # exits the process
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("harness", choices=sorted(HARNESSES) + ["list"])
    p.add_argument("--engine", choices=["auto", "atheris", "random"], default="auto")
    p.add_argument("--seconds", type=float, default=None, help="fuzz this long (default 10)")
    p.add_argument("--findings", type=Path, default=ROOT / "build" / "fuzz" / "findings")
    p.add_argument("--seed", type=int, default=1234, help="the random engine's seed")
    p.add_argument("--keep-going", action="store_true", help="random engine: collect all")
    p.add_argument("files", nargs="*", type=Path, help="inputs to run once (reproducers)")
    args = p.parse_intermixed_args(argv)
    if args.harness == "list":
        for name, cls in HARNESSES.items():
            print(f"{name}: {cls.doc}")
        return 0
    engine = args.engine
    if engine == "auto":
        try:
            import atheris  # noqa: F401

            engine = "atheris"
        except ImportError:
            engine = "random"
    # A scratch folder of its own (atheris ends the process without unwinding: not /tmp).
    work = args.findings.parent / "work" / args.harness
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        if engine == "atheris" and not args.files:
            import atheris

            with atheris.instrument_imports(include=["hyperdex", "gguf"]):
                h = HARNESSES[args.harness](work)
        else:
            h = HARNESSES[args.harness](work)
        found = Findings(args.harness, args.findings / args.harness)
        if args.files and args.seconds is None:
            for path in args.files:
                data = path.read_bytes()
                try:
                    one_input(h, data)
                    print(f"{path}: no finding")
                except Exception as e:  # noqa: BLE001
                    found.add(e, data, getattr(e, "fuzz_mode", "?"))
                    traceback.print_exc()
            return 1 if found.seen else 0
        seconds = 10.0 if args.seconds is None else args.seconds
        print(f"[pyfuzz] engine {engine}" + (f" (seed {args.seed})" if engine == "random" else ""))
        sys.stdout.flush()
        if engine == "atheris":
            # New inputs go to a scratch folder (first); the committed seeds are only read.
            scratch = args.findings.parent / "corpus" / h.name
            scratch.mkdir(parents=True, exist_ok=True)
            dirs = [str(scratch)] + ([str(d) for d in args.files] or [str(CORPUS / h.name)])
            return run_atheris(h, seconds, dirs, args.findings / args.harness)
        t0 = time.monotonic()
        runs = run_random(h, seconds, args.seed, found, args.keep_going)
        dt = time.monotonic() - t0
        result = "OK" if not found.seen else f"FOUND {len(found.seen)}"
        print(f"{h.name}: {runs} runs in {dt:.1f} s, engine random (seed {args.seed}): {result}")
        for key, count in found.seen.items():
            print(f"  {key} x{count}")
        return 1 if found.seen else 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
