"""Seed 003's board format: a quantized model as the hardware ``.bin`` files of the
Compiler-VCU128 flow (a W4A16 Qwen2/Llama on a Xilinx VCU128 with 32 HBM AXI ports).

`export_vcu128(folder)` reads the quantized codes and scales of a compiled (or converted)
model and writes ``<folder>/export/vcu128/``; `read_vcu128_export(folder)` reads them back
into hyperdex's canonical tensors. docs/formats.md ("VCU128 export (seed 003)") gives the
byte layout; in short, every quantized matrix row is, for each chunk of 2048 inputs, one
256-bit line of 16 fp16 scales (the chunk's 16 groups of 128) followed by 32 lines of
256 bits holding the chunk's int4 weights, 8 per little-endian 32-bit word along the input,
LSB first, as signed two's-complement nibbles ``q - 8``; row ``r`` goes to HBM port
``r % 32``. Only int4 with group size 128 is the board's format.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional, Union

import numpy as np

from .. import __version__
from ..arch.record import ModelRecord, as_record
from ..compiled.record import HYPERDEX_CONFIG_NAME, HYPERDEX_MODEL_NAME, check_config_version
from ..errors import ConfigError, FormatError
from ..formats import ModelFile
from ..formats.atomic import temp_path

log = logging.getLogger("hyperdex")

__all__ = [
    "EXPORT_DIR",
    "MANIFEST_NAME",
    "export_vcu128",
    "pack_rows",
    "read_vcu128_export",
    "unpack_rows",
]

EXPORT_DIR = Path("export") / "vcu128"
MANIFEST_NAME = "manifest.json"
FORMAT_NAME = "hyperdex-vcu128-export"
FORMAT_VERSION = 1
PORTS = 32  # HBM AXI ports of the VCU128 design
EMBEDDING_PARTS = 16
BITS = 4
GROUP = 128
LINE_BYTES = 32  # one 256-bit HBM line
SCALES_PER_LINE = LINE_BYTES // 2  # 16 fp16 scales
CHUNK_INPUTS = SCALES_PER_LINE * GROUP  # 2048 inputs = 32 lines of int4 weights
ZERO_POINT = 1 << (BITS - 1)
WEIGHT_AND_BIAS_HIGH = 0x3C00  # fp16 1.0: the board's per-output multiplier beside the bias

# canonical projection -> (seed's folder stem, seed's file stem), after its hardware.py.
_LINEARS = (
    ("attn_q", "MVM_BN", "MVMBN0_q"),
    ("attn_k", "MVM_BN", "MVMBN0_k"),
    ("attn_v", "MVM_BN", "MVMBN0_v"),
    ("ffn_gate", "MVM_BN", "MVMBN1"),
    ("attn_output", "MVM_BN_RES", "MVMBNRES0"),
    ("ffn_up", "MVM_BN_RES", "MVMBNRES1"),
    ("ffn_down", "MVM_BN_RES", "MVMBNRES2"),
)
_HEAD = ("output", "MVM_BN", "MVMBN_Argmax")

PathLike = Union[str, "os.PathLike[str]"]


# -- the row format ----------------------------------------------------------------------------


def row_bytes(in_features: int) -> int:
    """Bytes of one exported row: a scale line per 2048-input chunk plus in/2 weight bytes."""
    chunks = -(-in_features // CHUNK_INPUTS)
    return chunks * LINE_BYTES + in_features // 2


def pack_rows(codes: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """codes u8 [out, in] (0..15, zero point 8) + scales f16 [out, in/128] -> the board's
    rows, u8 [out, row_bytes(in)] (see the module docstring)."""
    out, cols = codes.shape
    if cols % GROUP or scales.shape != (out, cols // GROUP):
        raise ConfigError(
            f"codes [{out}, {cols}] with scales {list(scales.shape)} are not int4 groups of "
            f"{GROUP} consecutive inputs; the VCU128 format needs in_features a multiple of "
            f"{GROUP} and one scale per group"
        )
    if codes.size and int(codes.max()) > 15:
        raise ConfigError("codes above 15 are not int4: the VCU128 format holds 4-bit weights")
    nibbles = codes ^ np.uint8(ZERO_POINT)  # (q - 8) & 0xF, two's complement
    packed = nibbles[:, 0::2] | (nibbles[:, 1::2] << np.uint8(4))  # [out, in/2]
    rows = np.zeros((out, row_bytes(cols)), dtype=np.uint8)
    scale_bytes = np.ascontiguousarray(scales.astype("<f2")).view(np.uint8)  # [out, 2*G]
    pos = 0
    for start in range(0, cols, CHUNK_INPUTS):
        stop = min(start + CHUNK_INPUTS, cols)
        g0, g1 = start // GROUP, stop // GROUP
        rows[:, pos : pos + 2 * (g1 - g0)] = scale_bytes[:, 2 * g0 : 2 * g1]
        pos += LINE_BYTES
        rows[:, pos : pos + (stop - start) // 2] = packed[:, start // 2 : stop // 2]
        pos += (stop - start) // 2
    return rows


def unpack_rows(rows: np.ndarray, in_features: int) -> tuple[np.ndarray, np.ndarray]:
    """The inverse of `pack_rows`: (codes u8 [out, in], scales f16 [out, in/128]). Raises
    FormatError when an unused scale slot is not zero."""
    out = rows.shape[0]
    codes = np.empty((out, in_features), dtype=np.uint8)
    scale_bytes = np.empty((out, 2 * (in_features // GROUP)), dtype=np.uint8)
    pos = 0
    for start in range(0, in_features, CHUNK_INPUTS):
        stop = min(start + CHUNK_INPUTS, in_features)
        g0, g1 = start // GROUP, stop // GROUP
        line = rows[:, pos : pos + LINE_BYTES]
        scale_bytes[:, 2 * g0 : 2 * g1] = line[:, : 2 * (g1 - g0)]
        if np.any(line[:, 2 * (g1 - g0) :]):
            raise FormatError(
                f"a scale line has non-zero bytes in its unused slots (chunk at input {start}); "
                "the export is damaged: export again"
            )
        pos += LINE_BYTES
        packed = rows[:, pos : pos + (stop - start) // 2]
        codes[:, start:stop:2] = packed & np.uint8(0xF)
        codes[:, start + 1 : stop : 2] = packed >> np.uint8(4)
        pos += (stop - start) // 2
    codes ^= np.uint8(ZERO_POINT)
    return codes, np.ascontiguousarray(scale_bytes).view("<f2").astype(np.float16)


# -- export ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Source:
    """Where a compiled (or converted) folder keeps its quantized model."""

    folder: Path  # holds hyperdex_config.json + hyperdex_model.bin
    config: dict[str, Any]


def _find_converted(folder: Path) -> _Source:
    # A compile quantized by hyperdex keeps ckpt/quantized/; a GPTQ import, ckpt/; a bare
    # conversion, the folder itself.
    for cand in (folder / "ckpt" / "quantized", folder / "ckpt", folder):
        cfg = cand / HYPERDEX_CONFIG_NAME
        if cfg.is_file() and (cand / HYPERDEX_MODEL_NAME).is_file():
            config = json.loads(cfg.read_text(encoding="utf-8"))
            check_config_version(config, cfg)
            return _Source(cand, config)
    raise ConfigError(
        f"{folder} holds no converted model (ckpt/hyperdex_config.json + hyperdex_model.bin); "
        "pass a folder that AutoCompiler().compile(..., quantization='w4a16') wrote"
    )


def _check_exportable(config: dict[str, Any], where: Path) -> dict[str, Any]:
    q = config.get("quantization")
    if not q:
        raise ConfigError(
            f"the model in {where} has fp16 weights; seed 003's board format holds int4 "
            "weights with group size 128: compile with quantization='w4a16'"
        )
    if q.get("bits") != BITS or q.get("group_size") != GROUP:
        raise ConfigError(
            f"the model in {where} is quantized with bits={q.get('bits')}, "
            f"group_size={q.get('group_size')}; seed 003's VCU128 format is int4 with group "
            f"size {GROUP} only: compile with quantization='w4a16' (4 bits, group 128)"
        )
    check_model_exportable(config.get("architecture"), as_record(config["model"]))
    return q


def check_model_exportable(architecture: Any, model: ModelRecord) -> None:
    """What the board format needs of the model itself, checkable before any compile work:
    a Qwen2/Llama-style block whose linear layers' input widths are whole groups of 128."""
    if not (model.gated_mlp and model.norm == "rmsnorm"):
        raise ConfigError(
            f"{architecture} is not a Qwen2/Llama-style model (RMSNorm, gated "
            "MLP), the block seed 003's board implements; the VCU128 export supports those only"
        )
    widths = {
        "hidden_size (q/k/v, gate/up inputs)": model.hidden_size,
        "num_heads x head_dim (attention output input)": model.num_heads * model.head_dim,
        "intermediate_size (down projection input)": model.intermediate_size,
    }
    bad = {k: v for k, v in widths.items() if v % GROUP}
    if bad:
        raise ConfigError(
            "seed 003's VCU128 format packs every row in whole groups of "
            f"{GROUP} inputs, but this model has "
            + ", ".join(f"{k} = {v}" for k, v in bad.items())
            + f", not a multiple of {GROUP}; compile without export='vcu128'"
        )


def _bias_words(bias: Optional[np.ndarray], out: int) -> np.ndarray:
    """The board's per-output word: high half fp16 1.0, low half the fp16 bias."""
    bits = (
        np.zeros(out, dtype=np.uint32)
        if bias is None
        else np.ascontiguousarray(bias.astype("<f2")).view("<u2").astype(np.uint32)
    )
    return (bits | np.uint32(WEIGHT_AND_BIAS_HIGH << 16)).astype("<u4")


def _optional(mf: ModelFile, name: str) -> Optional[np.ndarray]:
    return mf[name] if name in mf else None


def _norm_bytes(weight: np.ndarray, bias: Optional[np.ndarray]) -> np.ndarray:
    """A norm as the board reads it: the fp16 gains, then fp16 biases (zeros for RMSNorm)."""
    b = np.zeros_like(weight) if bias is None else bias
    return np.concatenate([weight.astype("<f2"), b.astype("<f2")])


class _Writer:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.files: list[dict[str, Any]] = []

    def write(self, rel: str, data: np.ndarray, **record: Any) -> None:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        raw = np.ascontiguousarray(data).tobytes()
        path.write_bytes(raw)
        self.files.append({"file": rel, **record, "bytes": len(raw), "crc32": zlib.crc32(raw)})


def _linears(config: dict[str, Any], mf: ModelFile) -> Iterator[tuple[str, str, str, str]]:
    """(canonical prefix, seed block folder, folder stem, file stem) of every matrix."""
    for i in range(as_record(config["model"]).num_layers):
        for name, folder, stem in _LINEARS:
            prefix = f"blk.{i}.{name}"
            if prefix + ".weight" in mf.names:
                yield prefix, f"BLOCK{i:02d}", folder, stem
    yield "output", "OutLayer", _HEAD[1], _HEAD[2]


def export_vcu128(folder: PathLike, *, skip_lm_head: bool = False) -> Path:
    """Writes seed 003's hardware files for the quantized model in ``folder`` (a compiled
    folder, or a converted one holding hyperdex_config.json + hyperdex_model.bin) into
    ``<folder>/export/vcu128/`` and returns that path. The model must be int4 with group
    size 128 (``quantization='w4a16'``) and a Qwen2/Llama-style block. The board runs the LM
    head as an int4 matrix too: compile with ``quantize_lm_head=True``, or pass
    ``skip_lm_head=True`` to leave its files out. The folder is replaced as a whole (written
    beside it, then renamed); ``manifest.json`` lists every file with its size and CRC-32."""
    folder = Path(folder)
    src = _find_converted(folder)
    q = _check_exportable(src.config, src.folder)
    model = as_record(src.config["model"])
    final = folder / EXPORT_DIR
    tmp = temp_path(final)  # <final>.tmp.<pid>-<random>: a killed export's is removed later
    tmp.mkdir(parents=True)
    w = _Writer(tmp)
    mf = ModelFile.open(src.folder / HYPERDEX_MODEL_NAME, verify=True)
    try:
        names = set(mf.names)
        head_quantized = "output.scales" in names
        if not head_quantized and not skip_lm_head:
            raise ConfigError(
                "seed 003's board runs the LM head as an int4 matrix (OutLayer MVMBN_Argmax), "
                "but this model's LM head is fp16: compile with QuantizationConfig(bits=4, "
                "group_size=128, quantize_lm_head=True), or export with skip_lm_head=True"
            )
        for prefix, block, kind, stem in _linears(src.config, mf):
            if prefix == "output" and not head_quantized:
                continue
            codes, scales = mf[prefix + ".weight"], mf[prefix + ".scales"]
            if codes.dtype != np.uint8:
                raise ConfigError(f"{prefix}.weight is not quantized ({codes.dtype})")
            out, cols = codes.shape
            rows = pack_rows(codes, scales)
            for port in range(PORTS):
                w.write(
                    f"{block}/{kind}_write_to_HBM_bin/{stem}_HBM_DDR_{port:02d}.bin",
                    rows[port::PORTS],
                    kind="qmatrix",
                    tensor=prefix,
                    port=port,
                    out_features=out,
                    in_features=cols,
                    first_row=port,
                    row_step=PORTS,
                    rows=len(range(port, out, PORTS)),
                    row_bytes=rows.shape[1],
                )
            bias = prefix + ".bias"
            w.write(
                f"{block}/{kind}_DDR_bin/{stem}_wt_and_bias_in_DDR.bin",
                _bias_words(_optional(mf, bias), out),
                kind="bias",
                tensor=bias if bias in names else None,
                elements=out,
            )
        for i in range(model.num_layers):
            for norm, stem in (("attn_norm", "LN0"), ("ffn_norm", "LN1")):
                name = f"blk.{i}.{norm}"
                w.write(
                    f"BLOCK{i:02d}/LN_DDR_bin/{stem}_wt_in_DDR.bin",
                    _norm_bytes(mf[name + ".weight"], _optional(mf, name + ".bias")),
                    kind="norm",
                    tensor=name + ".weight",
                    elements=model.hidden_size,
                )
        w.write(
            "OutLayer/LN_DDR_bin/LN_wt_in_DDR.bin",
            _norm_bytes(
                mf["output_norm.weight"],
                _optional(mf, "output_norm.bias"),
            ),
            kind="norm",
            tensor="output_norm.weight",
            elements=model.hidden_size,
        )
        embed = np.ascontiguousarray(mf["tok_embd.weight"].astype("<f2")).reshape(-1)
        part = embed.size // EMBEDDING_PARTS
        for k in range(EMBEDDING_PARTS):
            stop = embed.size if k == EMBEDDING_PARTS - 1 else (k + 1) * part
            w.write(
                f"Embedding/Embedding_{k + 1:02d}-of-{EMBEDDING_PARTS:02d}.bin",
                embed[k * part : stop],
                kind="embedding",
                tensor="tok_embd.weight",
                part=k,
                first_element=k * part,
                elements=stop - k * part,
            )
        manifest = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "hyperdex_version": __version__,
            "board": "vcu128 (seed 003, Compiler-VCU128)",
            "architecture": src.config.get("architecture"),
            "quantization": q,
            "bits": BITS,
            "group_size": GROUP,
            "ports": PORTS,
            "line_bytes": LINE_BYTES,
            "chunk_inputs": CHUNK_INPUTS,
            "embedding_parts": EMBEDDING_PARTS,
            "num_layers": model.num_layers,
            "hidden_size": model.hidden_size,
            "vocab_size": model.vocab_size,
            "embedding_shape": list(mf.info("tok_embd.weight").shape),
            "lm_head": "int4" if head_quantized else None,
            "files": w.files,
        }
    except BaseException:
        mf.close()
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    mf.close()
    (tmp / MANIFEST_NAME).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    if final.exists():
        shutil.rmtree(final)
    tmp.replace(final)
    log.info("Wrote seed 003's VCU128 files (%d) into %s", len(w.files), final)
    return final


# -- reading back ------------------------------------------------------------------------------


def _read_checked(root: Path, rec: dict[str, Any]) -> bytes:
    path = root / rec["file"]
    if not path.is_file():
        raise FormatError(f"{path} is missing from the VCU128 export; export again")
    raw = path.read_bytes()
    if len(raw) != rec["bytes"] or zlib.crc32(raw) != rec["crc32"]:
        raise FormatError(
            f"{path} does not match the manifest ({len(raw)} bytes, CRC-32 "
            f"{zlib.crc32(raw):08x}; recorded {rec['bytes']} bytes, {rec['crc32']:08x}): the "
            "file is damaged or stale; export again"
        )
    return raw


def read_vcu128_export(folder: PathLike) -> dict[str, np.ndarray]:
    """Reads ``<folder>/export/vcu128/`` (or that folder itself) back into canonical tensors:
    ``X.weight`` u8 codes [out, in] and ``X.scales`` f16 [out, in/128] per matrix, ``X.bias``
    f16 where the model has one, the norms' ``.weight`` (and ``.bias`` when not zero) and
    ``tok_embd.weight`` f16 [vocab, dim]. Every file's size and CRC-32 is checked."""
    folder = Path(folder)
    root = folder if (folder / MANIFEST_NAME).is_file() else folder / EXPORT_DIR
    path = root / MANIFEST_NAME
    if not path.is_file():
        raise FormatError(f"{folder} has no VCU128 export ({path}); run export_vcu128 first")
    manifest = json.loads(path.read_text(encoding="utf-8"))
    if manifest.get("format") != FORMAT_NAME or manifest.get("format_version") != FORMAT_VERSION:
        raise FormatError(
            f"{path} is not a version-{FORMAT_VERSION} {FORMAT_NAME} manifest; export again "
            "with this hyperdex"
        )
    out: dict[str, np.ndarray] = {}
    matrices: dict[str, list[dict[str, Any]]] = {}
    embedding: list[tuple[int, bytes]] = []
    for rec in manifest["files"]:
        raw = _read_checked(root, rec)
        kind = rec["kind"]
        if kind == "qmatrix":
            matrices.setdefault(rec["tensor"], []).append({**rec, "raw": raw})
        elif kind == "bias":
            words = np.frombuffer(raw, dtype="<u4")
            if np.any((words >> 16) != WEIGHT_AND_BIAS_HIGH):
                raise FormatError(f"{rec['file']}: a bias word's high half is not fp16 1.0")
            if rec["tensor"] is not None:
                out[rec["tensor"]] = (words & 0xFFFF).astype("<u2").view("<f2").astype(np.float16)
        elif kind == "norm":
            vals = np.frombuffer(raw, dtype="<f2").astype(np.float16)
            n = rec["elements"]
            out[rec["tensor"]] = vals[:n].copy()
            if np.any(vals[n:].view(np.uint16)):
                out[rec["tensor"][: -len(".weight")] + ".bias"] = vals[n:].copy()
        elif kind == "embedding":
            embedding.append((rec["first_element"], raw))
        else:
            raise FormatError(f"{path} lists {rec['file']} of unknown kind {kind!r}")
    for tensor, recs in matrices.items():
        first = recs[0]
        n_out, cols, rb = first["out_features"], first["in_features"], first["row_bytes"]
        rows = np.zeros((n_out, rb), dtype=np.uint8)
        for rec in recs:
            part = np.frombuffer(rec["raw"], dtype=np.uint8).reshape(-1, rb)
            rows[rec["first_row"] :: rec["row_step"]] = part
        out[tensor + ".weight"], out[tensor + ".scales"] = unpack_rows(rows, cols)
    if embedding:
        embedding.sort()
        flat = np.frombuffer(b"".join(raw for _, raw in embedding), dtype="<f2")
        out["tok_embd.weight"] = flat.astype(np.float16).reshape(manifest["embedding_shape"])
    return out
