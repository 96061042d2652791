"""The tensor-parallel split of phase 3 (docs/formats.md, "Several devices").

Megatron-style over a ring of N devices: attention by heads (Q/K/V rows, the output
projection's columns), KV heads replicated where there are fewer KV heads than devices, the
MLP by columns (gate/up rows) then rows (down columns), the LM head by vocabulary (the host
puts the logits slices side by side). Everything else (embeddings, norms, the biases the
ALLREDUCE adds once) is replicated. Sizes that do not divide are padded with zeros, which the
programs turn into exact zeros (a zero Q head meets a zero output column, act(0) * 0 = 0 in
the MLP, a zero logit past the vocabulary is dropped). The shapes are those of the C++
``shard_spec``; :func:`gather_tensors` undoes :func:`shard_tensors` (tested).

Quantized weights (``X.weight`` u8 codes with ``X.scales``, docs/formats.md) split the same
way: a column-parallel projection's scale rows go with its weight rows; a row-parallel one
(``attn_output``, ``ffn_down``) takes whole groups of inputs, so each device's share of the
inputs must start and end on group boundaries (else a ConfigError naming the tensor).
Padding is code ``z`` with scale 0, which dequantizes to exactly +0.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Optional

import numpy as np

from ..arch.record import ModelRecord, as_record
from ..arch.spec import canonical_tensors
from ..errors import ConfigError, FormatError


def _share(n: int, devices: int) -> int:
    return (n + devices - 1) // devices


def head_slots(heads: int, kv: int, devices: int, rank: int) -> tuple[list[int], list[int]]:
    """(query heads, KV heads) device ``rank`` holds, as model head indices; -1 is padding.

    Each device keeps whole GQA groups, so a device's ATTN group equals the model's. With at
    least as many KV heads as devices, device d holds ceil(K/N) KV heads and their query
    heads; with fewer, the devices d with d*K//N == j share KV head j (replicated) and split
    its query heads."""
    group = heads // kv
    if kv >= devices:
        kv_d = _share(kv, devices)
        kv_slots = [j if j < kv else -1 for j in range(rank * kv_d, (rank + 1) * kv_d)]
        q_slots = [j * group + h if j >= 0 else -1 for j in kv_slots for h in range(group)]
        return q_slots, kv_slots
    sharing = devices // kv
    per = _share(group, sharing)
    j = rank * kv // devices
    r = rank - min(d for d in range(devices) if d * kv // devices == j)
    q_slots = [j * group + r * per + h if r * per + h < group else -1 for h in range(per)]
    return q_slots, [j]


def _splits(model: ModelRecord) -> dict[str, str]:
    """Canonical tensor name -> its split over devices (the layer graph's)."""
    splits = {name: split for name, (_, split) in canonical_tensors(model).items()}
    splits.setdefault("output.weight", "vocab_rows")  # tied: a slice of the table per device
    return splits


def _split_of(name: str, splits: Mapping[str, str]) -> str:
    """The split of a tensor; a quantized weight's scales (``X.scales``) go with ``X.weight``."""
    base = name[: -len("scales")] + "weight" if name.endswith(".scales") else name
    if base not in splits:
        raise FormatError(
            f"{name} is not a tensor of this model: its layer graph has no {base}; the tensors "
            "belong to another model record"
        )
    return splits[base]


_ROW_PARALLEL = ("q_head_columns", "ffn_columns")


def _rows(t: np.ndarray, slots: list[int], width: int, pad: int = 0) -> np.ndarray:
    """Rows of ``t`` in blocks of ``width`` picked by slot (-1: ``pad``, zeros by default)."""
    out = np.full((len(slots) * width, *t.shape[1:]), pad, dtype=t.dtype)
    for i, s in enumerate(slots):
        if s >= 0:
            out[i * width : (i + 1) * width] = t[s * width : (s + 1) * width]
    return out


def _slice_rows(t: np.ndarray, rank: int, per: int, pad: int = 0) -> np.ndarray:
    """Rows [rank*per, (rank+1)*per) of ``t``, padded with ``pad`` past its end."""
    out = np.full((per, *t.shape[1:]), pad, dtype=t.dtype)
    part = t[rank * per : (rank + 1) * per]
    out[: len(part)] = part
    return out


def _zero_point(
    tensors: Mapping[str, Any], quantization: Optional[Mapping[str, Any]]
) -> Optional[int]:
    """The code that stands for 0 when ``tensors`` hold quantized weights, else None."""
    if not any(n.endswith(".scales") for n in tensors):
        return None
    bits = (quantization or {}).get("bits")
    if bits not in (4, 8):
        raise ConfigError(
            "the tensors hold quantized weights (X.weight codes with X.scales): pass the "
            "model's quantization record (hyperdex_config.json 'quantization', bits 4 or 8) "
            f"to split them over devices; got {quantization!r}"
        )
    return 1 << (int(bits) - 1)


def _is_codes(name: str, tensors: Mapping[str, Any]) -> bool:
    return name.endswith(".weight") and name[: -len("weight")] + "scales" in tensors


def _row_parallel_columns(model: ModelRecord, split: str, devices: int, rank: int) -> np.ndarray:
    """For a row-parallel projection (split by query-head or MLP columns): the model input
    column each of device ``rank``'s input columns holds (-1: padding)."""
    if split == "q_head_columns":
        hd = model.head_dim
        q_slots, _ = head_slots(model.num_heads, model.num_kv_heads, devices, rank)
        return np.array(
            [s * hd + i if s >= 0 else -1 for s in q_slots for i in range(hd)], dtype=np.int64
        )
    full = model.intermediate_size
    ff = _share(full, devices)
    cols = np.arange(rank * ff, (rank + 1) * ff, dtype=np.int64)
    return np.where(cols < full, cols, -1)


def _column_groups(
    name: str, cols: np.ndarray, group: int, inputs: int, devices: int
) -> np.ndarray:
    """The model's group each of a device's groups of ``group`` columns is (-1: all padding).
    A device's columns must be whole groups of the model in their order, else ConfigError."""
    what = f"{name}: {devices} devices split its {inputs} inputs into shares of {len(cols)}"
    if group == inputs:
        raise ConfigError(
            f"{what}, but its scales are per row (group_size=-1): one scale per row cannot be "
            "split. Quantize with a group size that divides the share, or use fewer devices"
        )
    if len(cols) % group:
        raise ConfigError(
            f"{what}, which is not a multiple of its group size {group}: quantize with a group "
            f"size that divides {len(cols)}, or use fewer devices"
        )
    out = []
    for block in cols.reshape(-1, group):
        if np.all(block < 0):
            out.append(-1)
        elif (
            block[0] >= 0
            and block[0] % group == 0
            and np.array_equal(block, np.arange(block[0], block[0] + group))
        ):
            out.append(int(block[0]) // group)
        else:
            raise ConfigError(
                f"{what}, which cut its quantization groups of {group}: each device's share "
                "must be whole groups. Quantize with a group size that divides the head "
                "dimension and the share, or use fewer devices"
            )
    return np.array(out, dtype=np.int64)


def _take_columns(t: np.ndarray, cols: np.ndarray, pad: int) -> np.ndarray:
    out = np.full((t.shape[0], len(cols)), pad, dtype=t.dtype)
    real = cols >= 0
    out[:, real] = t[:, cols[real]]
    return out


def shard_tensors(
    model: ModelRecord | Mapping[str, Any],
    tensors: Mapping[str, np.ndarray],
    devices: int,
    rank: int,
    quantization: Optional[Mapping[str, Any]] = None,
) -> dict[str, np.ndarray]:
    """Device ``rank``'s canonical tensors (hyperdex_model.bin names) on a ring of
    ``devices``. One device: the tensors themselves. A quantized model needs
    ``quantization`` (hyperdex_config.json's record) for the padding code."""
    if devices == 1:
        return dict(tensors)
    model = as_record(model)
    hd = model.head_dim
    ff = _share(model.intermediate_size, devices)
    vocab = _share(model.vocab_size, devices)
    q_slots, kv_slots = head_slots(model.num_heads, model.num_kv_heads, devices, rank)
    z = _zero_point(tensors, quantization)
    splits = _splits(model)
    out: dict[str, np.ndarray] = {}
    for name, t in tensors.items():
        split = _split_of(name, splits)
        scales = name.endswith(".scales")
        # Padding: code z for codes; zeros for scales (so padding dequantizes to +0) and fp16.
        pad = z if z is not None and _is_codes(name, tensors) else 0
        if split in _ROW_PARALLEL and scales:
            continue  # with its codes below
        if split in _ROW_PARALLEL and pad:
            cols = _row_parallel_columns(model, split, devices, rank)
            scale_name = name[: -len("weight")] + "scales"
            g = int((quantization or {}).get("group_size", -1))
            group = t.shape[1] if g == -1 else g  # the last group may be shorter (docs)
            groups = _column_groups(name, cols, group, t.shape[1], devices)
            out[name] = _take_columns(t, cols, pad)
            out[scale_name] = _take_columns(tensors[scale_name], groups, 0)
        elif split == "q_head_rows":
            out[name] = _rows(t, q_slots, hd, pad)
        elif split == "kv_head_rows":
            out[name] = _rows(t, kv_slots, hd, pad)
        elif split == "q_head_columns":
            out[name] = np.ascontiguousarray(_rows(t.T, q_slots, hd).T)
        elif split == "ffn_rows":
            out[name] = _slice_rows(t, rank, ff, pad)
        elif split == "ffn_columns":
            out[name] = np.ascontiguousarray(_slice_rows(t.T, rank, ff).T)
        elif split == "vocab_rows":
            out[name] = _slice_rows(t, rank, vocab, pad)
        else:
            out[name] = t
    if "output.weight" not in tensors:  # tied: the head is a slice of the embedding table
        out["output.weight"] = _slice_rows(tensors["tok_embd.weight"], rank, vocab)
    return out


def gather_tensors(
    model: ModelRecord | Mapping[str, Any],
    shards: list[Mapping[str, np.ndarray]],
    quantization: Optional[Mapping[str, Any]] = None,
) -> dict[str, np.ndarray]:
    """The model's tensors back from every device's shard (the inverse of
    :func:`shard_tensors`). Raises FormatError when replicated copies disagree or padding
    is not zero (code ``z`` with scale 0 for quantized weights)."""
    devices = len(shards)
    if devices == 1:
        return dict(shards[0])
    z = _zero_point(shards[0], quantization)
    model = as_record(model)
    hd = model.head_dim
    heads, kv = model.num_heads, model.num_kv_heads
    ff_full, vocab_full = model.intermediate_size, model.vocab_size
    slots = [head_slots(heads, kv, devices, d) for d in range(devices)]
    out: dict[str, np.ndarray] = {}

    def pad_of(name: str) -> int:
        return z if z is not None and _is_codes(name, shards[0]) else 0

    def by_slots(name: str, which: int, count: int, transpose: bool) -> np.ndarray:
        first = shards[0][name].T if transpose else shards[0][name]
        pad = pad_of(name)
        full = np.full((count * hd, *first.shape[1:]), pad, dtype=first.dtype)
        seen = [False] * count
        for d, shard in enumerate(shards):
            t = shard[name].T if transpose else shard[name]
            for i, s in enumerate(slots[d][which]):
                block = t[i * hd : (i + 1) * hd]
                if s < 0:
                    if np.any(block != pad):
                        raise FormatError(f"{name}: device {d} has non-zero padding")
                elif seen[s] and not np.array_equal(full[s * hd : (s + 1) * hd], block):
                    raise FormatError(f"{name}: the replicas of head {s} differ")
                else:
                    full[s * hd : (s + 1) * hd] = block
                    seen[s] = True
        if not all(seen):
            raise FormatError(f"{name}: some heads are on no device")
        return np.ascontiguousarray(full.T) if transpose else full

    def by_rows(name: str, total: int, transpose: bool) -> np.ndarray:
        parts = [s[name].T if transpose else s[name] for s in shards]
        full = np.concatenate(parts)
        if np.any(full[total:] != pad_of(name)):
            raise FormatError(f"{name}: non-zero padding past row {total}")
        full = full[:total]
        return np.ascontiguousarray(full.T) if transpose else full

    def by_columns(name: str, split: str) -> None:
        """A quantized row-parallel weight and its scales, by the columns each device holds."""
        sname = name[: -len("weight")] + "scales"
        inputs = hd * heads if split == "q_head_columns" else ff_full
        first, first_s = shards[0][name], shards[0][sname]
        group = first.shape[1] // first_s.shape[1]
        full = np.full((first.shape[0], inputs), pad_of(name), dtype=first.dtype)
        full_s = np.zeros((first_s.shape[0], inputs // group), dtype=first_s.dtype)
        for d, shard in enumerate(shards):
            cols = _row_parallel_columns(model, split, devices, d)
            groups = _column_groups(name, cols, group, inputs, devices)
            for src, dst, t, idx, pad in (
                (shard[name], full, name, cols, pad_of(name)),
                (shard[sname], full_s, sname, groups, 0),
            ):
                if np.any(src[:, idx < 0] != pad):
                    raise FormatError(f"{t}: device {d} has non-zero padding")
                dst[:, idx[idx >= 0]] = src[:, idx >= 0]
        out[name], out[sname] = full, full_s

    splits = _splits(model)
    for name in shards[0]:
        split = _split_of(name, splits)
        scales = name.endswith(".scales")
        if split in _ROW_PARALLEL and z is not None and scales:
            continue  # with its codes
        if split in _ROW_PARALLEL and not scales and pad_of(name):
            by_columns(name, split)
        elif split == "q_head_rows":
            out[name] = by_slots(name, 0, heads, False)
        elif split == "kv_head_rows":
            out[name] = by_slots(name, 1, kv, False)
        elif split == "q_head_columns":
            out[name] = by_slots(name, 0, heads, True)
        elif split == "ffn_rows":
            out[name] = by_rows(name, ff_full, False)
        elif split == "ffn_columns":
            out[name] = by_rows(name, ff_full, True)
        elif split == "vocab_rows":
            out[name] = by_rows(name, vocab_full, False)
        else:
            for d, s in enumerate(shards[1:], 1):
                if not np.array_equal(s[name], shards[0][name]):
                    raise FormatError(f"{name}: device {d}'s replica differs from device 0's")
            out[name] = shards[0][name]
    return out
