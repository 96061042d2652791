"""The explorer: hardware designs -> valid servers -> for every model and system point the best
mappings (decode and prefill apart) -> latency, throughput and TCO per token -> tables, plots.
"""

from __future__ import annotations

import contextlib
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Union

import numpy as np

from ..errors import ConfigError
from ..extras import require_extra
from ..tools.progress import progress_bar
from .hardware.chip import evaluate_chip, num
from .hardware.tco import evaluate_server
from .inputs.loader import (
    Input,
    PathLike,
    default_system,
    load_hardware,
    load_model,
    load_system,
    load_technology,
)
from .inputs.sweep import concat
from .mapping import search
from .outputs.tables import Table
from .perf.lpu import CostModelCache, hf_config
from .ray_runner import RayRunner

CHUNK_CELLS = 150_000  # points x mappings priced per numpy pass: bounded memory, few passes
LPU_MAX_DEVICES = 64


@dataclass
class ExploreResult:
    """What one ``explore()`` call found, and the files it wrote."""

    hardware_name: str
    model_name: str
    system_name: str
    hardware: Table  # every valid server design
    results: Table  # per design point: the chosen mappings and what they achieve
    invalid_designs: Counter = field(default_factory=Counter)  # reason -> count
    infeasible: Counter = field(default_factory=Counter)  # reason -> points without a mapping
    files: list[str] = field(default_factory=list)
    cost_model_calls: int = 0
    context: Any = field(default=None, repr=False)  # (designs, system sweep, model input)

    @property
    def feasible(self) -> Table:
        return self.results.select(self.results["feasible"])

    def best(self, key: str = "decode_usd_per_mtok") -> dict[str, Any]:
        """The feasible point with the lowest ``key``."""
        ok = self.feasible
        if not len(ok):
            raise ConfigError("no design point has a feasible mapping")
        return ok.row(int(np.nanargmin(ok[key])))

    def summary(self) -> str:
        ok = self.feasible
        lines = [
            f"{self.model_name} on {self.hardware_name} ({self.system_name}): "
            f"{len(self.hardware)} valid server designs, {len(self.results)} design points, "
            f"{len(ok)} with a feasible mapping"
        ]
        for why, n in self.invalid_designs.most_common(3):
            lines.append(f"  {n} hardware design(s) invalid: {why}")
        for why, n in self.infeasible.most_common(3):
            lines.append(f"  {n} point(s) without a mapping: {why}")
        if len(ok):
            b = self.best()
            lines.append(
                f"  cheapest per token: design {b['design']}, decode t={b['decode_t']:g} "
                f"p={b['decode_p']:g} m={b['decode_m']:g} ({b['decode_chips']:g} chips): "
                f"{b['decode_ms_per_token']:.3f} ms/token, {b['tokens_per_s']:.1f} tokens/s, "
                f"${b['decode_usd_per_mtok']:.4f} per 1M tokens; TTFT {b['ttft_ms']:.2f} ms"
            )
            f = self.best("decode_ms_per_token")
            lines.append(
                f"  fastest: design {f['design']}, t={f['decode_t']:g} p={f['decode_p']:g}: "
                f"{f['decode_ms_per_token']:.3f} ms/token, ${f['decode_usd_per_mtok']:.4f} per 1M"
            )
        for p in self.files:
            lines.append(f"  wrote {p}")
        return "\n".join(lines)


def hardware_designs(hw: Input) -> tuple[dict[str, np.ndarray], Counter, int]:
    """Every hardware design of the sweep (with its technology's constants), evaluated; only
    the valid ones are returned, with a count of why the others are not."""
    cols = hw.sweep.all_columns()
    parts = []
    for tech in dict.fromkeys(cols["chip.tech"]):
        tin = load_technology(tech)
        rows = np.flatnonzero(cols["chip.tech"] == tech)
        tcols = tin.sweep.all_columns()
        ri = np.repeat(rows, tin.size)
        ti = np.tile(np.arange(tin.size), len(rows))
        part = {k: v[ri] for k, v in cols.items()}
        part.update({f"tech.{k}": v[ti] for k, v in tcols.items() if k != "description"})
        parts.append(part)
    designs = concat(parts)
    total = len(designs["chip.tech"])
    chip, valid, reasons = evaluate_chip(designs)
    designs.update(chip)
    server, ok2, reasons2 = evaluate_server(designs, chip)
    designs.update(server)
    why = Counter(r for r in reasons if r)
    for i in np.flatnonzero(valid & ~ok2):
        why[reasons2[i]] += 1
    valid &= ok2
    return {k: v[valid] for k, v in designs.items()}, why, total


def _hardware_table(designs: dict[str, np.ndarray]) -> Table:
    keep = {"design": np.arange(len(designs["chip.tech"]))}
    for k, v in designs.items():
        if k.startswith("tech.") and k != "tech.name":
            continue
        if k in ("sources", "description"):
            continue
        keep[k] = v
    return Table(keep)


def explore(
    hardware: PathLike,
    model: PathLike,
    system: Optional[PathLike] = None,
    out_dir: Union[str, Path, None] = "outputs",
    plots: bool = True,
    progress: bool = True,
    ray: Union[str, RayRunner, None] = None,
) -> ExploreResult:
    """Sweeps ``hardware`` x ``system`` x ``model`` (each a preset name or a file; the model
    may be a HF config.json) and writes seed 004's outputs under ``out_dir/<hw>/`` (nothing
    is written when ``out_dir`` is None). ``ray``: evaluate the points as Ray tasks, on the
    cluster at that address ("local": a Ray instance of this process's own) or through a
    :class:`~.ray_runner.RayRunner`; the outputs are those of a local run, byte for byte."""
    if plots and out_dir is not None:  # before any work, not after the CSVs are written
        require_extra("explore(plots=True)", "explore", ["matplotlib"], why=" (or plots=False)")
    hw = load_hardware(hardware)
    mdl = load_model(model)
    sysin = load_system(system if system is not None else default_system(hw))
    designs, invalid, total = hardware_designs(hw)
    n_hw = len(designs["chip.tech"])
    if n_hw == 0:
        top = "; ".join(f"{n} x {why}" for why, n in invalid.most_common(3))
        raise ConfigError(
            f"empty sweep: none of the {total} hardware design(s) of {hw.path} is valid ({top})"
        )
    S, M = sysin.sweep, mdl.sweep
    n_points = n_hw * S.size * M.size
    lpu = hw.sweep.fields["kind"][0] == "lpu"
    S.hw_swept = [k for k in hw.sweep.swept if k in designs]  # type: ignore[attr-defined]
    with _runner(ray) as runner:
        run = _run_lpu if lpu else _run_analytical
        parts, infeasible, calls = run(designs, S, M, mdl, n_points, progress, runner)
    results = Table(_share_strings(concat(parts)))
    result = ExploreResult(
        hardware_name=hw.name,
        model_name=mdl.name,
        system_name=sysin.name,
        hardware=_hardware_table(designs),
        results=results,
        invalid_designs=invalid,
        infeasible=infeasible,
        cost_model_calls=calls,
        context=(designs, S, mdl),
    )
    if not results["feasible"].any():
        why, n = infeasible.most_common(1)[0]
        raise ConfigError(
            f"impossible mapping: none of the {n_points} design point(s) of {mdl.name} on "
            f"{hw.name} has a feasible mapping; {why}"
        )
    if out_dir is not None:
        base = Path(out_dir) / hw.name
        result.files += result.hardware.write(base / hw.name)
        result.files += results.write(base / mdl.name)
        if plots:
            from .outputs import plots as plot

            result.files.append(plot.pareto(result, base / f"{mdl.name}_pareto.png"))
            result.files.append(plot.roofline(result, hw, base / f"{mdl.name}_roofline.png"))
    return result


def _share_strings(columns: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Equal strings of the object columns as one object each: the pickle then stores every
    distinct string once, whether the rows were made here in one piece or in Ray tasks (which
    return copies), so the two pickles are equal byte for byte."""
    for key, values in columns.items():
        if values.dtype == object:
            seen: dict[str, str] = {}
            shared = [seen.setdefault(x, x) if isinstance(x, str) else x for x in values]
            out = np.empty(len(shared), dtype=object)
            out[:] = shared
            columns[key] = out
    return columns


def _point_columns(
    designs: dict[str, np.ndarray], S: Any, M: Any, idx: np.ndarray
) -> dict[str, np.ndarray]:
    per_design = S.size * M.size
    h = idx // per_design
    rest = idx % per_design
    cols = {k: v[h] for k, v in designs.items()}
    cols.update(S.columns(rest // M.size))
    cols.update(M.columns(rest % M.size))
    cols["design"] = h
    cols["point"] = idx
    return cols


def _identity(cols: dict[str, np.ndarray], S: Any, M: Any) -> dict[str, np.ndarray]:
    """The columns that say which point a result row is: its design and every swept field."""
    out = {"point": cols["point"], "design": cols["design"], "model": cols["model.name"]}
    for name in getattr(S, "hw_swept", []) + S.swept + M.swept:
        out[name] = cols[name]
    for name in (
        "workload.batch",
        "workload.prompt_len",
        "workload.gen_len",
        "model.quantization",
        "mapping.objective",
    ):
        out.setdefault(name, cols[name])
    return out


def _run_analytical(
    designs: dict[str, np.ndarray],
    S: Any,
    M: Any,
    mdl: Input,
    n_points: int,
    progress: bool,
    runner: Optional[RayRunner],
) -> tuple[list[dict[str, np.ndarray]], Counter, int]:
    probe = _point_columns(designs, S, M, np.arange(min(n_points, 1)))
    probe_all = {k: v for k, v in S.all_columns().items()}
    T, Pp, Mm = search.candidates({**probe, **probe_all})
    k = T.shape[1]
    chunk = max(1, CHUNK_CELLS // k)
    # the same chunks locally and on Ray: equal numpy passes, equal bits
    ranges = [(a, min(n_points, a + chunk)) for a in range(0, n_points, chunk)]
    shared = (designs, S, M, T, Pp, Mm)
    return _gather(_analytical_chunk, shared, ranges, n_points, "design points", progress, runner)


def _analytical_chunk(
    shared: tuple[Any, ...], start: int, stop: int, tick: Optional[Callable[[int], Any]] = None
) -> tuple[dict[str, np.ndarray], Counter, int]:
    """Points start..stop-1, every mapping priced in one numpy pass."""
    designs, S, M, T, Pp, Mm = shared
    idx = np.arange(start, stop)
    cols = _point_columns(designs, S, M, idx)
    P = search.params(cols)
    tco = num(cols["tco_usd_per_chip_s"])[:, None]
    ev = search.evaluate(P, T, Pp, Mm, tco)
    ch = search.choose(ev, cols["mapping.objective"])
    infeasible: Counter = Counter()
    part = _analytical_rows(cols, S, M, P, ev, ch, infeasible)
    if tick is not None:
        tick(len(idx))
    return part, infeasible, 0


def _gather(
    fn: Callable[..., tuple[dict[str, np.ndarray], Counter, int]],
    shared: tuple[Any, ...],
    ranges: list[tuple[int, int]],
    n_points: int,
    desc: str,
    progress: bool,
    runner: Optional[RayRunner],
) -> tuple[list[dict[str, np.ndarray]], Counter, int]:
    """``fn`` over the ranges, here or as Ray tasks; parts and reasons in the ranges' order."""
    parts: list[dict[str, np.ndarray]] = []
    infeasible: Counter = Counter()  # merged in order: most_common() breaks ties the same way
    calls = 0
    if runner is not None:
        results = runner.map(fn, shared, ranges, desc, progress)
    else:
        with progress_bar(n_points, desc, "pt", enabled=progress) as bar:
            results = [fn(shared, a, b, bar.update) for a, b in ranges]
    for part, why, n in results:
        parts.append(part)
        infeasible.update(why)
        calls += n
    return parts, infeasible, calls


@contextlib.contextmanager
def _runner(ray: Union[str, RayRunner, None]) -> Iterator[Optional[RayRunner]]:
    if ray is None or isinstance(ray, RayRunner):
        yield ray
        return
    with RayRunner(ray) as runner:
        yield runner


def _analytical_rows(
    cols: dict[str, np.ndarray],
    S: Any,
    M: Any,
    P: Any,
    ev: dict[str, np.ndarray],
    ch: dict[str, np.ndarray],
    infeasible: Counter,
) -> dict[str, np.ndarray]:
    rows = np.arange(len(ch["decode"]))
    d, pf = ch["decode"], ch["prefill"]
    ok = ch["feasible"]
    g = lambda key, which: np.where(ok, ev[key][rows, which], np.nan)  # noqa: E731
    reasons = np.array([""] * len(rows), dtype=object)
    for r in np.flatnonzero(~ok):
        text = search.reason(ev, P, int(r), int(ch["closest"][r]), {})
        reasons[r] = text
        infeasible[text] += 1
    out = _identity(cols, S, M)
    decode_ms = g("decode_s", d) * 1e3
    ttft_ms = g("ttft_s", pf) * 1e3
    gen = num(cols["workload.gen_len"])
    out.update(
        {
            "feasible": ok,
            "reason": reasons,
            "engine": np.full(len(rows), "roofline", dtype=object),
            "decode_t": g("t", d),
            "decode_p": g("p", d),
            "decode_m": g("m", d),
            "decode_chips": g("chips", d),
            "decode_ms_per_token": decode_ms,
            "tokens_per_s": g("tokens_s", d),
            "tokens_per_s_per_chip": g("tokens_s", d) / g("chips", d),
            "decode_usd_per_mtok": g("decode_usd_per_token", d) * 1e6,
            "prefill_t": g("t", pf),
            "prefill_p": g("p", pf),
            "prefill_m": g("m", pf),
            "ttft_ms": ttft_ms,
            "prefill_usd_per_mtok": g("prefill_usd_per_token", pf) * 1e6,
            "e2e_latency_ms": ttft_ms + (gen - 1) * decode_ms,  # prefill emits token 1
            "mem_gb_per_chip": g("mem_total", d) / 1e9,
            "weights_in_sram": np.where(ok, ev["sram_resident"][rows, d], False),
            "comm_share": g("layer_comm_s", d) / (g("layer_comm_s", d) + g("layer_compute_s", d)),
            "bandwidth_utilization": np.full(len(rows), np.nan),
            "peak_tflops": num(cols["peak_tflops"]),
            "mem_gbps_per_chip": num(cols["mem_gbps_per_chip"]),
            "tco_usd_per_chip_year": num(cols["tco_usd_per_chip_year"]),
        }
    )
    return out


def _run_lpu(
    designs: dict[str, np.ndarray],
    S: Any,
    M: Any,
    mdl: Input,
    n_points: int,
    progress: bool,
    runner: Optional[RayRunner],
) -> tuple[list[dict[str, np.ndarray]], Counter, int]:
    """LPU points: every power-of-two ring of devices priced by the cost model (cached)."""
    device_keys = [k for k in designs if k.startswith("device.")]
    shared = (designs, S, M, mdl.raw.get("hf_config"), device_keys)
    # one range here (one cache for all); on Ray contiguous ranges, which share designs
    ranges = [(0, n_points)] if runner is None else runner.ranges(n_points)
    desc = "design points (cost model)"
    return _gather(_lpu_chunk, shared, ranges, n_points, desc, progress, runner)


def _lpu_chunk(
    shared: tuple[Any, ...], start: int, stop: int, tick: Optional[Callable[[int], Any]] = None
) -> tuple[dict[str, np.ndarray], Counter, int]:
    """Points start..stop-1 on a cost-model cache of their own."""
    designs, S, M, hf, device_keys = shared
    infeasible: Counter = Counter()
    rows: list[dict[str, Any]] = []
    cols = _point_columns(designs, S, M, np.arange(start, stop))
    cache = CostModelCache()
    try:
        for i in range(stop - start):
            rows.append(_lpu_point(cols, i, device_keys, hf, cache, infeasible))
            if tick is not None:
                tick(1)
    finally:
        cache.close()
    out = _identity(cols, S, M)
    for key in rows[0]:
        out[key] = np.array(
            [r[key] for r in rows], dtype=object if key in ("reason", "engine") else None
        )
    out["peak_tflops"] = num(cols["peak_tflops"])
    out["mem_gbps_per_chip"] = num(cols["mem_gbps_per_chip"])
    out["tco_usd_per_chip_year"] = num(cols["tco_usd_per_chip_year"])
    return out, infeasible, cache.calls


def _lpu_point(
    cols: dict[str, np.ndarray],
    i: int,
    device_keys: list[str],
    hf: Optional[dict[str, Any]],
    cache: CostModelCache,
    infeasible: Counter,
) -> dict[str, Any]:
    v = lambda k: cols[k][i]  # noqa: E731
    row: dict[str, Any] = {
        "feasible": False,
        "reason": "",
        "engine": "cost model",
        "decode_t": np.nan,
        "decode_p": np.nan,
        "decode_m": np.nan,
        "decode_chips": np.nan,
        "decode_ms_per_token": np.nan,
        "tokens_per_s": np.nan,
        "tokens_per_s_per_chip": np.nan,
        "decode_usd_per_mtok": np.nan,
        "prefill_t": np.nan,
        "prefill_p": np.nan,
        "prefill_m": np.nan,
        "ttft_ms": np.nan,
        "prefill_usd_per_mtok": np.nan,
        "e2e_latency_ms": np.nan,
        "mem_gb_per_chip": np.nan,
        "weights_in_sram": False,
        "comm_share": np.nan,
        "bandwidth_utilization": np.nan,
    }

    def reject(why: str) -> dict[str, Any]:
        row["reason"] = why
        infeasible[why] += 1
        return row

    if int(v("workload.batch")) != 1:
        return reject(
            "an LPU decodes at batch 1 (the cost model prices the batch-1 programs); "
            "set workload.batch: 1"
        )
    if int(v("model.kv_bits")) != 16:
        return reject("the cost model's programs keep the KV cache in fp16 (kv_bits: 16)")
    fix_p = v("mapping.pipeline_parallel")
    if fix_p not in ("auto", None) and int(fix_p) != 1:
        return reject("LPU devices form one tensor-parallel ring; pipeline_parallel must be 1")
    device = {k.split(".", 1)[1]: v(k) for k in device_keys}
    device = {k: (x.item() if hasattr(x, "item") else x) for k, x in device.items()}
    model = {k.split(".", 1)[1]: v(k) for k in cols if k.startswith("model.")}
    prompt, gen = int(v("workload.prompt_len")), int(v("workload.gen_len"))
    try:
        config = hf_config(model, hf, prompt + gen)
    except Exception as err:  # HyperdexError: no registry architecture of that shape
        return reject(f"cost model: {err}")
    fix_t = v("mapping.tensor_parallel")
    limit = min(int(v("mapping.max_chips")), LPU_MAX_DEVICES)
    if fix_t not in ("auto", None):
        ts = [int(fix_t)]
    else:
        ts = [2**j for j in range(int(math.log2(limit)) + 1)]
    tco_chip_s = float(v("tco_usd_per_chip_s"))
    objective = v("mapping.objective")
    max_lat = v("mapping.max_latency_ms")
    options, last_error = [], ""
    for t in ts:
        res = cache.estimate(device, config, t, prompt, gen, str(v("model.quantization")))
        if isinstance(res, str):
            last_error = res
            if "does not fit" in res:
                continue  # more devices may hold it
            if fix_t in ("auto", None) and "power of two" not in res:
                break  # the same answer for every ring size
            continue
        if max_lat is not None and res["decode_ms_per_token"] > max_lat:
            last_error = (
                f"even {t} devices decode at {res['decode_ms_per_token']:.2f} ms/token, "
                f"above mapping.max_latency_ms={max_lat:g}"
            )
            continue
        options.append((t, res))
    if not options:
        return reject(last_error or "no ring of devices up to mapping.max_chips holds the model")

    def score(t: int, r: dict[str, Any], phase: str) -> tuple[float, float]:
        lat = r["decode_ms_per_token"] if phase == "decode" else r["prefill_ms"]
        usd = tco_chip_s * t * lat / 1e3
        if objective == "latency":
            return (lat, usd)
        if objective == "throughput":
            return (t * lat, lat)
        return (usd, lat)

    t_d, r_d = min(options, key=lambda o: score(o[0], o[1], "decode"))
    t_p, r_p = min(options, key=lambda o: score(o[0], o[1], "prefill"))
    decode_ms = r_d["decode_ms_per_token"]
    row.update(
        {
            "feasible": True,
            "decode_t": t_d,
            "decode_p": 1,
            "decode_m": 1,
            "decode_chips": t_d,
            "decode_ms_per_token": decode_ms,
            "tokens_per_s": 1e3 / decode_ms,
            "tokens_per_s_per_chip": 1e3 / decode_ms / t_d,
            "decode_usd_per_mtok": tco_chip_s * t_d * decode_ms / 1e3 * 1e6,
            "prefill_t": t_p,
            "prefill_p": 1,
            "prefill_m": 1,
            "ttft_ms": r_p["prefill_ms"],
            "prefill_usd_per_mtok": tco_chip_s * t_p * r_p["prefill_ms"] / 1e3 / prompt * 1e6,
            "e2e_latency_ms": r_p["prefill_ms"] + (gen - 1) * decode_ms,
            "bandwidth_utilization": r_d["bandwidth_utilization"],
        }
    )
    return row
