"""Import of Hugging Face GPTQ checkpoints (``quantization_config.quant_method == "gptq"``).

A GPTQ checkpoint replaces each quantized ``torch.nn.Linear`` ``<prefix>.weight`` [out, in]
by (the AutoGPTQ / GPTQModel / transformers layout, ``b`` = bits, ``p = 32 / b`` codes per
int32, ``G`` = groups = in / group_size):

- ``<prefix>.qweight`` int32 [in / p, out]: codes packed along the *input*, LSB first:
  input ``k*p + j`` of output ``o`` is bits ``[b*j, b*j + b)`` of ``qweight[k, o]``;
- ``<prefix>.qzeros`` int32 [G, ceil(out / p)]: zero points packed along the *output*,
  same bit order. Format v1 (``checkpoint_format`` "gptq", the default) stores zero - 1,
  format v2 (``"gptq_v2"``) stores the zero point itself;
- ``<prefix>.scales`` fp16 [G, out];
- ``<prefix>.g_idx`` int32 [in]: the group of each input column (``i // group_size`` unless
  act_order without static groups permuted them);
- ``<prefix>.bias`` fp16 [out] when the layer has a bias (an ordinary tensor).

and dequantizes as ``w[o, i] = scales[g_idx[i], o] * (q[o, i] - zero[g_idx[i], o])``.

hyperdex's device format (docs/formats.md) is symmetric with the fixed zero point
``2^(b-1)`` and groups of consecutive inputs, so the import is *exact* (the codes and
scales are copied, never re-quantized) and accepts a checkpoint only when

- every zero point is ``2^(b-1)`` (after v1's +1): the device has no zero points;
- ``g_idx[i] == i // group_size``: act_order checkpoints without static groups assign
  scattered input columns to a group; the LPU streams a group's scale followed by its
  *consecutive* inputs. Repacking exactly would mean permuting the layer's input features,
  which for every projection but ``down_proj`` is the residual stream that all layers share
  with different permutations, so such checkpoints are rejected (re-export with
  ``desc_act=False`` or ``static_groups=True``, or quantize the fp16 model with hyperdex);
- bits are 4 or 8 and every block projection (q, k, v, o, gate, up, down; OPT's q, k, v,
  out_proj, fc1, fc2) is quantized with the same settings. ``lm_head`` may be quantized too
  (GPTQModel's ``lm_head=True``); embeddings and norms stay fp16.

Results are hyperdex's canonical quantized tensors: ``X.weight`` u8 codes [out, in]
(unpacked) and ``X.scales`` f16 [out, G]. Llama/Mistral, Qwen2 and OPT (one HF tensor per
projection) are supported; GPT-2's fused Conv1D ``c_attn`` is not.

`gptq_importer(hf_config, folder, ...)` is the converter's entry point: ``None`` for an
unquantized checkpoint, else a `GPTQImporter` whose `check` validates names, shapes,
dtypes, zero points, ``g_idx`` and scales before any weight is unpacked, and whose
`tensors` yields the canonical tensors.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Protocol, Sequence

import numpy as np

from hyperdex.errors import CheckpointError, ConfigError
from hyperdex.jsonfile import load_json

__all__ = [
    "GPTQ_FORMATS",
    "GPTQImporter",
    "GPTQSettings",
    "QUANTIZED_LINEARS",
    "dequantize",
    "gptq_importer",
    "gptq_settings",
    "pack_along_input",
    "pack_along_output",
    "unpack_along_input",
    "unpack_along_output",
]

SUPPORTED_BITS = (4, 8)
GPTQ_FORMATS = ("gptq", "gptq_v2")
# g_idx is int32: no layer has more input columns, so no group is larger.
_MAX_GROUP_SIZE = 2**31 - 1
# Canonical projections of a block that GPTQ quantizes (those the model has).
QUANTIZED_LINEARS = (
    "attn_q",
    "attn_k",
    "attn_v",
    "attn_output",
    "ffn_gate",
    "ffn_up",
    "ffn_down",
)
IMPORT_FAMILIES = ("llama", "qwen2", "opt")
_BLOCK_LINEAR = re.compile(r"blk\.\d+\.(" + "|".join(QUANTIZED_LINEARS) + r")\.weight")
_LM_HEAD = "output.weight"
_PACKED_DTYPES = ("int32", "uint32")
_SCALE_DTYPES = ("float16", "bfloat16", "float32")
_INT_DTYPES = ("int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64")
_AUTOGPTQ_CONFIG = "quantize_config.json"

_REQUANTIZE = (
    "quantize the original fp16/bf16 model with hyperdex instead "
    "(AutoCompiler().compile(<fp16 model>, quantization='w4a16'))"
)


# -- settings -------------------------------------------------------------------------------


@dataclass(frozen=True)
class GPTQSettings:
    """What a GPTQ checkpoint's ``quantization_config`` says."""

    bits: int
    group_size: int  # as in the config: -1 = one group per row
    checkpoint_format: str  # "gptq" (v1: zero - 1 stored) or "gptq_v2"
    desc_act: bool
    static_groups: bool
    sym: Optional[bool]
    damp_percent: Optional[float]
    dataset: Optional[str]
    lm_head: bool  # the config says the LM head is quantized (the tensors decide)

    def group(self, in_features: int) -> int:
        """Input columns per scale for a layer with ``in_features`` inputs."""
        return in_features if self.group_size == -1 else self.group_size


def _quantization_config(hf_config: dict[str, Any], folder: Optional[Path]) -> Optional[dict]:
    qc = hf_config.get("quantization_config")
    if qc is None and folder is not None and (folder / _AUTOGPTQ_CONFIG).is_file():
        # AutoGPTQ's own file, next to a config.json that does not repeat it.
        path = folder / _AUTOGPTQ_CONFIG
        try:
            raw = path.read_bytes()
        except OSError as e:
            raise ConfigError(f"{path} cannot be read ({e}); download it again") from e
        qc = load_json(raw, lambda why: ConfigError(f"{path} is {why}; download it again"))
        if isinstance(qc, dict):
            qc = {"quant_method": "gptq", **qc}
    if qc is None:
        return None
    if not isinstance(qc, dict):
        raise ConfigError(
            f"config.json's quantization_config is a {type(qc).__name__}, expected an object"
        )
    return qc


def gptq_settings(
    hf_config: dict[str, Any], folder: Optional[Path] = None
) -> Optional[GPTQSettings]:
    """The GPTQ settings of a HF config.json (None: not a quantized checkpoint).

    Raises ConfigError for other quantization methods and for GPTQ settings the device
    cannot run (bits, group size, a GPU-kernel checkpoint format). ``folder`` lets an
    AutoGPTQ ``quantize_config.json`` stand in for a missing ``quantization_config``."""
    qc = _quantization_config(hf_config, Path(folder) if folder is not None else None)
    if qc is None:
        return None
    method = qc.get("quant_method")
    if method is None and "bits" in qc:
        method = "gptq"  # AutoGPTQ-era configs name no method
    if not isinstance(method, str) or method.lower() != "gptq":
        raise ConfigError(
            f"quantization method {method!r} is not supported; hyperdex imports GPTQ "
            "checkpoints (quant_method 'gptq', 4 or 8 bits, symmetric, groups in input order). "
            "Use the model's unquantized fp16/bf16 checkpoint and let hyperdex quantize it "
            "(AutoCompiler().compile(..., quantization='w4a16' or 'w8a16'))"
        )

    def field(key: str, default: Any) -> Any:
        return qc.get(key, default) if qc.get(key) is not None else default

    bits = field("bits", None)
    if isinstance(bits, bool) or not isinstance(bits, int):
        raise ConfigError(
            f"GPTQ quantization_config has bits={bits!r}; expected an integer (4 or 8)"
        )
    if bits not in SUPPORTED_BITS:
        raise ConfigError(
            f"GPTQ checkpoint with bits={bits} is not supported: the LPU runs 4- or 8-bit "
            f"weights; use a 4- or 8-bit GPTQ checkpoint, or {_REQUANTIZE}"
        )
    group_size = field("group_size", -1)
    if (
        isinstance(group_size, bool)
        or not isinstance(group_size, int)
        or not (group_size == -1 or 0 < group_size <= _MAX_GROUP_SIZE)
    ):
        raise ConfigError(
            f"GPTQ quantization_config has group_size={group_size!r}; expected a positive "
            f"integer (at most {_MAX_GROUP_SIZE}) or -1 (one group per row)"
        )
    fmt = field("checkpoint_format", field("format", "gptq"))
    if not isinstance(fmt, str) or fmt.lower() not in GPTQ_FORMATS:
        raise ConfigError(
            f"GPTQ checkpoint_format {fmt!r} is not supported: hyperdex reads the plain GPTQ "
            f"layouts {', '.join(map(repr, GPTQ_FORMATS))} (qweight/qzeros/scales/g_idx), not "
            "weights repacked for a GPU kernel; use the model's plain 'gptq' checkpoint"
        )
    sym = qc.get("sym")
    damp = qc.get("damp_percent")
    dataset = qc.get("dataset")
    return GPTQSettings(
        bits=bits,
        group_size=group_size,
        checkpoint_format=fmt.lower(),
        desc_act=bool(field("desc_act", False)),
        static_groups=bool(field("static_groups", False)),
        sym=None if sym is None else bool(sym),
        damp_percent=_number_or_none(damp),
        dataset=dataset if isinstance(dataset, str) else None,
        lm_head=bool(field("lm_head", False)),
    )


def _number_or_none(v: Any) -> Optional[float]:
    """A finite number of the config as a float; None for anything else (informative only)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    try:
        f = float(v)
    except OverflowError:  # an integer past the float range
        return None
    return f if math.isfinite(f) else None


# -- bit packing (the GPTQ layout; exported for tests and tools) -----------------------------


def _per_word(bits: int) -> int:
    return 32 // bits


def unpack_along_input(qweight: np.ndarray, bits: int) -> np.ndarray:
    """GPTQ ``qweight`` [in / p, out] -> codes u8 [out, in] (C-contiguous)."""
    per, mask = _per_word(bits), (1 << bits) - 1
    words = np.ascontiguousarray(qweight).view(np.uint32)
    rows, out = words.shape
    codes = np.empty((out, rows, per), dtype=np.uint8)
    wt = words.T  # [out, in / p]
    for j in range(per):
        codes[:, :, j] = (wt >> np.uint32(bits * j)) & np.uint32(mask)
    return codes.reshape(out, rows * per)


def pack_along_input(codes: np.ndarray, bits: int) -> np.ndarray:
    """codes [out, in] -> GPTQ ``qweight`` int32 [in / p, out] (the inverse of
    `unpack_along_input`)."""
    per = _per_word(bits)
    out, cols = codes.shape
    c = codes.astype(np.uint32).reshape(out, cols // per, per)
    words = np.zeros((out, cols // per), dtype=np.uint32)
    for j in range(per):
        words |= c[:, :, j] << np.uint32(bits * j)
    return np.ascontiguousarray(words.T).view(np.int32)


def unpack_along_output(qzeros: np.ndarray, bits: int, out: int) -> np.ndarray:
    """GPTQ ``qzeros`` [G, ceil(out / p)] -> stored values [G, out] (int64; v1 still -1)."""
    per, mask = _per_word(bits), (1 << bits) - 1
    words = np.ascontiguousarray(qzeros).view(np.uint32)
    groups, cols = words.shape
    vals = np.empty((groups, cols, per), dtype=np.int64)
    for j in range(per):
        vals[:, :, j] = (words >> np.uint32(bits * j)) & np.uint32(mask)
    return vals.reshape(groups, cols * per)[:, :out]


def pack_along_output(values: np.ndarray, bits: int) -> np.ndarray:
    """values [G, out] (each in [0, 2^bits)) -> GPTQ ``qzeros`` int32 [G, ceil(out / p)]."""
    per = _per_word(bits)
    groups, out = values.shape
    cols = -(-out // per)
    padded = np.zeros((groups, cols * per), dtype=np.uint32)
    padded[:, :out] = values
    padded = padded.reshape(groups, cols, per)
    words = np.zeros((groups, cols), dtype=np.uint32)
    for j in range(per):
        words |= padded[:, :, j] << np.uint32(bits * j)
    return words.view(np.int32)


def dequantize(
    codes: np.ndarray, scales: np.ndarray, bits: int, group_size: Optional[int] = None
) -> np.ndarray:
    """The device's dequantized fp16 weights: ``fp16((q - 2^(b-1)) * scale)`` per element,
    ``codes`` u8 [out, in], ``scales`` f16 [out, G] for groups of ``group_size`` consecutive
    inputs (the last one shorter when it does not divide ``in``; default ``in / G``). The
    product is exact in fp32 (a b-bit integer times an fp16), then rounded once."""
    out, cols = codes.shape
    group = cols // scales.shape[1] if group_size in (None, -1) else int(group_size)
    centered = codes.astype(np.float32) - float(1 << (bits - 1))
    per_col = np.repeat(scales.astype(np.float32), group, axis=1)[:, :cols]
    return (centered * per_col).astype(np.float16)


# -- the import -----------------------------------------------------------------------------


class _PlanEntry(Protocol):
    """What the converter plans per HF tensor (hyperdex.tools.converter._Planned)."""

    hf_name: str
    canonical: tuple[str, ...]
    transform: str


@dataclass(frozen=True)
class _Quantized:
    """One quantized HF linear and the canonical tensors it becomes."""

    prefix: str  # HF name without ".qweight"
    canonical: str  # e.g. "blk.0.attn_q" (no ".weight")
    out_features: int
    in_features: int
    has_g_idx: bool


@dataclass(frozen=True)
class _Plain:
    """Stands in for a converter plan entry (the tied-LM-head case adds one)."""

    hf_name: str
    canonical: tuple[str, ...]
    transform: str = "copy"


class GPTQImporter:
    """Reads a GPTQ checkpoint's quantized linears as hyperdex codes + scales.

    The converter calls `check` (while validating the checkpoint), `tensors` (while writing
    the model file) and `quantization_section` (for hyperdex_config.json)."""

    def __init__(
        self,
        settings: GPTQSettings,
        hf_architecture: str,
        family: str,
        lm_head_shape: tuple[int, int],
    ) -> None:
        if family not in IMPORT_FAMILIES:
            raise ConfigError(
                f"GPTQ checkpoints of {hf_architecture} are not supported: hyperdex imports "
                "GPTQ weights of architectures with one tensor per projection (Llama, Mistral, "
                f"Qwen2, OPT), not fused ones such as GPT-2's c_attn; {_REQUANTIZE}"
            )
        self.settings = settings
        self.hf_architecture = hf_architecture
        self.lm_head_shape = lm_head_shape  # [vocab, embed_dim]: a tied head has no tensor
        self.entries: list[_Quantized] = []
        self._checked = False

    # -- validation ----------------------------------------------------------------------

    def check(
        self, ckpt: Any, plan: Sequence[_PlanEntry], shapes: dict[str, tuple[int, ...]]
    ) -> tuple[list[Any], set[str]]:
        """Splits the converter's plan: returns (the plan entries that stay fp16, the HF
        tensor names the quantized linears use). Validates every quantized linear's tensors
        (names, shapes, dtypes) and their zero points, g_idx and scales (small tensors, read
        whole); raises CheckpointError / ConfigError naming the tensor and what was expected.
        """
        present = set(ckpt.names())
        planned_names = {p.hf_name for p in plan}
        entries: list[_PlanEntry] = list(plan)
        has_head = any(_LM_HEAD in p.canonical for p in entries)
        if not has_head and "lm_head.qweight" in present:
            # Tied embeddings with a quantized head (GPTQModel lm_head=True): the head gets
            # its own quantized tensor; the embedding table stays fp16.
            entries.append(_Plain("lm_head.weight", (_LM_HEAD,)))

        fp16: list[Any] = []
        used: set[str] = set()
        quantized: list[_Quantized] = []
        unquantized: list[str] = []
        problems: list[str] = []
        for p in entries:
            target = p.canonical[0] if len(p.canonical) == 1 else None
            is_linear = any(_BLOCK_LINEAR.fullmatch(c) for c in p.canonical)
            prefix = p.hf_name[: -len(".weight")] if p.hf_name.endswith(".weight") else None
            quant_names = (
                [prefix + sfx for sfx in (".qweight", ".qzeros", ".scales", ".g_idx")]
                if prefix is not None
                else []
            )
            if not (is_linear or p.canonical == (_LM_HEAD,)) or prefix is None:
                fp16.append(p)
                continue
            if not any(n in present for n in quant_names):
                fp16.append(p)
                if is_linear:
                    unquantized.append(p.hf_name)
                continue
            if target is None or p.transform != "copy":
                raise ConfigError(
                    f"{p.hf_name} is a fused or transposed HF tensor ({p.transform}); GPTQ "
                    f"import supports one tensor per projection only; {_REQUANTIZE}"
                )
            shape = shapes.get(target)
            if shape is None:  # the tied LM head
                shape = self.lm_head_shape
            out, cols = shape
            entry = _Quantized(prefix, target[: -len(".weight")], out, cols, True)
            found = self._check_linear(ckpt, present, entry, problems)
            if found is None:
                continue
            quantized.append(found)
            used.update(n for n in quant_names if n in present)
            bias = prefix + ".bias"
            if bias in present and bias not in planned_names:
                # Some GPTQ exporters give every quantized linear a bias buffer; one the model
                # does not have must be zero to be dropped.
                data = ckpt.load(bias)
                if data.shape != (out,) or np.any(data != 0):
                    problems.append(
                        f"{bias} is a non-zero bias, but {self.hf_architecture} with this "
                        "config.json has no bias there"
                    )
                used.add(bias)
        if problems:
            raise CheckpointError(
                f"the GPTQ tensors disagree with config.json: {'; '.join(problems[:5])}"
                + ("" if len(problems) <= 5 else f"; and {len(problems) - 5} more")
            )
        if not any(_BLOCK_LINEAR.fullmatch(q.canonical + ".weight") for q in quantized):
            raise CheckpointError(
                "config.json says the checkpoint is GPTQ-quantized, but it has no "
                "<layer>.qweight tensors for the block projections (e.g. "
                f"{unquantized[0] if unquantized else 'q_proj'}): is config.json the one that "
                "belongs to these weights?"
            )
        if unquantized:
            raise ConfigError(
                f"this GPTQ checkpoint leaves {len(unquantized)} block projection(s) unquantized "
                f"(e.g. {', '.join(unquantized[:3])}); hyperdex runs every block projection with "
                f"the same weight format, so it imports only fully quantized blocks; "
                f"{_REQUANTIZE}"
            )
        self.entries = quantized
        self._checked = True
        return fp16, used

    def _check_linear(
        self, ckpt: Any, present: set[str], e: _Quantized, problems: list[str]
    ) -> Optional[_Quantized]:
        s = self.settings
        bits, per = s.bits, _per_word(s.bits)
        out, cols = e.out_features, e.in_features
        group = s.group(cols)
        what = f"{e.prefix} ({e.canonical}, [{out}, {cols}] with bits={bits})"
        if cols % per:
            problems.append(f"{what}: {cols} inputs are not a multiple of {per} codes per int32")
            return None
        if group % 2:
            raise ConfigError(
                f"group_size={s.group_size} of {e.prefix} is odd: the device packs int4 codes "
                f"two per byte within a group; {_REQUANTIZE}"
            )
        groups = -(-cols // group)  # a shorter last group when group_size does not divide
        want = {
            ".qweight": ((cols // per, out), _PACKED_DTYPES),
            ".qzeros": ((groups, -(-out // per)), _PACKED_DTYPES),
            ".scales": ((groups, out), _SCALE_DTYPES),
            ".g_idx": ((cols,), _INT_DTYPES),
        }
        ok = True
        for sfx, (shape, dtypes) in want.items():
            name = e.prefix + sfx
            if name not in present:
                if sfx == ".g_idx" and not s.desc_act:
                    continue  # some exporters drop g_idx when it is the identity grouping
                problems.append(f"{name} is missing (expected shape {list(shape)})")
                ok = False
                continue
            got = tuple(ckpt.shape(name))
            if got != shape:
                hint = ""
                if sfx in (".scales", ".qzeros") and got[1:] == shape[1:] and got[0] > 0:
                    hint = (
                        f": {got[0]} groups means group size {cols // got[0]}, config.json "
                        f"says {s.group_size}"
                    )
                elif sfx == ".qweight" and got[1:] == shape[1:] and got[0] > 0:
                    hint = f": that is {got[0] * 32 // cols} bits, config.json says {bits}"
                problems.append(f"{name} has shape {list(got)}, expected {list(shape)}{hint}")
                ok = False
            dtype = ckpt.dtype(name)
            if dtype not in dtypes:
                problems.append(f"{name} has dtype {dtype}, expected {' or '.join(dtypes)}")
                ok = False
        if not ok:
            return None
        self._check_zeros(ckpt, e, groups)
        has_g_idx = e.prefix + ".g_idx" in present
        if has_g_idx:
            self._check_g_idx(ckpt.load(e.prefix + ".g_idx"), e, group)
        self._scales(ckpt, e)  # finite, exact in fp16
        return _Quantized(e.prefix, e.canonical, out, cols, has_g_idx)

    def _check_zeros(self, ckpt: Any, e: _Quantized, groups: int) -> None:
        s = self.settings
        stored = unpack_along_output(ckpt.load(e.prefix + ".qzeros"), s.bits, e.out_features)
        zeros = stored + 1 if s.checkpoint_format == "gptq" else stored
        mid = 1 << (s.bits - 1)
        bad = zeros != mid
        if not bad.any():
            return
        count = int(np.count_nonzero(bad))
        g, o = (int(v) for v in np.argwhere(bad)[0])
        fmt = (
            "v1 (checkpoint_format 'gptq', zero - 1 stored)"
            if s.checkpoint_format == "gptq"
            else "v2 ('gptq_v2')"
        )
        why = " (config.json says sym=false: asymmetric quantization)" if s.sym is False else ""
        raise ConfigError(
            f"{e.prefix}.qzeros holds zero points other than {mid} in {count} of "
            f"{zeros.size} groups (group {g} of output {o}: {int(zeros[g, o])}, read as format "
            f"{fmt}){why}. The LPU's weight format is symmetric with the fixed zero point "
            f"2^(bits-1) = {mid} and has no zero points, so this checkpoint cannot run as it is "
            f"(re-quantizing it would change its weights); use a sym=True GPTQ checkpoint, or "
            f"{_REQUANTIZE}"
        )

    def _check_g_idx(self, g_idx: np.ndarray, e: _Quantized, group: int) -> None:
        cols = e.in_features
        groups = -(-cols // group)
        expected = np.arange(cols, dtype=np.int64) // group
        g = g_idx.astype(np.int64)
        if np.array_equal(g, expected):
            return
        counts = np.bincount(g, minlength=groups) if g.min() >= 0 else None
        if counts is not None and g.max() < groups and np.all(counts == group):
            first = int(np.argmax(g != expected))
            raise ConfigError(
                f"{e.prefix}.g_idx is permuted (act_order / desc_act=True without static "
                f"groups: input {first} is in group {int(g[first])}, not "
                f"{int(expected[first])}). The LPU streams each group's scale followed by its "
                "consecutive inputs, and repacking exactly would mean permuting the layer's "
                "input features (the residual stream every layer shares), so hyperdex cannot "
                "run this checkpoint; re-export it with desc_act=False or static_groups=True, "
                f"or {_REQUANTIZE}"
            )
        raise CheckpointError(
            f"{e.prefix}.g_idx does not assign the {cols} inputs to {groups} groups of "
            f"{group} (group_size={self.settings.group_size} in config.json); the checkpoint "
            "and its config disagree: download it again or fix quantization_config"
        )

    def _scales(self, ckpt: Any, e: _Quantized) -> np.ndarray:
        name = e.prefix + ".scales"
        data = ckpt.load(name)  # float32 for every float dtype, exact
        if not np.all(np.isfinite(data)):
            raise CheckpointError(
                f"{name} holds NaN/Inf scales; the checkpoint is corrupt: download it again"
            )
        half = data.astype(np.float16)
        if not np.array_equal(half.astype(np.float32), data):
            bad = int(np.count_nonzero(half.astype(np.float32) != data))
            raise ConfigError(
                f"{name} has {bad} scale(s) that fp16, the device's scale format, cannot hold "
                f"exactly (dtype {ckpt.dtype(name)}); importing would change the weights: "
                f"use an fp16 GPTQ checkpoint, or {_REQUANTIZE}"
            )
        return np.ascontiguousarray(half.T)

    # -- conversion ----------------------------------------------------------------------

    def tensors(
        self, ckpt: Any, on_tensor: Optional[Callable[[], None]] = None
    ) -> Iterator[tuple[str, np.ndarray]]:
        """Yields ``(X.weight, codes u8 [out, in])`` and ``(X.scales, f16 [out, G])`` per
        quantized linear, in checkpoint order; ``on_tensor`` is called after each linear."""
        if not self._checked:
            raise RuntimeError("GPTQImporter.check must run before tensors")
        for e in self.entries:
            codes = unpack_along_input(ckpt.load(e.prefix + ".qweight"), self.settings.bits)
            yield e.canonical + ".weight", codes
            yield e.canonical + ".scales", self._scales(ckpt, e)
            if on_tensor is not None:
                on_tensor()

    @property
    def quantize_lm_head(self) -> bool:
        return any(e.canonical + ".weight" == _LM_HEAD for e in self.entries)

    def quantization_section(self) -> dict[str, Any]:
        """hyperdex_config.json's ``quantization`` for the imported checkpoint."""
        s = self.settings
        return {
            "method": "gptq-import",
            "bits": s.bits,
            "group_size": s.group_size,
            "sym": True,
            "desc_act": s.desc_act,
            "static_groups": s.static_groups,
            "damp_percent": s.damp_percent,
            "quantize_lm_head": self.quantize_lm_head,
            "dataset": s.dataset if s.dataset is not None else "unknown",
            "nsamples": None,
            "seqlen": None,
            "checkpoint_format": s.checkpoint_format,
        }


def gptq_importer(
    hf_config: dict[str, Any],
    folder: Optional[Path],
    hf_architecture: str,
    family: str,
    lm_head_shape: tuple[int, int],
) -> Optional[GPTQImporter]:
    """The converter's entry point: None for an unquantized checkpoint, else the importer
    (ConfigError for a quantization the device cannot run)."""
    settings = gptq_settings(hf_config, folder)
    if settings is None:
        return None
    return GPTQImporter(settings, hf_architecture, family, lm_head_shape)
