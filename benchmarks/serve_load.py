"""Load on hdex-serve: N concurrent streaming clients on 127.0.0.1, bounded in count and time.

Starts the real server (a subprocess, a free loopback port, an API key) on SmolLM2-135M-
Instruct, warms it up, then runs two identical rounds: every client sends ``--requests``
streaming chat requests one after another (``ignore_eos``, so every answer has
``--max-tokens`` tokens). Reports requests done, errors (must be 0), time to first token and
time between tokens (p50/p99, as the clients see them: a batch-1 device serves one request at
a time, so time to first token includes the wait in the queue), and the server's resident
memory before and after each round (it must not grow from round to round).

    python benchmarks/serve_load.py [--clients 16] [--requests 2] [--max-tokens 16]

Exits 1 when a request failed or memory grew by more than ``--max-growth-mb`` between rounds.
Only loopback traffic; the whole run stops after ``--deadline`` seconds whatever happens.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

KEY = "bench-key"
NAME = "smollm2"


@dataclass
class Round:
    ttft: list[float] = field(default_factory=list)
    tbt: list[float] = field(default_factory=list)
    done: int = 0
    errors: list[str] = field(default_factory=list)
    tokens: int = 0
    wall: float = 0.0


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def pool_mb(base: str) -> float:
    """The prefix cache's host pool (bounded by its capacity), from /health."""
    import json

    with urllib.request.urlopen(base + "/health", timeout=30) as r:
        cache = json.loads(r.read()).get("prefix_cache") or {}
    return cache.get("bytes", 0) / 2**20


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


async def one_request(client, question: str, max_tokens: int, out: Round) -> None:
    t0 = time.perf_counter()
    last = None
    n = 0
    stream = await client.chat.completions.create(
        model=NAME,
        messages=[{"role": "user", "content": question}],
        max_tokens=max_tokens,
        temperature=0,
        stream=True,
        extra_body={"ignore_eos": True},
    )
    async for chunk in stream:
        if not chunk.choices or not chunk.choices[0].delta.content:
            continue
        now = time.perf_counter()
        if last is None:
            out.ttft.append(now - t0)
        else:
            out.tbt.append(now - last)
        last = now
        n += 1
    if n == 0:
        raise RuntimeError("no content")
    out.tokens += n
    out.done += 1


async def run_round(base: str, clients: int, requests: int, max_tokens: int, limit: float):
    import openai

    out = Round()

    async def client_loop(c: int) -> None:
        client = openai.AsyncOpenAI(base_url=base + "/v1", api_key=KEY, max_retries=0, timeout=300)
        try:
            for r in range(requests):
                try:
                    await one_request(client, f"Say something about {c * 31 + r}.", max_tokens, out)
                except Exception as e:  # counted, never fatal
                    out.errors.append(f"client {c} request {r}: {type(e).__name__}: {e}")
        finally:
            await client.close()

    t = time.perf_counter()
    await asyncio.wait_for(asyncio.gather(*(client_loop(c) for c in range(clients))), limit)
    out.wall = time.perf_counter() - t
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=2, help="per client and round")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--deadline", type=float, default=900.0, help="seconds, whole run")
    parser.add_argument("--max-growth-mb", type=float, default=16.0)
    parser.add_argument("--prefix", default="~/.cache/hyperdex/bench")
    args = parser.parse_args()
    if not (1 <= args.clients <= 256 and 1 <= args.requests <= 100):
        parser.error("--clients must be in 1..256 and --requests in 1..100")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HYPERDEX_PROGRESS", "0")
    start = time.monotonic()

    from hyperdex.tools import AutoCompiler
    from hyperdex.tools.real_weights import smollm2_hf_folder

    path = AutoCompiler().compile(
        model_id=str(smollm2_hf_folder()),
        max_length=1024,
        prefix=args.prefix,
        fast_compile=True,
        progress=False,
    )
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    base = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "hyperdex.serving.cli", path, "--port", str(port)]
    cmd += ["--served-model-name", NAME, "--api-key", KEY, "--log-level", "warning"]
    server = subprocess.Popen(cmd, stdin=subprocess.DEVNULL)
    try:
        while True:
            try:
                with urllib.request.urlopen(base + "/health", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() - start > 180:
                print("the server did not start", file=sys.stderr)
                return 1
            time.sleep(0.2)

        def left() -> float:
            return max(1.0, args.deadline - (time.monotonic() - start))

        asyncio.run(run_round(base, 2, 1, args.max_tokens, left()))  # warm up
        rss, pool = [rss_mb(server.pid)], [pool_mb(base)]
        rounds = []
        for _ in range(2):
            rounds.append(
                asyncio.run(run_round(base, args.clients, args.requests, args.max_tokens, left()))
            )
            rss.append(rss_mb(server.pid))
            pool.append(pool_mb(base))
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()

    ms = 1e3
    print(
        f"hdex-serve on SmolLM2-135M-Instruct (emulator), {args.clients} concurrent streaming "
        f"clients x {args.requests} requests x {args.max_tokens} tokens, per round"
    )
    print(
        f"{'round':<7}{'done':>6}{'errors':>8}{'TTFT p50':>10}{'p99':>9}{'TBT p50':>10}"
        f"{'p99':>9}{'tok/s':>8}{'RSS MB':>9}"
    )
    for i, r in enumerate(rounds):
        print(
            f"{i + 1:<7}{r.done:>6}{len(r.errors):>8}{pct(r.ttft, 0.5) * ms:>8.0f}ms"
            f"{pct(r.ttft, 0.99) * ms:>7.0f}ms{pct(r.tbt, 0.5) * ms:>8.1f}ms"
            f"{pct(r.tbt, 0.99) * ms:>7.1f}ms{r.tokens / r.wall:>8.1f}{rss[i + 1]:>9.1f}"
        )
    # the prefix cache keeps KV blocks by design (up to its capacity): not a leak
    growth = (rss[2] - rss[1]) - (pool[2] - pool[1])
    print(
        f"server RSS: {rss[0]:.1f} MB after warm-up, {rss[1]:.1f} after round 1, "
        f"{rss[2]:.1f} after round 2; prefix cache pool {pool[0]:.1f} / {pool[1]:.1f} / "
        f"{pool[2]:.1f} MB; growth from round 1 to 2 outside the pool {growth:+.1f} MB"
    )
    print(f"mean TBT {statistics.fmean(rounds[-1].tbt) * ms:.1f} ms")
    errors = [e for r in rounds for e in r.errors]
    for e in errors[:5]:
        print("error:", e)
    expected = args.clients * args.requests
    ok = not errors and all(r.done == expected for r in rounds) and growth <= args.max_growth_mb
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
