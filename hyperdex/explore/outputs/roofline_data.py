"""The operators of one chosen design point, as roofline points: (name, FLOP per byte,
attained TFLOP/s), with the chip's sustained roofs."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from ..hardware.chip import num

if TYPE_CHECKING:
    from ..core import ExploreResult
    from ..inputs.loader import Input

Point = tuple[str, float, float]


def operator_points(
    result: ExploreResult, hw: Input, best: dict[str, Any]
) -> tuple[list[Point], float, float, str]:
    from ..core import _point_columns

    designs, S, mdl = result.context
    cols = _point_columns(designs, S, mdl.sweep, np.array([best["point"]]))
    if best["engine"] == "cost model":
        return _lpu_points(cols, mdl, best)
    from ..mapping.search import params
    from ..perf.roofline import bandwidth, memory_per_chip, phase

    P = params(cols)
    t, p, m = (np.array([[best[k]]], dtype=float) for k in ("decode_t", "decode_p", "decode_m"))
    mem = memory_per_chip(P, t, p, m)
    bw, _ = bandwidth(P, mem)
    ph = phase(P, t, p, m, False, bw, detail=True)
    pts: list[Point] = []
    fused = bool(P["fused"][0, 0])
    for op, sec in zip(ph["ops"], ph["op_s"]):  # type: ignore[call-overload]
        if fused and op.kind != "matrix":
            continue  # rides inside a matrix kernel: no point of its own
        flops, nbytes, s = (
            float(np.ravel(op.flops)[0]),
            float(np.ravel(op.bytes)[0]),
            float(np.ravel(sec)[0]),
        )
        if flops > 0 and nbytes > 0 and s > 0:
            pts.append((op.name, flops / nbytes, flops / s / 1e12))
    peak = float(P["peak_tflops"][0, 0] * P["eff_compute"][0, 0])
    title = (
        f"{result.model_name} decode on design {best['design']} of {result.hardware_name}: "
        f"t={best['decode_t']:g} p={best['decode_p']:g} batch {best['workload.batch']:g}"
    )
    return pts, peak, float(bw[0, 0]) / 1e12, title


def _lpu_points(
    cols: dict[str, np.ndarray], mdl: Input, best: dict[str, Any]
) -> tuple[list[Point], float, float, str]:
    from ..perf.lpu import CostModelCache, hf_config

    cache = CostModelCache()
    try:
        device = {
            k.split(".", 1)[1]: (v[0].item() if hasattr(v[0], "item") else v[0])
            for k, v in cols.items()
            if k.startswith("device.")
        }
        model = {k.split(".", 1)[1]: v[0] for k, v in cols.items() if k.startswith("model.")}
        prompt, gen = int(cols["workload.prompt_len"][0]), int(cols["workload.gen_len"][0])
        res = cache.estimate(
            device,
            hf_config(model, mdl.raw.get("hf_config"), prompt + gen),
            int(best["decode_t"]),
            prompt,
            gen,
            str(model["quantization"]),
        )
    finally:
        cache.close()
    pts: list[Point] = []
    groups: dict[str, list[float]] = {}
    if isinstance(res, dict):
        for _, role, us, nbytes, macs in res["instructions"]:
            g = groups.setdefault(role, [0.0, 0.0, 0.0])
            g[0] += 2.0 * macs
            g[1] += nbytes
            g[2] += us * 1e-6
    for role, (flops, nbytes, s) in groups.items():
        if flops > 0 and nbytes > 0 and s > 0:
            pts.append((role, flops / nbytes, flops / s / 1e12))
    peak = float(num(cols["peak_tflops"])[0])
    bw = float(num(cols["mem_gbps_per_chip"])[0]) / 1e3
    title = (
        f"{mdl.name} decode on LPU design {best['design']} (cost model, "
        f"{int(best['decode_t'])} device(s))"
    )
    return pts, peak, bw, title
