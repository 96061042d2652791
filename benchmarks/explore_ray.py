"""Design points per second of a 1,000,000-point sweep: the local engine against the same sweep
as Ray tasks (issue 21; docs/benchmarks.md). One command:

    python benchmarks/explore_ray.py                       # a local Ray instance, every CPU
    python benchmarks/explore_ray.py --address HOST:PORT   # a running cluster
    python benchmarks/explore_ray.py --system-points 10    # 100,000 points, quicker

The sweep: benchmarks/explore_sweep.py's 10,000 server designs (a 7 nm accelerator, 10 matrix
rates x 10 SRAM sizes x 10 HBM bandwidths x 10 link bandwidths) x 100 system points (10
batches x 10 output lengths) = 1,000,000 design points, Llama-2-13B, the full mapping search
for decode and for prefill. Timed: ``explore(out_dir=None)``, the evaluation (the CSV, pickle
and plots are written by the calling process either way, and tests/test_ray_explore.py checks
that they are equal byte for byte); the Ray instance is started before the clock starts.
The two results are compared column by column.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from explore_sweep import HARDWARE  # noqa: E402  (the 10,000 designs)

BATCHES = [1, 2, 4, 8, 12, 16, 24, 32, 48, 64]


def system(points: int) -> dict[str, Any]:
    gen = [64 * (i + 1) for i in range(max(1, points // len(BATCHES)))]
    batch = BATCHES[: min(points, len(BATCHES))]
    return {
        "workload": {"batch": batch, "prompt_len": 512, "gen_len": gen},
        "mapping": {"max_chips": 64, "objective": "tco"},
    }


def same(a: Any, b: Any) -> bool:
    if list(a.results.columns) != list(b.results.columns):
        return False
    for key in a.results.columns:
        x, y = a.results[key], b.results[key]
        if x.dtype == object or y.dtype == object:
            if x.dtype != y.dtype or list(x) != list(y):
                return False
        elif not np.array_equal(x, y, equal_nan=x.dtype.kind == "f"):
            return False
    return True


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--address", default="local", help="Ray address (default: a local instance)")
    p.add_argument("--num-cpus", type=int, default=os.cpu_count(), help="local instance's CPUs")
    p.add_argument("--system-points", type=int, default=100, help="x 10,000 designs (100)")
    args = p.parse_args()
    from hyperdex.explore import explore
    from hyperdex.explore.ray_runner import RayRunner

    progress = os.environ.get("HYPERDEX_PROGRESS", "1") != "0"
    with tempfile.TemporaryDirectory() as tmp:
        hw = Path(tmp) / "hw.yaml"
        hw.write_text(yaml.safe_dump(HARDWARE))
        sy = Path(tmp) / "system.yaml"
        sy.write_text(yaml.safe_dump(system(args.system_points)))
        with RayRunner(args.address, num_cpus=args.num_cpus) as runner:
            import ray

            cpus = int(ray.cluster_resources().get("CPU", 0))
            runs = {}
            for label, ray_arg in (("local", None), (f"Ray ({cpus} CPUs)", runner)):
                start = time.perf_counter()
                r = explore(hw, "llama2-13b", sy, out_dir=None, plots=False, progress=progress,
                            ray=ray_arg)  # fmt: skip
                wall = time.perf_counter() - start
                runs[label] = r
                n = len(r.results)
                print(f"{label}: {n:,} design points in {wall:.1f} s: {n / wall:,.0f} points/s",
                      flush=True)  # fmt: skip
    local, remote = runs.values()
    ok = same(local, remote)
    print("results equal:", ok)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
