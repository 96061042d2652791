"""The operators of one transformer layer (and of the model's ends) with the FLOPs and the
off-chip bytes each moves on one device, at the real bytes per element.

Everything is numpy and broadcasts: ``P`` holds columns of shape (points, 1) and the mapping
arrays are (1, mappings), so one call prices every mapping of every design point.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

Params = dict[str, np.ndarray]
MATRIX, VECTOR = "matrix", "vector"
FLASH_BLOCK = 128  # query rows per attention tile: prefill re-reads K/V once per tile


@dataclass
class Op:
    name: str
    kind: str  # matrix | vector
    flops: np.ndarray  # per device
    bytes: np.ndarray  # off-chip, per device
    weight_bytes: np.ndarray  # of which weights (streamed once per step)


def weight_bytes_per_element(quant: np.ndarray, group: np.ndarray) -> np.ndarray:
    """Bytes per weight: the payload plus one fp16 scale per ``group`` weights (GPTQ-style;
    group 0 means one scale per row, negligible)."""
    bits = np.select([quant == "w4a16", (quant == "w8a16") | (quant == "w8a8")], [4.0, 8.0], 16.0)
    scales = np.where((bits < 16) & (group > 0), 2.0 / np.where(group > 0, group, 1.0), 0.0)
    return bits / 8.0 + scales


def kv_replicas(P: Params, t: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Devices that hold the same KV head when there are fewer KV heads than devices; they
    split the cache by sequence (Pope et al.'s batch-sharded multi-query attention) as far as
    the batch allows."""
    return np.maximum(1.0, np.minimum(b, t / P["kv_heads"]))


def shard(P: Params, t: np.ndarray) -> dict[str, np.ndarray]:
    """Per-device sizes under tensor parallelism (Megatron: heads and d_ff split, KV heads
    split until there are fewer than devices)."""
    h_t = P["heads"] / t
    kv_t = np.ceil(P["kv_heads"] / t)
    return {
        "q": h_t * P["d_head"],
        "kv": kv_t * P["d_head"],
        "h_t": h_t,
        "ff": P["d_ff"] / t * np.where(P["gated"], 2.0, 1.0),  # up (+ gate) columns
        "ff_out": P["d_ff"] / t,
    }


def layer_ops(
    P: Params, t: np.ndarray, b: np.ndarray, s: np.ndarray, ctx: np.ndarray, prefill: bool
) -> list[Op]:
    """One layer at micro-batch ``b``, ``s`` new tokens per sequence, attending ``ctx`` KV
    positions (decode: the cache; prefill: the prompt, causal)."""
    d, ab, wb, kb = P["d"], P["act_bytes"], P["w_bytes"], P["kv_bytes"]
    S = shard(P, t)
    q, kv, ff = S["q"], S["kv"], S["ff"]
    n = b * s
    zero = np.zeros_like(n * d)
    if prefill:
        avg_ctx = (s + 1) / 2.0  # causal: token i sees i positions
        kv_read = b * s * 2 * kv * kb * np.maximum(1.0, np.ceil(s / FLASH_BLOCK))
    else:
        avg_ctx = ctx
        # Every sequence reads its own cache once, split over the devices sharing a KV head.
        kv_read = b * ctx * 2 * kv * kb / kv_replicas(P, t, b)
    ops = [
        Op("attn_norm", VECTOR, 5 * n * d, 2 * n * d * ab, zero),
        Op(
            "qkv_proj",
            MATRIX,
            2 * n * d * (q + 2 * kv),
            d * (q + 2 * kv) * wb + n * (d + q + 2 * kv) * ab,
            d * (q + 2 * kv) * wb,
        ),
    ]
    if "rope" in P:
        ops.append(
            Op(
                "rope",
                VECTOR,
                np.where(P["rope"], 6 * n * (q + kv), 0.0),
                np.where(P["rope"], 2 * n * (q + kv) * ab, 0.0),
                zero,
            )
        )
    ops += [
        Op("kv_write", VECTOR, zero, n * 2 * kv * kb, zero),
        Op("attention", MATRIX, 4 * n * q * avg_ctx, kv_read + 2 * n * q * ab, zero),
        Op("softmax", VECTOR, 5 * n * S["h_t"] * avg_ctx, zero, zero),
        Op("attn_out", MATRIX, 2 * n * q * d, q * d * wb + n * (q + d) * ab, q * d * wb),
        Op("residual_1", VECTOR, n * d, 3 * n * d * ab, zero),
        Op(
            "ffn_norm",
            VECTOR,
            np.where(P["parallel"], 0.0, 5 * n * d),
            np.where(P["parallel"], 0.0, 2 * n * d * ab),
            zero,
        ),
        Op("ffn_up", MATRIX, 2 * n * d * ff, d * ff * wb + n * (d + ff) * ab, d * ff * wb),
        Op("activation", VECTOR, 8 * n * S["ff_out"], (ff + S["ff_out"]) * n * ab, zero),
        Op(
            "ffn_down",
            MATRIX,
            2 * n * S["ff_out"] * d,
            S["ff_out"] * d * wb + n * (S["ff_out"] + d) * ab,
            S["ff_out"] * d * wb,
        ),
        Op(
            "residual_2",
            VECTOR,
            np.where(P["parallel"], 0.0, n * d),
            np.where(P["parallel"], 0.0, 3 * n * d * ab),
            zero,
        ),
    ]
    return ops


def head_ops(P: Params, t: np.ndarray, b: np.ndarray, s: np.ndarray) -> list[Op]:
    """Embedding gather, final norm, LM head (vocabulary split over the tensor-parallel
    devices, fp16 as quantizers leave it) and sampling; only the last token of each sequence
    needs logits."""
    d, ab = P["d"], P["act_bytes"]
    v_t = P["vocab"] / t
    n = b * s
    zero = np.zeros_like(n * d * v_t)
    return [
        Op("embedding", VECTOR, zero, n * d * 2.0 + n * d * ab, zero),
        Op("final_norm", VECTOR, 5 * b * d, 2 * b * d * ab, zero),
        Op("lm_head", MATRIX, 2 * b * d * v_t, d * v_t * 2.0 + b * v_t * 4.0, d * v_t * 2.0),
        Op("sampling", VECTOR, 4 * b * v_t, b * v_t * 4.0, zero),
    ]


def weights_total(P: Params) -> np.ndarray:
    """Bytes of every weight of the model (embeddings and LM head in fp16)."""
    d, dh = P["d"], P["d_head"]
    q, kv = P["heads"] * dh, P["kv_heads"] * dh
    ff = P["d_ff"] * np.where(P["gated"], 2.0, 1.0)
    per_layer = d * (q + 2 * kv) + q * d + d * ff + P["d_ff"] * d
    return P["layers"] * per_layer * P["w_bytes"] + 2 * P["vocab"] * d * 2.0


def kv_bytes_per_token(P: Params) -> np.ndarray:
    """KV-cache bytes one token of one sequence adds, all layers (GQA: KV heads only)."""
    return P["layers"] * 2 * P["kv_heads"] * P["d_head"] * P["kv_bytes"]
