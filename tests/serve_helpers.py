"""hdex-serve in a subprocess on a free loopback port, raw HTTP to it, and a reference greedy
decoder built on the model's forward logits: shared by the serving, endpoint and vLLM tests."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import numpy as np
import pytest

KEY = "test-key-123"
NAME = "smollm2"
START_TIMEOUT_S = 120
LOGS: dict[str, Path] = {}  # base URL -> the server's log


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(base: str, path: str, body: bytes | None = None, key: str | None = KEY, method=None):
    """(status, parsed JSON body) of a raw request."""
    req = urllib.request.Request(base + path, data=body, method=method)
    if key:
        req.add_header("Authorization", f"Bearer {key}")
    if body is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def post(base: str, path: str, data: dict[str, Any], key: str | None = KEY):
    return http(base, path, json.dumps(data).encode(), key=key)


@contextlib.contextmanager
def serving(
    path: Path, log_path: Path, *args: str, scheme: str = "http", context=None
) -> Iterator[tuple[subprocess.Popen, str]]:
    """(process, base URL) of hdex-serve on a free loopback port, once /health answers 200;
    stopped (SIGTERM) after."""
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HYPERDEX_PROGRESS": "0"}
    env.pop("HDEX_API_KEY", None)
    cmd = [sys.executable, "-m", "hyperdex.serving.cli", str(path), "--port", str(port)]
    cmd += ["--served-model-name", NAME, "--api-key", KEY, "--log-level", "warning", *args]
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
        )
    base = f"{scheme}://127.0.0.1:{port}"
    LOGS[base] = log_path
    deadline = time.monotonic() + START_TIMEOUT_S
    try:
        while True:
            try:
                with urllib.request.urlopen(base + "/health", timeout=5, context=context) as r:
                    if r.status == 200:
                        break
            except OSError:  # refused, or 503 while the model loads
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"hdex-serve did not start:\n{log_path.read_text()}")
            time.sleep(0.2)
        yield proc, base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """In float64, over the last axis."""
    x = np.asarray(logits, dtype=np.float64)
    peak = x.max(axis=-1, keepdims=True)
    return x - peak - np.log(np.exp(x - peak).sum(axis=-1, keepdims=True))


def forward_log_softmax(model: Any, ids: list[int]) -> np.ndarray:
    """log_softmax of the model's forward logits, [len(ids), vocab]: row i predicts ids[i + 1]."""
    return log_softmax(np.asarray(model(np.array([ids], dtype=np.int64)).logits)[0])


def greedy_reference(
    model: Any,
    prompt: list[int],
    steps: int,
    adjust: Optional[Callable[[np.ndarray, list[int]], np.ndarray]] = None,
) -> list[int]:
    """Greedy tokens from full forward passes, independent of the generation code:
    ``adjust(logits, generated so far)`` changes the last position's logits first."""
    out: list[int] = []
    for _ in range(steps):
        logits = np.asarray(model(np.array([prompt + out], dtype=np.int64)).logits)[0, -1]
        logits = logits.astype(np.float64)
        if adjust is not None:
            logits = adjust(logits, out)
        out.append(int(np.argmax(logits)))
    return out
