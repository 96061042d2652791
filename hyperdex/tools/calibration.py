"""Quantizing a converted model: RTN, or GPTQ calibrated on hyperdex's own engine.

GPTQ needs, for every linear layer, the Hessian ``H = 2/n sum x x^T`` of the inputs that
layer sees. They come from the emulator running the fp16 model, not from PyTorch:

1. The fp16 model is laid out for one emulated device (a temporary compile whose KV cache
   holds one calibration sample) and the prefill program's layers are located: layer ``l``
   is the instruction range from its first instruction that touches a ``blk.l.*`` region to
   the next layer's first. A layer depends on nothing but the residual stream entering it
   (one on-chip buffer) and its own KV cache, so it can be run alone.
2. The embeddings run once per sample chunk; the residual stream is kept (fp16, host memory).
3. Layer by layer, and within a layer tap by tap (GPTQModel's ``true_sequential``): every
   chunk of every sample runs up to the next quantizable MATMUL, whose input rows join that
   MATMUL's Hessian; GPTQ quantizes its weights (in C++); their dequantized values are
   written over the fp16 ones in the emulator's HBM (a quantized MATMUL is defined as the
   fp16 MATMUL over those values, docs/isa.md) before any chunk runs on. Between taps a
   chunk is parked as the on-chip bytes the rest of the layer still reads, so each chunk
   runs through each layer once, and the attention output, the MLP and the next layer are
   calibrated on what the quantized projections before them produce.

Memory stays bounded by one layer: its Hessians, its weights, the residual stream of the
calibration tokens and the parked chunks. The quantized tensors are streamed into the output
file layer by layer as they are made.
"""

from __future__ import annotations

import logging
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import numpy as np

from .. import _core
from ..arch.record import as_record
from ..arch.spec import model_spec
from ..compiled.folder import TOKENIZER_FILES
from ..compiled.record import HYPERDEX_CONFIG_NAME, HYPERDEX_MODEL_NAME, load_converted
from ..compiled.session import open_session
from ..errors import ConfigError
from ..formats import ModelFile, write_model_file
from ..formats.atomic import temp_path, write_json_atomic
from ..presets import device_preset, load_preset
from .lowering import memory_map_dict
from .progress import progress_bar
from .quantization import QuantizationConfig

log = logging.getLogger("hyperdex")

# Canonical linear weights the device can stream quantized (docs/formats.md).
_LAYER_LINEAR = re.compile(
    r"^blk\.(\d+)\.(attn_q|attn_k|attn_v|attn_output|ffn_gate|ffn_up|ffn_down)(\.\d+)?\.weight$"
)  # (\.\d+)?: a mixture's expert (blk.3.ffn_gate.7.weight)
_LAYER_REGION = re.compile(r"^blk\.(\d+)\.")
HEAD = "output.weight"


def scales_name(weight: str) -> str:
    """``blk.3.attn_q.weight`` -> ``blk.3.attn_q.scales``."""
    return weight[: -len(".weight")] + ".scales"


def quantized_names(names: Sequence[str], lm_head: bool) -> list[str]:
    """The canonical weights a quantized model stores as codes, in file order."""
    out = [n for n in names if _LAYER_LINEAR.match(n)]
    if lm_head:
        out.append(HEAD)  # with tied embeddings the head gets a quantized copy of its own
    return out


def _head_weight(model_file: ModelFile) -> np.ndarray:
    return model_file[HEAD] if HEAD in model_file else model_file["tok_embd.weight"]


# -- calibration data ------------------------------------------------------------------------


def calibration_ids(
    qconfig: QuantizationConfig, tokenizer_dir: Optional[Path], vocab_size: int
) -> list[list[int]]:
    """The calibration samples as token ids (``nsamples`` windows of ``seqlen`` tokens)."""
    from .. import data

    dataset = qconfig.dataset
    if dataset is None or isinstance(dataset, str):
        tokenizer = _tokenizer(tokenizer_dir, dataset is None)
        samples = data.calibration_samples(
            tokenizer, qconfig.nsamples, qconfig.seqlen, seed=qconfig.seed, text=dataset
        )
    elif isinstance(dataset[0], int):
        samples = data.sample_windows(
            list(dataset),
            qconfig.nsamples,
            qconfig.seqlen,
            qconfig.seed,
            what="the calibration token ids",
        )
    else:
        samples = [list(s)[: qconfig.seqlen] for s in dataset[: qconfig.nsamples]]
    for s in samples:
        bad = [t for t in s if not 0 <= t < vocab_size]
        if bad:
            raise ConfigError(
                f"calibration token id {bad[0]} is outside the model's vocabulary "
                f"(0..{vocab_size - 1}); tokenize the data with this model's tokenizer"
            )
    return samples


def _tokenizer(folder: Optional[Path], default_text: bool) -> Any:
    if folder is None or not any((folder / f).is_file() for f in TOKENIZER_FILES):
        what = "the shipped calibration text" if default_text else "a calibration text"
        raise ConfigError(
            f"the model has no tokenizer, so {what} cannot be tokenized; pass "
            "QuantizationConfig(dataset=<token ids>) or add the tokenizer files to the model"
        )
    import transformers

    return transformers.AutoTokenizer.from_pretrained(str(folder), local_files_only=True)


# -- the emulated device the calibration runs on ---------------------------------------------


class _CalibrationDevice:
    """The fp16 model on one emulated device, with its prefill program cut into layers."""

    def __init__(
        self,
        config: dict[str, Any],
        model_file: ModelFile,
        preset: dict[str, Any],
        max_length: int,
        workdir: Path,
    ) -> None:
        fp16 = dict(config, quantization=None)
        spec = model_spec(fp16)
        # Calibration is not bound by the board's capacity: give each channel what it needs.
        roomy = dict(preset, hbm_channel_bytes=max(int(preset["hbm_channel_bytes"]), 1 << 40))
        core_preset = device_preset(roomy)
        max_tokens = _core.choose_max_tokens(spec, core_preset, max_length)
        plan = _core.plan_memory(spec, core_preset, max_length, max_tokens)
        (workdir / "param").mkdir(parents=True)
        (workdir / "inst").mkdir()
        tensors = {name: model_file[name] for name in model_file.names}
        files = _core.write_params(spec, plan, tensors, str(workdir / "param"))
        del tensors
        records = [
            {"file": f"param/{Path(f.path).name}", "bytes": f.bytes, "crc32": f.crc32}
            for f in files
        ]
        prefill, decode = _core.generate_programs(spec, plan, _core.PassOptions(), 1)
        prefill.save(str(workdir / "inst" / "prefill.bin"))
        decode.save(str(workdir / "inst" / "decode.bin"))
        memory_map = memory_map_dict(plan, roomy, 1, records)
        self.session, _ = open_session(workdir, memory_map, "emu")
        self.plan = plan
        self.chunk = int(prefill.max_tokens)
        self.lmem_bytes = int(prefill.lmem_bytes)
        self.io_ids = int(plan.io.base + plan.io.ids_offset)
        self.code = prefill.instructions()
        self.regions = {int(r.base): r for r in plan.regions}
        model = as_record(config["model"])
        self.width = model.hidden_size
        self._live: dict[tuple[int, int, int], list[tuple[int, int]]] = {}
        self._find_layers(model.num_layers)

    def region_of(self, inst: dict[str, Any], key: str = "w0") -> Optional[Any]:
        base, _, rows = inst[key]
        return self.regions.get(int(base)) if rows else None

    def _find_layers(self, num_layers: int) -> None:
        first: dict[int, int] = {}
        last: dict[int, int] = {}
        for i, inst in enumerate(self.code):
            if inst["op"] == "PREFETCH":  # fetches ahead; belongs to no layer's values
                continue
            for key in ("w0", "w1"):
                region = self.region_of(inst, key)
                m = _LAYER_REGION.match(region.name) if region is not None else None
                if m:
                    layer = int(m.group(1))
                    first.setdefault(layer, i)
                    last[layer] = i
        if sorted(first) != list(range(num_layers)):
            raise ConfigError("the prefill program does not hold every layer; recompile")
        self.starts = [first[layer] for layer in range(num_layers)]
        # The last layer runs up to the first instruction after it that streams weights of
        # its own (the final norm or the head): instructions without weights after its last
        # blk.* one (a sandwich norm's or a mixture's ADD into the residual) are still its.
        end = last[num_layers - 1] + 1
        while end < len(self.code) and (
            self.code[end]["op"] == "PREFETCH"
            or all(self.region_of(self.code[end], key) is None for key in ("w0", "w1"))
        ):
            end += 1
        self.ends = self.starts[1:] + [end]
        # The residual stream entering a layer: what its first instruction reads.
        residual = {tuple(self.code[s]["a"]) for s in self.starts}
        if len(residual) != 1:
            raise ConfigError("the layers read their input from different buffers; recompile")
        space, self.residual_offset, self.residual_stride = next(iter(residual))
        if space != "lmem":
            raise ConfigError("the residual stream is not in on-chip memory; recompile")
        self.head = next(
            i
            for i, inst in enumerate(self.code)
            if inst["op"] == "MATMUL" and i >= self.ends[-1] and inst["flags"] & 8  # OUT_F32
        )

    # The rows an operand holds, as fp16 [n, width].
    def read_rows(self, operand: Sequence[Any], n: int, width: int) -> np.ndarray:
        _, offset, stride = operand
        nbytes = ((n - 1) * int(stride) + width) * 2
        raw = self.session.read_lmem(int(offset), nbytes).view(np.float16)
        full = np.zeros(n * int(stride), np.float16)
        full[: raw.size] = raw
        return full.reshape(n, int(stride))[:, :width]

    def read_picks(self, operand: Sequence[Any], n: int) -> np.ndarray:
        """The expert each of ``n`` token rows picked: the int32 of the (expert, weight) pair
        an expert MATMUL's ``c`` points at (stride in 4-byte elements)."""
        _, offset, stride = operand
        raw = self.session.read_lmem(int(offset), ((n - 1) * int(stride) + 2) * 4)
        return raw.view(np.int32)[:: int(stride)][:n].copy()

    def write_rows(self, operand: Sequence[Any], rows: np.ndarray) -> None:
        _, offset, stride = operand
        n, width = rows.shape
        if int(stride) == width:
            self.session.write_lmem(int(offset), np.ascontiguousarray(rows).view(np.uint8))
            return
        for t in range(n):
            self.session.write_lmem(int(offset) + 2 * t * int(stride), rows[t].view(np.uint8))

    @property
    def residual(self) -> tuple[str, int, int]:
        return ("lmem", self.residual_offset, self.residual_stride)

    def run(self, start_pos: int, n: int, begin: int, end: int) -> None:
        if end > begin:
            self.session.run_range("prefill", start_pos, n, begin, end)

    # -- parking a run between two instructions of a layer --

    def _extent(self, operand: Sequence[Any], elem: int = 2) -> Optional[tuple[int, int]]:
        """The on-chip bytes an operand's token rows may touch (all ``chunk`` rows)."""
        space, offset, stride = operand
        if space != "lmem" or not int(stride):
            return None
        return int(offset), min(int(offset) + elem * int(stride) * self.chunk, self.lmem_bytes)

    def _reads(self, inst: dict[str, Any]) -> list[tuple[int, int]]:
        op, flags = inst["op"], int(inst["flags"])
        operands = []
        if op not in ("PREFETCH", "EMBED"):
            operands.append(self._extent(inst["a"], 4 if op in ("ARGMAX", "TOPK") else 2))
        if int(inst["i2"]):  # an expert MATMUL's pick
            operands.append(self._extent(inst["c"], 4))
        if op in ("ADD", "MUL", "KVSTORE") or (op == "MATMUL" and flags & 4):  # HAS_RESIDUAL
            operands.append(self._extent(inst["b"]))
        if op == "ROPE" or (op == "EMBED" and flags & 1):  # in place / ACCUMULATE
            operands.append(self._extent(inst["dst"]))
        return [e for e in operands if e is not None]

    def _writes(self, inst: dict[str, Any]) -> list[tuple[int, int]]:
        op, flags = inst["op"], int(inst["flags"])
        if op in ("PREFETCH", "KVSTORE"):
            return []
        wide = op == "TOPK" or (op == "MATMUL" and flags & 8)  # picks, OUT_F32
        out = [self._extent(inst["dst"], 4 if wide else 2)]
        if op == "MATMUL" and flags & 64:  # ARGMAX into b
            out.append(self._extent(inst["b"], 4))
        return [e for e in out if e is not None]

    def live_ranges(self, begin: int, at: int, end: int) -> list[tuple[int, int]]:
        """The on-chip byte ranges a run of layer instructions ``[begin, end)`` stopped at
        ``at`` still needs: written since the layer began (or the residual stream entering
        it) and read by an instruction in ``[at, end)``. A layer reads nothing else on chip."""
        key = (begin, at, end)
        if key not in self._live:
            made = [e for i in range(begin, at) for e in self._writes(self.code[i])]
            made.append(self._extent(self.residual))  # lmem: checked in _find_layers
            needed = [e for i in range(at, end) for e in self._reads(self.code[i])]
            parts = sorted(
                (max(a0, b0), min(a1, b1))
                for a0, a1 in made
                for b0, b1 in needed
                if max(a0, b0) < min(a1, b1)
            )
            merged: list[tuple[int, int]] = []
            for lo, hi in parts:
                if merged and lo <= merged[-1][1]:
                    merged[-1] = (merged[-1][0], max(merged[-1][1], hi))
                else:
                    merged.append((lo, hi))
            self._live[key] = merged
        return self._live[key]

    def park(self, ranges: list[tuple[int, int]]) -> list[tuple[int, np.ndarray]]:
        """A copy of the given on-chip bytes (a run stopped between two instructions)."""
        return [(lo, self.session.read_lmem(lo, hi - lo)) for lo, hi in ranges]

    def resume(self, parked: Optional[list[tuple[int, np.ndarray]]], residual: np.ndarray) -> None:
        """Puts a parked run back on chip; one not parked yet starts from the residual rows."""
        if parked is None:
            self.write_rows(self.residual, residual)
            return
        for offset, data in parked:
            self.session.write_lmem(offset, data)

    def write_weights(self, region: Any, first_row: int, values: np.ndarray) -> None:
        """Overwrites rows [first_row, first_row + len(values)) of a striped fp16 region."""
        channels = self.plan.num_channels
        rows, cols = values.shape
        for r0 in range(first_row, first_row + rows):  # one channel per residue class
            if r0 >= first_row + channels:
                break
            idx = np.arange(r0, first_row + rows, channels)
            channel = r0 % channels
            slot = r0 // channels  # consecutive rows of a channel are row_bytes apart
            block = np.zeros((len(idx), int(region.row_bytes) // 2), np.float16)
            block[:, :cols] = values[idx - first_row]
            offset = int(region.base) + slot * int(region.row_bytes)
            self.session.write_hbm(channel, offset, block.view(np.uint8).reshape(-1))


# -- quantization ----------------------------------------------------------------------------


def _quantize_one(
    weight: np.ndarray, hessian: Optional[np.ndarray], qconfig: QuantizationConfig, name: str
) -> dict[str, Any]:
    w = np.ascontiguousarray(weight, dtype=np.float32)
    if hessian is None:
        return _core.quant.rtn(
            w, bits=qconfig.bits, group_size=qconfig.group_size, sym=True, mse=float(qconfig.mse)
        )
    return _core.quant.gptq(
        w,
        hessian,
        bits=qconfig.bits,
        group_size=qconfig.group_size,
        sym=True,
        desc_act=qconfig.desc_act,
        static_groups=qconfig.static_groups,
        act_group_aware=qconfig.act_group_aware,
        damp_percent=float(qconfig.damp_percent),
        mse=float(qconfig.mse),
        name=name,
    )


def quantize_tensors(
    config: dict[str, Any],
    model_file: ModelFile,
    qconfig: QuantizationConfig,
    preset: dict[str, Any],
    tokenizer_dir: Optional[Path] = None,
    workdir: Optional[Path] = None,
    progress: bool = True,
    stats: Optional[dict[str, Any]] = None,
) -> Iterator[tuple[str, np.ndarray]]:
    """The quantized model's tensors, in file order: every fp16 tensor that stays fp16, then
    each layer's codes and scales as soon as that layer is quantized."""
    names = quantized_names(model_file.names, qconfig.quantize_lm_head)
    stats = stats if stats is not None else {}
    quantized = set(names)
    for name in model_file.names:
        if name not in quantized:
            yield name, model_file[name]

    def result(name: str, r: dict[str, Any]) -> Iterator[tuple[str, np.ndarray]]:
        stats.setdefault("loss", {})[name] = float(r.get("loss", 0.0))
        yield name, np.ascontiguousarray(r["codes"], dtype=np.uint8)
        yield scales_name(name), np.ascontiguousarray(r["scales"], dtype=np.float16)

    if qconfig.method == "rtn":
        with progress_bar(len(names), "quantize (rtn)", "tensor", enabled=progress) as bar:
            for name in names:
                w = _head_weight(model_file) if name == HEAD else model_file[name]
                yield from result(name, _quantize_one(w, None, qconfig, name))
                bar.update(1)
        return

    vocab = as_record(config["model"]).vocab_size
    samples = calibration_ids(qconfig, tokenizer_dir, vocab)
    stats["calibration_tokens"] = sum(len(s) for s in samples)
    own_dir = workdir is None
    work = Path(tempfile.mkdtemp(prefix="hyperdex-calib-")) if own_dir else Path(workdir)
    try:
        device = _CalibrationDevice(
            config, model_file, preset, max(len(s) for s in samples), work / "device"
        )
        yield from _gptq_layers(device, model_file, qconfig, names, samples, progress, stats)
    finally:
        if own_dir:
            shutil.rmtree(work, ignore_errors=True)
        else:
            shutil.rmtree(work / "device", ignore_errors=True)


def _gptq_layers(
    device: _CalibrationDevice,
    model_file: ModelFile,
    qconfig: QuantizationConfig,
    names: list[str],
    samples: list[list[int]],
    progress: bool,
    stats: dict[str, Any],
) -> Iterator[tuple[str, np.ndarray]]:
    quantized = set(names)
    chunk = device.chunk
    # (sample, chunk start, token ids) in the order a layer must see them: a chunk attends
    # to the KV rows its sample's earlier chunks wrote into this layer's cache.
    pieces = [
        (s, p, ids[p : p + chunk])
        for s, ids in enumerate(samples)
        for p in range(0, len(ids), chunk)
    ]
    width = device.width
    t0 = time.perf_counter()
    hidden: list[np.ndarray] = []
    for _, pos, ids in pieces:  # the embeddings
        device.session.write_hbm(0, device.io_ids, np.asarray(ids, np.int32).view(np.uint8))
        device.run(pos, len(ids), 0, device.starts[0])
        hidden.append(device.read_rows(device.residual, len(ids), width).copy())

    num_layers = len(device.starts)
    stages = num_layers + (1 if HEAD in quantized else 0)
    timings: list[float] = []
    with progress_bar(stages, "quantize (gptq)", "layer", enabled=progress) as bar:
        for layer in range(stages):
            t = time.perf_counter()
            is_head = layer == num_layers
            begin = device.ends[-1] if is_head else device.starts[layer]
            end = device.head if is_head else device.ends[layer]
            # The MATMULs of this stage whose weights are quantized, with their sources; the
            # expert MATMULs of one mixture region (one per pick) form one tap.
            taps: list[tuple[list[int], Any, list[str]]] = []
            if is_head:
                taps.append(([device.head], device.region_of(device.code[device.head]), [HEAD]))
            else:
                for i in range(begin, end):
                    inst = device.code[i]
                    region = device.region_of(inst) if inst["op"] == "MATMUL" else None
                    if region is None or not any(s in quantized for s in region.sources):
                        continue
                    group = next((t for t in taps if t[1].base == region.base), None)
                    if group is not None and region.experts:
                        group[0].append(i)
                    else:
                        taps.append(([i], region, list(region.sources)))
            # Sequential within the layer too: every chunk runs up to a tap, the tap's Hessian
            # is summed, GPTQ quantizes it and its dequantized weights replace the fp16 ones
            # before any chunk runs on, so the next tap sees the quantized output. Between
            # taps a chunk is parked as the on-chip bytes the rest of the layer still reads.
            parked: list[Optional[list[tuple[int, np.ndarray]]]] = [None] * len(pieces)
            at = begin
            for group, region, sources in taps:
                if region.experts:
                    live = device.live_ranges(begin, group[0], end)
                    yield from _gptq_experts(
                        device,
                        model_file,
                        qconfig,
                        pieces,
                        hidden,
                        parked,
                        live,
                        at,
                        group,
                        region,
                        stats,
                    )
                    at = group[0]
                    continue
                i = group[0]
                live = device.live_ranges(begin, i, end)
                acc = _core.quant.HessianAccumulator(int(device.code[i]["k"]))
                for k, (_, pos, ids) in enumerate(pieces):
                    device.resume(parked[k], hidden[k])
                    device.run(pos, len(ids), at, i)
                    inst = device.code[i]
                    acc.add(device.read_rows(inst["a"], len(ids), int(inst["k"])))
                    parked[k] = device.park(live)
                at = i
                h = acc.hessian()
                del acc
                weights = [
                    _head_weight(model_file) if s == HEAD else model_file[s] for s in sources
                ]
                # GPTQ treats rows independently given H: the tensors sharing this input
                # (Q, K, V; gate, up) are quantized in one call, one factorization of H.
                r = _quantize_one(np.concatenate(weights), h, qconfig, region.name)
                del h
                stats.setdefault("loss", {})[region.name] = float(r["loss"])
                if not is_head:
                    deq = _core.quant.dequantize(
                        r["codes"], r["scales"], qconfig.bits, qconfig.group_size
                    )
                    device.write_weights(region, 0, deq)
                yield from _split_result(sources, weights, r)
            # The stream the next layer sees comes from the quantized layer.
            if not is_head and layer + 1 < stages:
                for k, (_, pos, ids) in enumerate(pieces):
                    device.resume(parked[k], hidden[k])
                    device.run(pos, len(ids), at, end)
                    hidden[k] = device.read_rows(device.residual, len(ids), width).copy()
            timings.append(time.perf_counter() - t)
            log.debug("quantized layer %d in %.2f s", layer, timings[-1])
            bar.update(1)
    stats["layer_seconds"] = timings
    stats["calibration_seconds"] = time.perf_counter() - t0


def _gptq_experts(
    device: _CalibrationDevice,
    model_file: ModelFile,
    qconfig: QuantizationConfig,
    pieces: list[tuple[int, int, list[int]]],
    hidden: list[np.ndarray],
    parked: list[Optional[list[tuple[int, np.ndarray]]]],
    live: list[tuple[int, int]],
    at: int,
    taps: list[int],
    region: Any,
    stats: dict[str, Any],
) -> Iterator[tuple[str, np.ndarray]]:
    """GPTQ of a mixture's expert region, each expert on its own Hessian: the input rows of
    the token rows that picked it, over every pick (``taps``, one expert MATMUL per pick). A
    chunk is parked at the first pick's MATMUL, then run on through the later picks to read
    their inputs, and later resumed from the parked state once the region is quantized. An
    expert no calibration token picked falls back to RTN, with a warning naming it."""
    first = taps[0]
    width = int(device.code[first]["k"])
    accs: dict[int, Any] = {}
    for k, (_, pos, ids) in enumerate(pieces):
        device.resume(parked[k], hidden[k])
        device.run(pos, len(ids), at, first)
        parked[k] = device.park(live)
        cur = first
        for i in taps:
            device.run(pos, len(ids), cur, i)
            cur = i
            inst = device.code[i]
            x = device.read_rows(inst["a"], len(ids), width)
            picks = device.read_picks(inst["c"], len(ids))
            for e in np.unique(picks):
                acc = accs.get(int(e))
                if acc is None:
                    acc = accs[int(e)] = _core.quant.HessianAccumulator(width)
                acc.add(np.ascontiguousarray(x[picks == e]))
    experts = int(region.experts)
    per = len(region.sources) // experts
    block = int(region.rows) // experts
    for e in range(experts):
        sources = list(region.sources[e * per : (e + 1) * per])
        weights = [model_file[s] for s in sources]
        acc = accs.pop(e, None)
        name = f"{region.name}[{e}]"
        if acc is None:
            log.warning(
                "expert %d of %s: no calibration token picked it, so it is quantized with RTN "
                "(more or longer calibration samples reach more experts)",
                e,
                region.name,
            )
            stats.setdefault("rtn_experts", []).append(name)
            h = None
        else:
            h = acc.hessian()
        del acc
        r = _quantize_one(np.concatenate(weights), h, qconfig, name)
        stats.setdefault("loss", {})[name] = float(r.get("loss", 0.0))
        deq = _core.quant.dequantize(r["codes"], r["scales"], qconfig.bits, qconfig.group_size)
        device.write_weights(region, e * block, deq)
        yield from _split_result(sources, weights, r)


def _split_result(
    sources: list[str], weights: list[np.ndarray], r: dict[str, Any]
) -> Iterator[tuple[str, np.ndarray]]:
    """One GPTQ call's codes and scales cut back into its source tensors (quantized together
    because they share an input and so a Hessian), each source's rows in turn."""
    row = 0
    for src, w in zip(sources, weights):
        rows = slice(row, row + int(w.shape[0]))
        row = rows.stop
        yield src, np.ascontiguousarray(r["codes"][rows])
        yield scales_name(src), np.ascontiguousarray(r["scales"][rows])


def quantize_converted(
    src_dir: Path,
    out_dir: Path,
    qconfig: QuantizationConfig,
    type_device: Any = "u55c",
    tokenizer_dir: Optional[Path] = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Quantizes the fp16 conversion in ``src_dir`` into ``out_dir`` (hyperdex_config.json +
    hyperdex_model.bin, each written atomically); returns statistics (per-tensor GPTQ loss,
    per-layer seconds, calibration tokens)."""
    config, model_file = load_converted(src_dir, verify=False)
    if config.get("quantization"):
        raise ConfigError(
            f"{src_dir} holds an already quantized model ({config['quantization'].get('scheme')})"
            "; quantize the fp16 conversion instead"
        )
    preset = load_preset(type_device) if isinstance(type_device, str) else dict(type_device)
    record = qconfig.to_dict()
    quantized_config = dict(config, dtype="float16", quantization=record)
    stats: dict[str, Any] = {}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    # The emulated device's files go beside the output, under a temporary name that says
    # whose they are: a compile killed while calibrating leaves them where the next compile
    # of the folder removes them (hyperdex/formats/atomic.py), not in the system's temp dir.
    work = temp_path(out_dir / ".calibration")
    try:
        with model_file:
            write_model_file(
                out_dir / HYPERDEX_MODEL_NAME,
                quantize_tensors(
                    config,
                    model_file,
                    qconfig,
                    preset,
                    tokenizer_dir,
                    workdir=work,
                    progress=progress,
                    stats=stats,
                ),
                {"config": quantized_config},
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    stats["seconds"] = time.perf_counter() - t
    write_json_atomic(out_dir / HYPERDEX_CONFIG_NAME, quantized_config)
    log.info("Quantized %s (%s) in %.1f s", src_dir, qconfig.scheme, stats["seconds"])
    return stats
