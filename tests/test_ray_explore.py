"""hdex-explore --ray: the same sweep locally and as Ray tasks on a local Ray cluster of this
module's own, file for file (CSV, pickle, both plots); the CLI with its progress bar; an
address that does not answer. The cluster is stopped at the end, also on failure."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest

yaml = pytest.importorskip("yaml")
pytest.importorskip("matplotlib")

from ray_helpers import ray_cluster  # noqa: E402
from serve_helpers import free_port  # noqa: E402

from hyperdex.explore import explore  # noqa: E402
from hyperdex.explore.ray_runner import RayRunner  # noqa: E402

PRESETS = Path(__file__).resolve().parents[1] / "hyperdex" / "explore" / "presets"

# 10 x 10 x 10 chip designs x 4 batches x 2 chip limits = 8,000 points: several numpy
# chunks, so several tasks
HARDWARE = {
    "name": "raysweep",
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
        "mem_gbps_per_stack": 400.0,
    },
    "server": {"packages": 8},
}
SYSTEM = {
    "workload": {"batch": [1, 8, 32, 64], "prompt_len": 512, "gen_len": 128},
    "mapping": {"max_chips": [1, 64], "objective": "tco"},  # 1 chip: 70B does not fit
}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[str]:
    with ray_cluster(tmp_path_factory.mktemp("ray-explore-cluster"), lpus=0) as address:
        yield address


class CountingRunner(RayRunner):
    """Records how many ranges each sweep was split into."""

    split: list[int] = []

    def map(self, fn: Any, shared: Any, ranges: list, desc: str, progress: bool) -> list:
        self.split.append(len(ranges))
        return super().map(fn, shared, ranges, desc, progress)


@pytest.fixture(scope="module")
def runner(cluster) -> Iterator[CountingRunner]:
    """This process connected to the cluster for the whole module; disconnected before the
    cluster stops."""
    import ray

    ray.init(address=cluster, logging_level="warning", log_to_driver=False)
    try:
        with CountingRunner(cluster) as r:
            yield r
    finally:
        ray.shutdown()


# -- without Ray: the extra is named, flags are checked, before any work ------------------------


def test_the_ray_extra_is_named_before_any_work(monkeypatch, tmp_path, capsys) -> None:
    import hyperdex.extras as extras
    from hyperdex.explore.cli import main as explore_main
    from hyperdex.serving.cli import main as serve_main

    installed = extras._installed
    monkeypatch.setattr(extras, "_installed", lambda m: m != "ray" and installed(m))
    assert explore_main(["-hw", "tpuv4", "-m", "gpt3", "-o", str(tmp_path), "--ray"]) == 1
    assert "hdex-explore --ray needs ray: pip install 'hyperdex[ray]'" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())
    assert serve_main([str(tmp_path / "model"), "--ray", "--replicas", "2"]) == 1
    assert "hdex-serve --ray needs ray: pip install 'hyperdex[ray]'" in capsys.readouterr().err


def test_replicas_need_ray(tmp_path, capsys) -> None:
    from hyperdex.serving.cli import main as serve_main

    for args, says in ((["--replicas", "2"], "--replicas needs --ray"),
                       (["--ray", "--replicas", "0"], "--replicas: must be >= 1")):  # fmt: skip
        with pytest.raises(SystemExit) as done:
            serve_main([str(tmp_path / "model"), *args])
        assert done.value.code == 2
        assert says in capsys.readouterr().err


# -- on a local Ray cluster ---------------------------------------------------------------------


def _write(tmp: Path, name: str, data: dict[str, Any]) -> Path:
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def _same_outputs(local: Any, remote: Any, local_dir: Path, ray_dir: Path) -> None:
    a, b = _files(local_dir), _files(ray_dir)
    assert sorted(a) == sorted(b) and len(a) == 6, sorted(a)  # 2 CSV, 2 pickles, 2 plots
    for name in a:
        assert a[name] == b[name], f"{name} differs between the local and the Ray run"
    assert list(local.infeasible.items()) == list(remote.infeasible.items())
    strip = lambda r, d: r.summary().replace(str(d), "OUT")  # noqa: E731
    assert strip(local, local_dir) == strip(remote, ray_dir)


def test_analytical_sweep_on_ray_equals_the_local_run(runner, tmp_path) -> None:
    hw = _write(tmp_path, "hw", HARDWARE)
    system = _write(tmp_path, "system", SYSTEM)
    local = explore(hw, "llama2-70b", system, out_dir=tmp_path / "local", progress=False)
    remote = explore(hw, "llama2-70b", system, out_dir=tmp_path / "ray", progress=False, ray=runner)
    assert len(local.results) == 8000
    assert runner.split[-1] > 1  # several numpy chunks: several tasks
    assert local.infeasible  # one chip cannot hold 70B: reasons are compared too
    _same_outputs(local, remote, tmp_path / "local", tmp_path / "ray")


def test_lpu_sweep_on_ray_equals_the_local_run(runner, tmp_path) -> None:
    hw = yaml.safe_load((PRESETS / "hardware" / "u55c.yaml").read_text())
    hw["device"]["clock_mhz"] = [200.0, 220.0, 250.0]
    hw["server"]["packages"] = [2, 4, 8]
    hw["package"]["price_usd"] = [3000.0, 4395.0]
    system = {
        "workload": {"batch": [1, 2], "prompt_len": 32, "gen_len": 16},
        "mapping": {"max_chips": 4, "objective": ["latency", "tco"], "pipeline_parallel": 1},
    }
    hw_path, sys_path = _write(tmp_path, "hw", hw), _write(tmp_path, "system", system)
    local = explore(hw_path, "opt-1.3b", sys_path, out_dir=tmp_path / "local", progress=False)
    remote = explore(
        hw_path, "opt-1.3b", sys_path, out_dir=tmp_path / "ray", progress=False, ray=runner
    )
    assert len(local.results) == 3 * 3 * 2 * 2 * 2
    assert runner.split[-1] > 1  # really split into tasks
    _same_outputs(local, remote, tmp_path / "local", tmp_path / "ray")


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HYPERDEX_PROGRESS": "1"}
    env.pop("RAY_ADDRESS", None)
    return subprocess.run(
        [sys.executable, "-m", "hyperdex.explore.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        stdin=subprocess.DEVNULL,
    )


def test_cli_with_ray_shows_progress_and_writes_the_outputs(cluster, tmp_path) -> None:
    hw, system = _write(tmp_path, "hw", HARDWARE), _write(tmp_path, "system", SYSTEM)
    done = _cli("-hw", str(hw), "-m", "llama2-70b", "-s", str(system), "-o", str(tmp_path / "o"),
                "--no-plots", "--ray", cluster)  # fmt: skip
    assert done.returncode == 0, done.stderr[-8000:]
    assert "design points on Ray" in done.stderr and "8000/8000" in done.stderr
    assert (tmp_path / "o" / "raysweep" / "llama2-70b.csv").is_file()
    assert "8000 design points" in done.stdout


def test_cli_address_that_does_not_answer(tmp_path) -> None:
    port = free_port()
    done = _cli("-hw", "tpuv4", "-m", "gpt3", "-o", str(tmp_path), "--ray", f"127.0.0.1:{port}")
    assert done.returncode == 1
    assert f"hdex-explore: no Ray cluster answers at 127.0.0.1:{port}" in done.stderr
    assert not any(tmp_path.iterdir())  # nothing written
