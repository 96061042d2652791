"""How long a 10,000-point design-space sweep takes (issue 6: under a minute, with a progress
bar). One command:

    python benchmarks/explore_sweep.py            # prints the timing; writes under a temp dir

The sweep: a 7 nm accelerator with 10 matrix rates x 10 SRAM sizes x 10 HBM stack bandwidths
x 10 chip-to-chip bandwidths = 10,000 server designs, each given Llama-2-13B at batch 8 and
the full mapping search (tensor x pipeline x micro-batches) for decode and for prefill.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

HARDWARE = {
    "name": "sweep10k",
    "kind": "analytical",
    "chip": {
        "tech": "7nm",
        "peak_tflops": [float(x) for x in np.linspace(50, 500, 10)],
        "vector_tflops": 10.0,
        "sram_mb": [float(x) for x in np.linspace(32, 320, 10)],
        "sram_gbps": 20000.0,
        "die_area_mm2": 600.0,
        "tdp_w": 400.0,
        "c2c_links": 4,
        "c2c_gbps": [float(x) for x in np.linspace(25, 250, 10)],
        "c2c_latency_us": 1.0,
    },
    "package": {
        "mem_type": "hbm2e",
        "mem_stacks": 4,
        "mem_gb_per_stack": 16.0,
        "mem_gbps_per_stack": [float(x) for x in np.linspace(200, 800, 10)],
    },
    "server": {"packages": 8},
}
SYSTEM = {
    "workload": {"batch": 8, "prompt_len": 512, "gen_len": 128},
    "mapping": {"max_chips": 64, "objective": "tco"},
}

# LPU designs on the cost model: 5 HBM bandwidths x 5 MAC-tree counts = 25 device designs (the
# instruction streams), x 4 server sizes x 10 board prices x 10 system points = 10,000 points.
LPU = {
    "name": "lpu10k",
    "kind": "lpu",
    "system": "lpu",
    "chip": {"tech": "16nm", "tdp_w": 150.0, "c2c_links": 2, "c2c_gbps": 12.5},
    "package": {
        "mem_type": "hbm2",
        "mem_stacks": 2,
        "mem_gb_per_stack": 8.0,
        "mem_gbps_per_stack": 230.0,
        "price_usd": [float(x) for x in np.linspace(2000, 11000, 10)],
    },
    "server": {"packages": [2, 4, 8, 16]},
    "device": {
        "preset": "u55c",
        "hbm_bandwidth_gbps": [230.0, 460.0, 920.0, 1840.0, 3680.0],
        "mac_trees": [16, 32, 64, 128, 256],
    },
}
LPU_SYSTEM = {
    "workload": {"batch": 1, "prompt_len": 128, "gen_len": 128},
    "mapping": {
        "max_chips": 16,
        "pipeline_parallel": 1,
        "objective": ["latency", "tco"],
        "max_latency_ms": [5.0, 10.0, 20.0, 50.0, 100.0],
    },
}


def run(label: str, hardware: dict, system: dict, model: str) -> bool:
    from hyperdex.explore import explore

    with tempfile.TemporaryDirectory() as tmp:
        hw = Path(tmp) / "hw.yaml"
        hw.write_text(yaml.safe_dump(hardware))
        sy = Path(tmp) / "system.yaml"
        sy.write_text(yaml.safe_dump(system))
        start = time.perf_counter()
        r = explore(
            hw,
            model,
            sy,
            out_dir=Path(tmp) / "outputs",
            plots=True,
            progress=os.environ.get("HYPERDEX_PROGRESS", "1") != "0",
        )
        wall = time.perf_counter() - start
    n = len(r.results)
    calls = f", {r.cost_model_calls} cost-model runs" if r.cost_model_calls else ""
    print(
        f"{label}: {n} design points ({int(r.results['feasible'].sum())} feasible), "
        f"{len(r.hardware)} server designs, {model}{calls}: {wall:.1f} s wall "
        f"({n / wall:.0f} points/s) including CSV, pickle and plots",
        flush=True,
    )
    return n >= 10_000 and wall < 60


def main() -> int:
    ok = run("roofline (7 nm accelerator)", HARDWARE, SYSTEM, "llama2-13b")
    ok &= run("cost model (LPU on u55c-like boards)", LPU, LPU_SYSTEM, "opt-1.3b")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
