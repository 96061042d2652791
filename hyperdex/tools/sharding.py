"""The tensor-parallel split of phase 3 (docs/formats.md, "Several devices").

Megatron-style over a ring of N devices: attention by heads (Q/K/V rows, the output
projection's columns), KV heads replicated where there are fewer KV heads than devices, the
MLP by columns (gate/up rows) then rows (down columns), the LM head by vocabulary (the host
puts the logits slices side by side). Everything else (embeddings, norms, the biases the
ALLREDUCE adds once) is replicated. Sizes that do not divide are padded with zeros, which the
programs turn into exact zeros (a zero Q head meets a zero output column, act(0) * 0 = 0 in
the MLP, a zero logit past the vocabulary is dropped). The shapes are those of the C++
``shard_spec``; :func:`gather_tensors` undoes :func:`shard_tensors` (tested).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ..errors import FormatError


def _share(n: int, devices: int) -> int:
    return (n + devices - 1) // devices


def head_slots(model: Mapping[str, Any], devices: int, rank: int) -> tuple[list[int], list[int]]:
    """(query heads, KV heads) device ``rank`` holds, as model head indices; -1 is padding.

    Each device keeps whole GQA groups, so a device's ATTN group equals the model's. With at
    least as many KV heads as devices, device d holds ceil(K/N) KV heads and their query
    heads; with fewer, the devices d with d*K//N == j share KV head j (replicated) and split
    its query heads."""
    heads, kv = int(model["num_heads"]), int(model["num_kv_heads"])
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


def _rows(t: np.ndarray, slots: list[int], width: int) -> np.ndarray:
    """Rows of ``t`` in blocks of ``width`` picked by slot (-1: zeros)."""
    out = np.zeros((len(slots) * width, *t.shape[1:]), dtype=t.dtype)
    for i, s in enumerate(slots):
        if s >= 0:
            out[i * width : (i + 1) * width] = t[s * width : (s + 1) * width]
    return out


def _slice_rows(t: np.ndarray, rank: int, per: int) -> np.ndarray:
    """Rows [rank*per, (rank+1)*per) of ``t``, zero-padded past its end."""
    out = np.zeros((per, *t.shape[1:]), dtype=t.dtype)
    part = t[rank * per : (rank + 1) * per]
    out[: len(part)] = part
    return out


def shard_tensors(
    model: Mapping[str, Any], tensors: Mapping[str, np.ndarray], devices: int, rank: int
) -> dict[str, np.ndarray]:
    """Device ``rank``'s canonical tensors (hyperdex_model.bin names) on a ring of
    ``devices``. One device: the tensors themselves."""
    if devices == 1:
        return dict(tensors)
    hd = int(model["head_dim"])
    ff = _share(int(model["intermediate_size"]), devices)
    vocab = _share(int(model["vocab_size"]), devices)
    q_slots, kv_slots = head_slots(model, devices, rank)
    out: dict[str, np.ndarray] = {}
    for name, t in tensors.items():
        parts = name.split(".")
        kind = parts[2] if parts[0] == "blk" else parts[0]
        if kind == "attn_q":
            out[name] = _rows(t, q_slots, hd)
        elif kind in ("attn_k", "attn_v"):
            out[name] = _rows(t, kv_slots, hd)
        elif kind == "attn_output" and parts[-1] == "weight":
            out[name] = np.ascontiguousarray(_rows(t.T, q_slots, hd).T)
        elif kind in ("ffn_gate", "ffn_up"):
            out[name] = _slice_rows(t, rank, ff)
        elif kind == "ffn_down" and parts[-1] == "weight":
            out[name] = np.ascontiguousarray(_slice_rows(t.T, rank, ff).T)
        elif kind == "output":
            out[name] = _slice_rows(t, rank, vocab)
        else:
            out[name] = t
    if "output.weight" not in tensors:  # tied: the head is a slice of the embedding table
        out["output.weight"] = _slice_rows(tensors["tok_embd.weight"], rank, vocab)
    return out


def gather_tensors(
    model: Mapping[str, Any], shards: list[Mapping[str, np.ndarray]]
) -> dict[str, np.ndarray]:
    """The model's tensors back from every device's shard (the inverse of
    :func:`shard_tensors`). Raises FormatError when replicated copies disagree or padding
    is not zero."""
    devices = len(shards)
    if devices == 1:
        return dict(shards[0])
    hd = int(model["head_dim"])
    heads, kv = int(model["num_heads"]), int(model["num_kv_heads"])
    ff_full, vocab_full = int(model["intermediate_size"]), int(model["vocab_size"])
    slots = [head_slots(model, devices, d) for d in range(devices)]
    out: dict[str, np.ndarray] = {}

    def by_slots(name: str, which: int, count: int, transpose: bool) -> np.ndarray:
        first = shards[0][name].T if transpose else shards[0][name]
        full = np.zeros((count * hd, *first.shape[1:]), dtype=first.dtype)
        seen = [False] * count
        for d, shard in enumerate(shards):
            t = shard[name].T if transpose else shard[name]
            for i, s in enumerate(slots[d][which]):
                block = t[i * hd : (i + 1) * hd]
                if s < 0:
                    if np.any(block):
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
        if np.any(full[total:]):
            raise FormatError(f"{name}: non-zero padding past row {total}")
        full = full[:total]
        return np.ascontiguousarray(full.T) if transpose else full

    for name in shards[0]:
        parts = name.split(".")
        kind = parts[2] if parts[0] == "blk" else parts[0]
        weight = parts[-1] == "weight"
        if kind == "attn_q":
            out[name] = by_slots(name, 0, heads, False)
        elif kind in ("attn_k", "attn_v"):
            out[name] = by_slots(name, 1, kv, False)
        elif kind == "attn_output" and weight:
            out[name] = by_slots(name, 0, heads, True)
        elif kind in ("ffn_gate", "ffn_up"):
            out[name] = by_rows(name, ff_full, False)
        elif kind == "ffn_down" and weight:
            out[name] = by_rows(name, ff_full, True)
        elif kind == "output":
            out[name] = by_rows(name, vocab_full, False)
        else:
            for d, s in enumerate(shards[1:], 1):
                if not np.array_equal(s[name], shards[0][name]):
                    raise FormatError(f"{name}: device {d}'s replica differs from device 0's")
            out[name] = shards[0][name]
    return out
