"""Mapping search: for every design point, every tensor-parallel degree t, pipeline depth p and
micro-batch count m it may use; the feasible ones priced; the best for decode and, separately,
the best for prefill. A point with no feasible mapping gets the reason of the attempt that came
closest.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..hardware.chip import num
from ..perf.operators import Params, weight_bytes_per_element
from ..perf.roofline import bandwidth, memory_per_chip, phase

POWERS = [2**i for i in range(8)]  # 1 .. 128
# Why a mapping is infeasible, in the order the checks run: a larger code got further.
HEADS, FFN, BATCH, CHIPS, LINK, MEMORY, LATENCY = 1, 2, 3, 4, 5, 6, 7


def params(c: dict[str, np.ndarray]) -> Params:
    """The perf model's inputs from sweep columns, as (points, 1) arrays."""
    f = lambda k: num(c[k])  # noqa: E731
    heads = f("model.num_heads")
    d = f("model.d_model")
    d_head = np.where(np.isnan(f("model.d_head")), d / heads, f("model.d_head"))
    kv = np.where(np.isnan(f("model.num_kv_heads")), heads, f("model.num_kv_heads"))
    d_ff = np.where(np.isnan(f("model.d_ff")), 4 * d, f("model.d_ff"))
    quant = c["model.quantization"]
    a8 = quant == "w8a8"
    peak = f("peak_tflops")
    int8 = f("chip.int8_tflops")
    vec = f("chip.vector_tflops")
    P = {
        "layers": f("model.num_layers"),
        "d": d,
        "heads": heads,
        "kv_heads": kv,
        "d_head": d_head,
        "d_ff": d_ff,
        "experts": f("model.num_experts"),  # 0: a dense MLP
        "top_k": f("model.experts_per_token"),
        "vocab": f("model.vocab_size"),
        "gated": c["model.gated_mlp"].astype(bool),
        "parallel": c["model.parallel_block"].astype(bool),
        "rope": c["model.positions"] == "rope",
        "w_bytes": weight_bytes_per_element(quant, f("model.quant_group")),
        "act_bytes": np.where(a8, 1.0, 2.0),
        "kv_bytes": f("model.kv_bits") / 8.0,
        "a8": a8,
        "peak_tflops": peak,
        "int8_tflops": np.where(np.isnan(int8), peak, int8),
        "vector_tflops": np.where(np.isnan(vec), peak / 16.0, vec),
        "mem_gbps": f("mem_gbps_per_chip"),
        "mem_gb": f("mem_gb_per_chip"),
        "sram_mb": f("chip.sram_mb"),
        "sram_gbps": f("chip.sram_gbps"),
        "c2c_gbps": f("chip.c2c_gbps"),
        "c2c_latency_us": f("chip.c2c_latency_us"),
        "s2s_gbps": f("server.s2s_gbps"),
        "s2s_latency_us": f("server.s2s_latency_us"),
        "chips_per_server": f("chips_per_server"),
        "prompt": f("workload.prompt_len"),
        "gen": f("workload.gen_len"),
        "batch": f("workload.batch"),
        "eff_compute": f("efficiency.compute"),
        "eff_memory": f("efficiency.memory"),
        "eff_link": f("efficiency.link"),
        "kernel_s": f("efficiency.kernel_overhead_us") * 1e-6,
        "step_s": f("efficiency.step_overhead_us") * 1e-6,
        "fused": c["efficiency.fused_elementwise"].astype(bool),
        "headroom": f("efficiency.memory_headroom"),
        "ring2d": c["comm.allreduce"] == "2d_ring",
        "overlap": c["comm.overlap"].astype(bool),
        "chunks": f("comm.overlap_chunks"),
        "collective_us": f("comm.collective_latency_us"),
        "max_chips": f("mapping.max_chips"),
        "fix_t": f("mapping.tensor_parallel"),
        "fix_p": f("mapping.pipeline_parallel"),
        "fix_m": f("mapping.micro_batches"),
        "max_latency_s": f("mapping.max_latency_ms") * 1e-3,
    }
    return {k: v[:, None] for k, v in P.items()}


def _col(c: dict[str, np.ndarray], key: str) -> np.ndarray:
    v = c[key]
    if v.dtype == object:
        return np.array([np.nan if x in (None, "auto") else float(x) for x in v], dtype=float)
    return v.astype(float)


def candidates(c: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every (t, p, m) any point may use: powers of two up to 128 (and any value a system
    file fixes); m micro-batches at most p (more would only lengthen each token's wait)."""
    ts = set(POWERS) | {int(x) for x in _col(c, "mapping.tensor_parallel") if np.isfinite(x)}
    ps = set(POWERS[:7]) | {int(x) for x in _col(c, "mapping.pipeline_parallel") if np.isfinite(x)}
    ms = set(POWERS[:7]) | {int(x) for x in _col(c, "mapping.micro_batches") if np.isfinite(x)}
    limit = float(np.nanmax(_col(c, "mapping.max_chips")))
    rows = [
        (t, p, m)
        for t in sorted(ts)
        for p in sorted(ps)
        for m in sorted(ms)
        if t * p <= limit and (m <= p or m in ms - set(POWERS[:7]))
    ]
    arr = np.array(rows, dtype=float)
    return arr[None, :, 0], arr[None, :, 1], arr[None, :, 2]


def evaluate(
    P: Params, t: np.ndarray, p: np.ndarray, m: np.ndarray, tco_chip_s: np.ndarray
) -> dict[str, np.ndarray]:
    """Every mapping of every point: times, throughput, TCO per token, feasibility."""
    code = np.zeros(np.broadcast(P["heads"], t).shape, dtype=np.int8)

    def fail(mask: np.ndarray, why: int) -> None:
        code[(code == 0) & mask] = why

    # A ring splits heads (Megatron); the 2-D layout splits d_model and d_ff over both torus
    # axes (Pope et al.'s 2-D weight-stationary), so it needs d_model, not heads, to divide.
    split = np.where(P["ring2d"], P["d"], P["heads"])
    fail((split % t != 0) | (np.isfinite(P["fix_t"]) & (t != P["fix_t"])), HEADS)
    fail(P["d_ff"] % t != 0, FFN)
    fail(
        (P["batch"] % m != 0)
        | (np.isfinite(P["fix_p"]) & (p != P["fix_p"]))
        | (np.isfinite(P["fix_m"]) & (m != P["fix_m"]))
        | (p > P["layers"]),
        BATCH,
    )
    fail(t * p > P["max_chips"], CHIPS)
    fail((t * p > 1) & (P["c2c_gbps"] <= 0), LINK)
    mem = memory_per_chip(P, t, p, m)
    capacity = (P["mem_gb"] * 1e9 + P["sram_mb"] * 1e6) * P["headroom"]
    fail(mem["total"] > capacity, MEMORY)
    bw, resident = bandwidth(P, mem)
    dec = phase(P, t, p, m, False, bw)
    pre = phase(P, t, p, m, True, bw)
    fail(np.isfinite(P["max_latency_s"]) & (dec["latency_s"] > P["max_latency_s"]), LATENCY)
    chips = t * p
    tokens_s = P["batch"] / dec["latency_s"]
    prompt_tokens_s = P["batch"] * P["prompt"] / pre["latency_s"]
    return {
        "code": code,
        "t": np.broadcast_to(t, code.shape),
        "p": np.broadcast_to(p, code.shape),
        "m": np.broadcast_to(m, code.shape),
        "chips": np.broadcast_to(chips, code.shape),
        "decode_s": dec["latency_s"],
        "tokens_s": tokens_s,
        "ttft_s": pre["latency_s"],
        "decode_usd_per_token": tco_chip_s * chips / tokens_s,
        "prefill_usd_per_token": tco_chip_s * chips / prompt_tokens_s,
        "mem_total": mem["total"],
        "mem_weights": mem["weights"],
        "mem_kv": mem["kv"],
        "mem_act": mem["act"],
        "capacity": np.broadcast_to(capacity, code.shape),
        "sram_resident": resident,
        "layer_comm_s": dec["layer_comm_s"],
        "layer_compute_s": dec["layer_compute_s"],
    }


def _score(
    objective: np.ndarray, lat: np.ndarray, usd: np.ndarray, chips: np.ndarray, rate: np.ndarray
) -> np.ndarray:
    # Ties broken by the other metrics, so the choice is stable.
    tco = usd * (1 + 1e-9 * lat)
    latency = lat * (1 + 1e-9 * usd)
    throughput = chips / rate * (1 + 1e-9 * lat)
    return np.select(
        [objective == "latency", objective == "throughput"], [latency, throughput], tco
    )


def choose(ev: dict[str, np.ndarray], objective: np.ndarray) -> dict[str, np.ndarray]:
    """Per point: index of the best decode mapping, of the best prefill mapping, and of the
    attempt that got furthest (for the reason when nothing is feasible)."""
    ok = ev["code"] == 0
    obj = objective[:, None]
    dec = np.where(
        ok,
        _score(obj, ev["decode_s"], ev["decode_usd_per_token"], ev["chips"], ev["tokens_s"]),
        np.inf,
    )
    pre = np.where(
        ok,
        _score(obj, ev["ttft_s"], ev["prefill_usd_per_token"], ev["chips"], 1.0 / ev["ttft_s"]),
        np.inf,
    )
    furthest = ev["code"].astype(float) * 1e6 + ev["chips"] + 1e-3 * ev["t"]
    return {
        "feasible": ok.any(axis=1),
        "decode": np.argmin(dec, axis=1),
        "prefill": np.argmin(pre, axis=1),
        "closest": np.argmax(furthest, axis=1),
    }


def reason(ev: dict[str, np.ndarray], P: Params, row: int, k: int, names: dict[str, Any]) -> str:
    """Why mapping ``k`` of point ``row`` (the attempt that got furthest) is infeasible."""
    code = int(ev["code"][row, k])
    t, p, m = (int(ev[x][row, k]) for x in ("t", "p", "m"))
    g = lambda key: float(np.broadcast_to(P[key], ev["code"].shape)[row, k])  # noqa: E731
    if code == HEADS:
        if g("ring2d"):
            what = f"d_model={int(g('d'))} (the 2-D layout splits it over the torus)"
        else:
            what = f"num_heads={int(g('heads'))} (each device takes whole attention heads)"
        if np.isfinite(g("fix_t")):
            return f"tensor_parallel={int(g('fix_t'))} does not divide {what}"
        return f"no tensor-parallel degree up to max_chips divides {what}"
    if code == FFN:
        each = " (each expert's width)" if g("experts") > 0 else ""
        return f"tensor_parallel={t} does not divide d_ff={int(g('d_ff'))}{each}"
    if code == BATCH:
        return (
            f"the fixed mapping (pipeline_parallel, micro_batches) does not fit batch="
            f"{int(g('batch'))} and num_layers={int(g('layers'))}"
        )
    if code == CHIPS:
        return f"t*p = {t * p} chips exceeds mapping.max_chips={int(g('max_chips'))}"
    if code == LINK:
        return "more than one chip needs chip-to-chip links, but chip.c2c_gbps is 0"
    if code == MEMORY:
        gb = 1e9
        return (
            f"the model does not fit: with the most chips allowed (t={t}, p={p}, "
            f"max_chips={int(g('max_chips'))}) each chip needs "
            f"{ev['mem_total'][row, k] / gb:.2f} GB "
            f"(weights {ev['mem_weights'][row, k] / gb:.2f}, KV cache "
            f"{ev['mem_kv'][row, k] / gb:.2f} for batch {int(g('batch'))} x "
            f"{int(g('prompt') + g('gen'))} tokens, activations {ev['mem_act'][row, k] / gb:.2f}) "
            f"but holds {ev['capacity'][row, k] / gb:.2f} GB usable; raise max_chips, lower the "
            "batch or the lengths, or quantize"
        )
    if code == LATENCY:
        fastest = float(np.min(ev["decode_s"][row][ev["code"][row] == LATENCY]))
        return (
            f"even the fastest mapping that fits decodes at "
            f"{fastest * 1e3:.2f} ms/token, above mapping.max_latency_ms="
            f"{g('max_latency_s') * 1e3:g}"
        )
    return "feasible"
