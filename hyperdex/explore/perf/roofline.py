"""Per-operator roofline: each operator takes the longer of its compute time and its memory
time (plus a fixed per-kernel overhead where the software launches it alone); layers add
their tensor-parallel all-reduces (overlapped with compute or not), stages add up to the
pipeline's per-token latency.
"""

from __future__ import annotations

import numpy as np

from . import comm
from .operators import (
    MATRIX,
    Op,
    Params,
    head_ops,
    kv_bytes_per_token,
    kv_replicas,
    layer_ops,
    mixture,
    router_bytes,
    weights_total,
)

PREFILL_CHUNK = 4096  # tokens per prefill pass held in activation memory (chunked prefill)


def op_seconds(op: Op, P: Params, bw_bytes_s: np.ndarray) -> np.ndarray:
    """Roofline time of one operator on one device."""
    if op.kind == MATRIX:
        rate = np.where(P["a8"], P["int8_tflops"], P["peak_tflops"]) * 1e12 * P["eff_compute"]
        overhead = P["kernel_s"]
        mem = op.bytes / bw_bytes_s
    else:
        rate = P["vector_tflops"] * 1e12 * P["eff_compute"]
        # Fused element-wise work rides in a neighbouring kernel: no own launch, no own trip
        # to memory.
        overhead = np.where(P["fused"], 0.0, P["kernel_s"])
        mem = np.where(P["fused"], 0.0, op.bytes / bw_bytes_s)
    if op.launches is not None:  # an operator some points of the sweep do not have
        overhead = overhead * op.launches
    return np.maximum(op.flops / rate, mem) + overhead


def link(P: Params, group: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(GB/s, alpha seconds) of the links a group of ``group`` devices talks over: chip-to-chip
    inside a server, the server network once the group spans servers."""
    gbps = P["c2c_gbps"] * P["eff_link"]
    alpha = P["c2c_latency_us"] * 1e-6
    across = group > P["chips_per_server"]
    gbps = np.where(across, np.minimum(gbps, P["s2s_gbps"] * P["eff_link"]), gbps)
    alpha = np.where(across, np.maximum(alpha, P["s2s_latency_us"] * 1e-6), alpha)
    return gbps, alpha


def memory_per_chip(
    P: Params, t: np.ndarray, p: np.ndarray, m: np.ndarray
) -> dict[str, np.ndarray]:
    """Bytes each chip holds: its share of the weights, the KV cache of the whole batch for
    its layers at the longest context, and the prefill activations of one micro-batch. A
    mixture's chip holds its slice of all E experts and the whole router of its layers."""
    w = weights_total(P) / (t * p)
    mix = mixture(P)
    if mix is not None:  # the router is replicated, not split: add the copies
        w = w + P["layers"] * router_bytes(P, mix) * (1.0 - 1.0 / t) / p
    ctx = P["prompt"] + P["gen"]
    kv_t = np.ceil(P["kv_heads"] / t) / P["kv_heads"] / kv_replicas(P, t, P["batch"])
    kv = P["batch"] * ctx * kv_bytes_per_token(P) * kv_t / p
    b = P["batch"] / m
    ff = P["d_ff"] / t * np.where(P["gated"], 2.0, 1.0)
    if mix is not None:  # each token's hidden activations in each of its k experts
        ff = np.where(mix.moe, ff * mix.k, ff)
    qkv = (P["heads"] + 2 * P["kv_heads"]) * P["d_head"] / t
    tokens = np.minimum(b * P["prompt"], PREFILL_CHUNK)
    act = tokens * (P["d"] + np.maximum(qkv, ff)) * P["act_bytes"] * 2
    return {"weights": w, "kv": kv, "act": act, "total": w + kv + act}


def phase(
    P: Params,
    t: np.ndarray,
    p: np.ndarray,
    m: np.ndarray,
    prefill: bool,
    bw_bytes_s: np.ndarray,
    detail: bool = False,
) -> dict[str, np.ndarray]:
    """Time of one step (decode: one token of every sequence; prefill: the prompts) with
    ``t``-way tensor, ``p``-stage pipeline parallelism and ``m`` micro-batches."""
    b = P["batch"] / m
    s = P["prompt"] if prefill else np.ones_like(P["prompt"])
    ctx = P["prompt"] + P["gen"] / 2.0  # decode: the average context over the generation
    ops = layer_ops(P, t, b, s, ctx, prefill)
    times = [op_seconds(op, P, bw_bytes_s) for op in ops]
    compute = sum(times)
    gbps, alpha = link(P, t)
    size = b * s * P["d"] * P["act_bytes"]
    # alpha per ring step (the link), plus the software's fixed cost once per collective.
    ar = np.where(
        P["ring2d"],
        comm.ring2d_allreduce(size, t, gbps, alpha),
        comm.ring_allreduce(size, t, gbps, alpha),
    )
    ar = ar + np.where(t > 1, P["collective_us"] * 1e-6, 0.0)
    n_ar = np.where(P["parallel"], 1.0, 2.0)
    comm_s = n_ar * ar
    overlapped = np.maximum(compute, comm_s) + np.minimum(compute, comm_s) / P["chunks"]
    layer = np.where(P["overlap"], overlapped, compute + comm_s)
    heads = head_ops(P, t, b, s)
    head_times = [op_seconds(op, P, bw_bytes_s) for op in heads]
    # Picking the next token over a split vocabulary: one tiny collective (latency only).
    head = sum(head_times) + np.where(
        t > 1, comm.ring_allreduce(b * 8.0, t, gbps, alpha) + P["collective_us"] * 1e-6, 0.0
    )
    stage = P["layers"] / p * layer + head + P["step_s"]
    pg, palpha = link(P, t * p)
    hop = comm.point_to_point(size, pg, palpha) * (p - 1)
    if prefill:
        latency = (m + p - 1) * stage + hop  # the last micro-batch leaves the pipeline
    else:
        latency = np.maximum(m, p) * stage + hop  # a sequence's next token
    out = {
        "stage_s": stage,
        "latency_s": latency,
        "layer_s": layer,
        "layer_compute_s": compute,
        "layer_comm_s": comm_s,
        "head_s": head,
    }
    if detail:
        out["ops"] = ops + heads  # type: ignore[assignment]
        out["op_s"] = times + head_times  # type: ignore[assignment]
    return out


def bandwidth(P: Params, mem: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(sustained bytes/s, resident-in-SRAM mask): weights and KV live in SRAM when they fit
    (Chiplet Cloud's design point), else stream from off-chip memory."""
    fits = (mem["weights"] + mem["kv"] <= P["sram_mb"] * 1e6 * P["headroom"]) & (P["sram_gbps"] > 0)
    raw = np.where(fits, P["sram_gbps"], P["mem_gbps"])
    return raw * 1e9 * P["eff_memory"], fits
