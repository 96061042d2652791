"""The operators of one transformer layer (and of the model's ends) with the FLOPs and the
off-chip bytes each moves on one device, at the real bytes per element.

Everything is numpy and broadcasts: ``P`` holds columns of shape (points, 1) and the mapping
arrays are (1, mappings), so one call prices every mapping of every design point.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

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
    # Kernel launches per point (1 when None): a mixture's own operators are 0 for the dense
    # points of a sweep that mixes both, so those pay no launch overhead for them.
    launches: Optional[np.ndarray] = None


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


@dataclass
class Mixture:
    """The points of a sweep whose MLP is a mixture of experts: ``moe`` marks them, ``E``
    experts per layer, ``k`` of them per token (dense points carry E = 1, k = 1, so every
    formula below stays finite for them; ``moe`` picks the dense formula there)."""

    moe: np.ndarray
    E: np.ndarray
    k: np.ndarray


ROUTER_BYTES = 2.0  # the router stays fp16 (quantization leaves it) on every device


def mixture(P: Params) -> Optional[Mixture]:
    """The sweep's mixtures, or None when every point is dense: then every operator keeps its
    dense formula untouched (bit-identical results)."""
    E = P.get("experts")
    if E is None or not np.any(E > 0):
        return None
    moe = E > 0
    return Mixture(moe, np.where(moe, E, 1.0), np.where(moe, P["top_k"], 1.0))


def experts_touched(mix: Mixture, tokens: np.ndarray) -> np.ndarray:
    """Expected distinct experts a step's ``tokens`` route to, of which the step streams the
    weights. ASSUMPTION: uniform, independent routing (each token picks k of E experts, every
    expert equally likely): an expert escapes a token with probability 1 - k/E, so
    E (1 - (1 - k/E)^tokens), at most E. Batch 1 decode reads k experts, a large batch or a
    prompt all of them. A skewed router touches fewer (by concavity the uniform one is the
    most bytes for given k), so mid-size batches are priced on the pessimistic side."""
    E, k = mix.E, mix.k
    return np.minimum(E, E * (1.0 - (1.0 - k / E) ** tokens))


def router_bytes(P: Params, mix: Optional[Mixture]) -> np.ndarray:
    """Bytes of one layer's router ([E, d_model], fp16), 0 for a dense MLP."""
    if mix is None:
        return np.zeros_like(P["d"])
    return np.where(mix.moe, P["d"] * mix.E * ROUTER_BYTES, 0.0)


def shard(P: Params, t: np.ndarray) -> dict[str, np.ndarray]:
    """Per-device sizes under tensor parallelism (Megatron: heads and d_ff split, KV heads
    split until there are fewer than devices; a mixture splits each expert's d_ff, as
    hyperdex's compiler does: every device holds a slice of every expert)."""
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
    mix = mixture(P)
    # The MLP computes ``routed`` (token, expert) pairs and streams ``copies`` weight sets:
    # a dense MLP n and 1, a mixture k per token and the distinct experts the step touches.
    routed: np.ndarray = n
    copies: Union[float, np.ndarray] = 1.0
    if mix is not None:
        routed = np.where(mix.moe, n * mix.k, n)
        copies = np.where(mix.moe, experts_touched(mix, n), 1.0)
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
    ]
    if mix is not None:
        ops += router_ops(P, mix, n, d, ab)
    ops += [
        Op(
            "ffn_up",
            MATRIX,
            2 * routed * d * ff,
            d * ff * wb * copies + routed * (d + ff) * ab,
            d * ff * wb * copies,
        ),
        Op("activation", VECTOR, 8 * routed * S["ff_out"], (ff + S["ff_out"]) * routed * ab, zero),
        Op(
            "ffn_down",
            MATRIX,
            2 * routed * S["ff_out"] * d,
            S["ff_out"] * d * wb * copies + routed * (S["ff_out"] + d) * ab,
            S["ff_out"] * d * wb * copies,
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


def router_ops(P: Params, mix: Mixture, n: np.ndarray, d: np.ndarray, ab: np.ndarray) -> list[Op]:
    """A mixture's own work, on every device in full (the router is replicated, as
    hyperdex's compiler places it): the router's fp32 logits, then softmax and top-k over
    them and the weighted sum of the k experts' outputs."""
    on = mix.moe.astype(float)
    E, k = mix.E, mix.k
    w = router_bytes(P, mix)
    logits = n * E * 4.0
    return [
        Op("router", MATRIX, on * 2 * n * d * E, w + on * (n * d * ab + logits), w, on),
        Op(
            "topk_combine",
            VECTOR,
            on * (5 * n * E + 2 * n * k * d),
            on * (logits + n * (k + 1) * d * ab),
            np.zeros_like(w),
            on,
        ),
    ]


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
    """Bytes of every weight of the model (embeddings and LM head in fp16; a mixture: all E
    experts of every layer and its fp16 router)."""
    d, dh = P["d"], P["d_head"]
    q, kv = P["heads"] * dh, P["kv_heads"] * dh
    ff = P["d_ff"] * np.where(P["gated"], 2.0, 1.0)
    per_layer = d * (q + 2 * kv) + q * d + d * ff + P["d_ff"] * d
    mix = mixture(P)
    if mix is None:
        return P["layers"] * per_layer * P["w_bytes"] + 2 * P["vocab"] * d * 2.0
    experts = d * (q + 2 * kv) + q * d + mix.E * (d * ff + P["d_ff"] * d)
    per_layer = np.where(mix.moe, experts, per_layer)
    routers = P["layers"] * router_bytes(P, mix)
    return P["layers"] * per_layer * P["w_bytes"] + 2 * P["vocab"] * d * 2.0 + routers


def kv_bytes_per_token(P: Params) -> np.ndarray:
    """KV-cache bytes one token of one sequence adds, all layers (GQA: KV heads only)."""
    return P["layers"] * 2 * P["kv_heads"] * P["d_head"] * P["kv_bytes"]
