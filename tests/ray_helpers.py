"""A local Ray cluster of the test's own: ``ray start --head --block`` on free ports, in a
temp dir of its own, with a fake count of LPUs (emulator devices), stopped at the end by
signalling that one process (never ``ray stop``, which stops every Ray cluster of the user on
the machine). Shared by tests/test_ray_serve.py and tests/test_ray_explore.py."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

import pytest

START_TIMEOUT_S = 120
STOP_TIMEOUT_S = 60


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _processes_of(marker: str) -> list[int]:
    """Pids of the processes whose command line or environment holds ``marker`` (the
    cluster's temp dir: workers rename themselves, but inherit the head's environment)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            text = (entry / "cmdline").read_bytes() + (entry / "environ").read_bytes()
        except OSError:  # gone, or not ours
            continue
        if marker.encode() in text:
            pids.append(int(entry.name))
    return pids


@contextlib.contextmanager
def ray_cluster(log_dir: Path, num_cpus: int = 2, lpus: int = 2) -> Iterator[str]:
    """Yields the address (127.0.0.1:port) of a running head node; stops it after, checking
    that none of its processes is left."""
    pytest.importorskip("ray", reason="Ray cannot be installed here: pip install 'hyperdex[ray]'")
    ray_bin = Path(sys.executable).with_name("ray")
    # short: Ray puts unix sockets under it (108-byte limit)
    temp = tempfile.mkdtemp(prefix="hdexray-", dir="/tmp")
    gcs, client, dash, agent_http, agent_grpc, metrics, env_agent = _free_ports(7)
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HYPERDEX_PROGRESS": "0",
        "HYPERDEX_LPU_LOCK_DIR": str(Path(temp) / "lpu-locks"),
        "RAY_USAGE_STATS_ENABLED": "0",
        # a throwaway cluster: no token, whether or not ~/.ray/auth_token exists (ray start
        # turns authentication on when it does, and the test's clients would lack the mode)
        "RAY_AUTH_MODE": "disabled",
    }
    env.pop("RAY_ADDRESS", None)
    cmd = [
        str(ray_bin), "start", "--head", "--block", "--disable-usage-stats",
        "--num-cpus", str(num_cpus), "--resources", json.dumps({"lpu": lpus}),
        "--port", str(gcs), "--ray-client-server-port", str(client),
        "--include-dashboard=false", "--dashboard-port", str(dash),
        "--dashboard-agent-listen-port", str(agent_http),
        "--dashboard-agent-grpc-port", str(agent_grpc),
        "--metrics-export-port", str(metrics), "--runtime-env-agent-port", str(env_agent),
        "--temp-dir", temp,
    ]  # fmt: skip
    log_path = log_dir / "ray-head.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
        )
    address = f"127.0.0.1:{gcs}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while "Ray runtime started" not in log_path.read_text(errors="replace"):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"ray start did not start:\n{log_path.read_text()[-4000:]}")
            time.sleep(0.5)
        yield address
    finally:
        proc.send_signal(signal.SIGTERM)  # ray start --block stops its cluster on SIGTERM
        try:
            proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        deadline = time.monotonic() + 20
        while (left := _processes_of(temp)) and time.monotonic() < deadline:
            time.sleep(0.5)
        for pid in left:  # ours (they run from our temp dir): never left behind
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(temp, ignore_errors=True)
        assert not left, f"processes of the Ray cluster outlived it: {left}"
