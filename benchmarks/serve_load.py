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

**Soak** (``--soak``, or any ``--duration``): ``--clients`` (64 here) concurrent clients for
``--duration`` seconds (300) on a tiny random Llama compiled on the fly (``--model real``:
SmolLM2), each looping over requests drawn with a fixed seed: 85% valid (completions and chat,
streamed or not, short random prompts, ``max_tokens`` 8-32), 10% streams that the client drops
after 1-3 chunks, 5% malformed (invalid JSON, wrong types, unknown fields, negative
``max_tokens``, a lone surrogate, a body over ``--max-request-bytes``, ...). /health is polled
once a second, the server's RSS sampled every 5 s; the prefix cache's host pool is small
(``--prefix-cache-gib``) so that memory outside the caches can be told apart.

    python benchmarks/serve_load.py --duration 300 [--clients 64] [--json out.json]

Exits 1 on an unexpected answer (an error on a valid request, a 5xx, a malformed request not
answered with a 4xx), RSS growth outside the prefix cache pool past ``--max-growth-mb`` after
warm-up, or a server that does not exit 0 within 15 s of SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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


def start_server(path: Any, extra: list[str], **popen: Any) -> tuple[subprocess.Popen, str]:
    """hdex-serve on `path` at a free loopback port, with the benchmark's name and key; returns
    the process and its base URL."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "hyperdex.serving.cli", str(path), "--host", "127.0.0.1"]
    cmd += ["--port", str(port), "--served-model-name", NAME, "--api-key", KEY]
    cmd += ["--log-level", "warning", *extra]
    return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, **popen), f"http://127.0.0.1:{port}"


def wait_healthy(server: subprocess.Popen, base: str, deadline: float) -> bool:
    """Polls /health until it answers 200 (True), the server exits or the deadline passes."""
    while True:
        try:
            with urllib.request.urlopen(base + "/health", timeout=5) as r:
                if r.status == 200:
                    return True
        except OSError:
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            return False
        time.sleep(0.2)


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
    if any(a == "--soak" or a.startswith("--duration") for a in sys.argv[1:]):
        return soak_main()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--soak", action="store_true", help="the soak (see the docstring)")
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
    server, base = start_server(path, [])
    try:
        if not wait_healthy(server, base, start + 180):
            print("the server did not start", file=sys.stderr)
            return 1

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


# -- the soak -------------------------------------------------------------------------------------

WORDS = (
    "the a one small large quiet quick slow river mountain window garden paper music number "
    "yellow green light dark early late under over between after before because while model "
    "token cache stream answer question server device memory again never always here there"
).split()
SYSTEMS = [
    "You are a helpful assistant. Answer briefly and stay on the topic of the question.",
    "You are a careful assistant who writes short, plain answers without any lists at all.",
    "You answer every question with one sentence, and you never repeat the question back.",
]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# the request kinds, by weight: 85% valid, 10% dropped streams, 5% malformed
KINDS = {
    "completion": 0.2125,
    "completion stream": 0.2125,
    "chat": 0.2125,
    "chat stream": 0.2125,
    "disconnect": 0.10,
    "malformed": 0.05,
}
MAX_REQUEST_BYTES = 64 * 1024  # given to the server: the oversized malformed body passes it


def tiny_hf_folder(folder: Path) -> Path:
    """A tiny random Llama (2 layers, GQA) with a byte-level tokenizer (every byte is a token,
    so any text works) and a ChatML template, written without torch."""
    import numpy as np
    from safetensors.numpy import save_file
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlamaConfig, PreTrainedTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    vocab = {c: i for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])  # 256, 257, 258
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(folder)
    h, f, kv, v = 64, 96, 2 * 16, 260
    LlamaConfig(
        hidden_size=h,
        intermediate_size=f,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=v,
        max_position_embeddings=512,
        bos_token_id=257,
        eos_token_id=258,
        pad_token_id=256,
        architectures=["LlamaForCausalLM"],
    ).save_pretrained(folder)
    rng = np.random.default_rng(0)

    def w(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.05).astype(np.float32)

    tensors = {"model.embed_tokens.weight": w(v, h), "model.norm.weight": np.ones(h, np.float32)}
    tensors["lm_head.weight"] = w(v, h)
    for i in range(2):
        p = f"model.layers.{i}."
        tensors.update(
            {
                p + "self_attn.q_proj.weight": w(h, h),
                p + "self_attn.k_proj.weight": w(kv, h),
                p + "self_attn.v_proj.weight": w(kv, h),
                p + "self_attn.o_proj.weight": w(h, h),
                p + "mlp.gate_proj.weight": w(f, h),
                p + "mlp.up_proj.weight": w(f, h),
                p + "mlp.down_proj.weight": w(h, f),
                p + "input_layernorm.weight": np.ones(h, np.float32),
                p + "post_attention_layernorm.weight": np.ones(h, np.float32),
            }
        )
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder


@dataclass
class Tally:
    """Per kind: sent, ok, expected errors (4xx to a malformed request), unexpected ones."""

    sent: dict[str, int] = field(default_factory=dict)
    ok: dict[str, int] = field(default_factory=dict)
    expected: dict[str, int] = field(default_factory=dict)
    unexpected: dict[str, int] = field(default_factory=dict)
    latency: list[float] = field(default_factory=list)  # valid requests, seconds
    tokens: int = 0  # generated for the valid requests (their usage)
    health_latency: list[float] = field(default_factory=list)
    bad_status: dict[str, int] = field(default_factory=dict)  # malformed variant -> status
    failures: list[str] = field(default_factory=list)

    def count(self, what: dict[str, int], kind: str) -> None:
        what[kind] = what.get(kind, 0) + 1

    def fail(self, kind: str, why: str) -> None:
        self.count(self.unexpected, kind)
        if len(self.failures) < 50:
            self.failures.append(f"{time.strftime('%H:%M:%S')} {kind}: {why}")


def prompt_text(rng) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 14)))


def valid_body(kind: str, rng, name: str) -> tuple[dict, int]:
    n = rng.randint(8, 32)
    body: dict = {"model": name, "max_tokens": n, "ignore_eos": True}
    if rng.random() < 0.5:
        body.update(temperature=0.8, top_p=0.95, seed=rng.randint(0, 2**31))
    else:
        body["temperature"] = 0
    if kind.startswith("chat"):
        body["messages"] = [
            {"role": "system", "content": rng.choice(SYSTEMS)},
            {"role": "user", "content": prompt_text(rng) + "?"},
        ]
    else:
        body["prompt"] = prompt_text(rng)
    if kind.endswith("stream") or kind == "disconnect":
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return body, n


def malformed(rng, name: str) -> tuple[str, str, bytes]:
    """(variant, path, raw body) of a request the server must refuse with a 4xx."""
    comp, chat = "/v1/completions", "/v1/chat/completions"
    ok_chat = {"model": name, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
    ok_comp = {"model": name, "prompt": "hi there", "max_tokens": 8}

    def j(base: dict, **kw) -> bytes:
        return json.dumps({**base, **kw}).encode()

    variants = [
        ("invalid JSON", comp, b'{"model": "' + name.encode() + b'", "prompt": "hi", '),
        ("empty body", chat, b""),
        ("JSON array", chat, b"[1, 2, 3]"),
        ("max_tokens a string", comp, j(ok_comp, max_tokens="ten")),
        ("messages a string", chat, j(ok_chat, messages="hello")),
        ("unknown field", chat, j(ok_chat, frobnicate={"level": -1})),
        ("negative max_tokens", comp, j(ok_comp, max_tokens=-5)),
        ("temperature a list", chat, j(ok_chat, temperature=[1, 2])),
        ("lone surrogate", comp, j(ok_comp, prompt="abc\ud800def")),
        ("token id out of range", comp, j(ok_comp, prompt=[1, 2, 10**9])),
        ("context too long", chat, j(ok_chat, max_tokens=10**7)),
        ("unknown model", comp, j(ok_comp, model="no-such-model")),
        ("empty messages", chat, j(ok_chat, messages=[])),
        ("too large", comp, j(ok_comp, prompt="x" * (MAX_REQUEST_BYTES + 4096))),
        ("wrong API key", chat, j(ok_chat)),
    ]
    return variants[rng.randrange(len(variants))]


def sse_events(lines: list[str]) -> tuple[list[dict], bool]:
    """(the JSON events, whether [DONE] came) of an SSE answer's lines."""
    events, done = [], False
    for line in lines:
        if not line.startswith("data: "):
            continue
        data = line[6:]
        if data == "[DONE]":
            done = True
        else:
            events.append(json.loads(data))
    return events, done


def check_answer(kind: str, status: int, body: str, n: int) -> tuple[str | None, int]:
    """(why the answer to a valid request is wrong, or None; tokens it generated)."""
    if status != 200:
        return f"HTTP {status}: {body[:300]}", 0
    if kind.endswith("stream"):
        events, done = sse_events(body.splitlines())
        errors = [e for e in events if "error" in e]
        if errors:
            return f"error event in the stream: {json.dumps(errors[0])[:300]}", 0
        if not done:
            return "the stream ended without [DONE]", 0
        usage = [e["usage"] for e in events if e.get("usage")]
        finish = [c.get("finish_reason") for e in events for c in e.get("choices", [])]
        finish = [f for f in finish if f]
    else:
        data = json.loads(body)
        choice = data["choices"][0]
        text = choice["message"]["content"] if kind == "chat" else choice["text"]
        if not isinstance(text, str):
            return f"no text in {body[:300]}", 0
        usage, finish = [data.get("usage")], [choice.get("finish_reason")]
    got = (usage[-1] or {}).get("completion_tokens") if usage else None
    if got != n or finish != ["length"]:
        return f"{got} tokens (asked {n}), finish_reason {finish}: {body[-300:]}", got or 0
    return None, n


async def soak_client(c: int, base: str, name: str, end: float, seed: int, t: Tally) -> None:
    import random

    httpx = _httpx()

    rng = random.Random(seed * 1000 + c)
    kinds, weights = list(KINDS), list(KINDS.values())
    headers = {"Authorization": f"Bearer {KEY}"}
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=180.0) as client:
        while time.monotonic() < end:  # bounded: no new request after the end
            kind = rng.choices(kinds, weights)[0]
            t.count(t.sent, kind)
            try:
                if kind == "malformed":
                    variant, path, raw = malformed(rng, name)
                    h = {"Content-Type": "application/json"}
                    if variant == "wrong API key":
                        h["Authorization"] = "Bearer wrong-key"
                    r = await client.post(path, content=raw, headers=h)
                    t.count(t.bad_status, f"{variant}: {r.status_code}")
                    if 400 <= r.status_code < 500:
                        t.count(t.expected, kind)
                    else:
                        t.fail(kind, f"{variant} got HTTP {r.status_code}: {r.text[:300]}")
                    continue
                path = "/v1/chat/completions" if kind.startswith("chat") else "/v1/completions"
                if kind == "disconnect" and rng.random() < 0.5:
                    path = "/v1/chat/completions"
                body, n = valid_body(kind, rng, name)
                if path.endswith("chat/completions") and "prompt" in body:
                    body.pop("prompt")
                    body["messages"] = [{"role": "user", "content": prompt_text(rng)}]
                t0 = time.perf_counter()
                if kind == "disconnect":
                    keep = rng.randint(1, 3)
                    async with client.stream("POST", path, json=body) as r:
                        if r.status_code != 200:
                            await r.aread()
                            t.fail(kind, f"HTTP {r.status_code}: {r.text[:300]}")
                            continue
                        got = 0
                        async for line in r.aiter_lines():
                            got += line.startswith("data: ")
                            if got >= keep:
                                break  # leaving the block drops the connection mid-stream
                    t.count(t.ok, kind)
                    continue
                if kind.endswith("stream"):
                    async with client.stream("POST", path, json=body) as r:
                        text = "".join([x async for x in r.aiter_text()])
                else:
                    r = await client.post(path, json=body)
                    text = r.text
                why, tokens = check_answer(kind, r.status_code, text, n)
                if why:
                    t.fail(kind, why)
                else:
                    t.count(t.ok, kind)
                    t.latency.append(time.perf_counter() - t0)
                    t.tokens += tokens
            except Exception as e:  # counted: every exception on a request is unexpected
                t.fail(kind, f"{type(e).__name__}: {e}")


async def health_poller(base: str, end: float, t: Tally) -> None:
    httpx = _httpx()

    async with httpx.AsyncClient(base_url=base, timeout=10.0) as client:
        while time.monotonic() < end:
            t0 = time.perf_counter()
            try:
                r = await client.get("/health")
                if r.status_code == 200:
                    t.health_latency.append(time.perf_counter() - t0)
                else:
                    t.fail("health", f"HTTP {r.status_code}: {r.text[:200]}")
            except Exception as e:
                t.fail("health", f"{type(e).__name__}: {e}")
            await asyncio.sleep(max(0.0, 1.0 - (time.perf_counter() - t0)))


async def health_json(base: str) -> dict:
    httpx = _httpx()

    async with httpx.AsyncClient(base_url=base, timeout=30.0) as client:
        return (await client.get("/health")).json()


async def rss_sampler(pid: int, base: str, start: float, end: float, samples: list) -> None:
    """(seconds since start, RSS MB, prefix cache pool MB) every 5 s."""
    while time.monotonic() < end:
        try:
            cache = (await health_json(base)).get("prefix_cache") or {}
            samples.append((time.monotonic() - start, rss_mb(pid), cache.get("bytes", 0) / 2**20))
        except Exception:  # the health poller counts /health failures
            pass
        await asyncio.sleep(5.0)


async def soak(args, base: str, pid: int, name: str) -> tuple[Tally, list, float]:
    t, samples = Tally(), []
    start = time.monotonic()
    end = start + args.duration
    clients = [soak_client(c, base, name, end, args.seed, t) for c in range(args.clients)]
    tasks = [asyncio.ensure_future(x) for x in clients]
    side = [
        asyncio.ensure_future(health_poller(base, end, t)),
        asyncio.ensure_future(rss_sampler(pid, base, start, end, samples)),
    ]
    _, pending = await asyncio.wait(tasks + side, timeout=args.duration + 240)
    for task in pending:  # bounded: a client stuck past the end is a failure
        task.cancel()
        t.fail("hang", "a client or poller still ran 240 s after the end")
    wall = time.monotonic() - start
    cache = (await health_json(base)).get("prefix_cache") or {}
    samples.append((wall, rss_mb(pid), cache.get("bytes", 0) / 2**20))
    return t, samples, wall


def _httpx():
    """httpx (some environments ship it as ``httpx2``, the module the openai client uses)."""
    try:
        import httpx
    except ImportError:
        import httpx2 as httpx
    return httpx


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def soak_main() -> int:
    import shutil
    import signal
    import tempfile

    parser = argparse.ArgumentParser(description="soak hdex-serve (see the docstring)")
    parser.add_argument("--soak", action="store_true")
    parser.add_argument("--duration", type=float, default=300.0, help="seconds of load")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--warmup", type=float, default=30.0, help="seconds before the RSS base")
    parser.add_argument("--model", choices=["tiny", "real"], default="tiny")
    parser.add_argument("--prefix-cache-gib", type=float, default=0.01)
    parser.add_argument("--num-threads", type=int, default=0, help="emulator threads (0: all)")
    parser.add_argument("--max-growth-mb", type=float, default=16.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="write the figures here")
    parser.add_argument("--prefix", default="~/.cache/hyperdex/bench", help="for --model real")
    args = parser.parse_args()
    if not (1 <= args.clients <= 256 and 10 <= args.duration <= 3600):
        parser.error("--clients must be in 1..256 and --duration in 10..3600")
    if not args.warmup < args.duration:
        parser.error("--warmup must be shorter than --duration")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HYPERDEX_PROGRESS", "0")
    from hyperdex.tools import AutoCompiler

    tmp = Path(tempfile.mkdtemp(prefix="hdex-soak-"))
    keep_tmp = False
    try:
        if args.model == "real":
            from hyperdex.tools.real_weights import smollm2_hf_folder

            hf, prefix, max_length, label = smollm2_hf_folder(), args.prefix, 1024, "SmolLM2-135M"
        else:
            hf, prefix, max_length = tiny_hf_folder(tmp / "hf"), tmp / "prefix", 256
            label = "tiny random Llama (2 layers, hidden 64, vocab 260)"
        path = AutoCompiler().compile(
            model_id=str(hf),
            prefix=str(prefix),
            num_device=1,
            max_length=max_length,
            fast_compile=True,
            progress=False,
        )
        extra = ["--prefix-cache-gib", str(args.prefix_cache_gib)]
        extra += ["--max-request-bytes", str(MAX_REQUEST_BYTES)]
        extra += ["--num-threads", str(args.num_threads)]
        log_path = tmp / "server.log"
        with open(log_path, "w") as log:
            server, base = start_server(path, extra, stdout=log, stderr=subprocess.STDOUT)
        load_before = os.getloadavg()
        exit_code, exit_s = None, None
        try:
            if not wait_healthy(server, base, time.monotonic() + 180):
                print("the server did not start:", log_path.read_text()[-3000:])
                keep_tmp = True
                return 1
            capacity = (json.loads(urllib.request.urlopen(base + "/health").read()) or {}).get(
                "prefix_cache"
            ) or {}
            t, samples, wall = asyncio.run(soak(args, base, server.pid, NAME))
            final = asyncio.run(health_json(base))
            load_after = os.getloadavg()
        finally:
            t_stop = time.monotonic()
            server.send_signal(signal.SIGTERM)
            try:
                exit_code = server.wait(timeout=15)
                exit_s = time.monotonic() - t_stop
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait(timeout=30)
        report = soak_report(args, t, samples, wall, label, capacity, final)
        report.update(
            load_before=load_before, load_after=load_after, exit_code=exit_code, exit_s=exit_s
        )
        print(
            f"load average (1/5/15 min): {'/'.join(f'{x:.2f}' for x in load_before)} at the "
            f"start, {'/'.join(f'{x:.2f}' for x in load_after)} at the end"
        )
        why = list(report["why"])
        if exit_code != 0:
            why.append(f"the server exited {exit_code} after SIGTERM (want 0 within 15 s)")
        else:
            print(f"SIGTERM: the server exited 0 in {exit_s:.1f} s")
        log_tail = log_path.read_text()[-4000:]
        if any(w in log_tail for w in ("Traceback", "ERROR", "Exception")):
            print("server log (tail):\n" + log_tail)
        report["pass"] = not why
        report["why"] = why
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
        for w in why:
            print("FAIL:", w)
        if why:
            keep_tmp = True
            print(f"server log kept: {log_path}")
        print("PASS" if not why else "FAIL")
        return 0 if not why else 1
    finally:
        if not keep_tmp:
            shutil.rmtree(tmp, ignore_errors=True)


def soak_report(args, t: Tally, samples, wall, label, capacity, final) -> dict:
    kinds = [*KINDS, "health", "hang"]
    total = sum(t.sent.values())
    warm = next((s for s in samples if s[0] >= args.warmup), samples[-1])
    last = samples[-1]
    rss_growth = last[1] - warm[1]
    pool_growth = last[2] - warm[2]
    outside = rss_growth - pool_growth
    valid = [k for k in KINDS if k not in ("disconnect", "malformed")]
    valid_ok = sum(t.ok.get(k, 0) for k in valid)
    ms = 1e3
    print(
        f"hdex-serve soak on a {label}, {args.clients} clients for {args.duration:.0f} s "
        f"(wall {wall:.0f} s); CPU {cpu_model()}, {os.cpu_count()} cores, emulator threads "
        f"{args.num_threads or 'all'}; prefix cache pool {args.prefix_cache_gib} GiB "
        f"({capacity.get('capacity_blocks')} blocks of {capacity.get('block_size')} tokens)"
    )
    print(f"{'kind':<20}{'sent':>8}{'ok':>8}{'4xx':>8}{'unexpected':>12}")
    for k in kinds:
        if k in t.sent or k in t.unexpected:
            print(
                f"{k:<20}{t.sent.get(k, 0):>8}{t.ok.get(k, 0):>8}{t.expected.get(k, 0):>8}"
                f"{t.unexpected.get(k, 0):>12}"
            )
    unexpected = sum(t.unexpected.values())
    print(
        f"{'all':<20}{total:>8}{sum(t.ok.values()):>8}{sum(t.expected.values()):>8}{unexpected:>12}"
    )
    print(
        "malformed, by variant and status: "
        + ", ".join(f"{k} x{v}" for k, v in sorted(t.bad_status.items()))
    )
    print(
        f"throughput: {total / wall:.1f} requests/s in all, {valid_ok / wall:.1f} valid "
        f"requests/s, {t.tokens / wall:.0f} tokens/s in valid answers "
        f"({final['tokens']['generated'] / wall:.0f} tokens/s generated by the server)"
    )
    print(
        f"valid request latency p50 {pct(t.latency, 0.5) * ms:.0f} ms, p99 "
        f"{pct(t.latency, 0.99) * ms:.0f} ms; /health p50 {pct(t.health_latency, 0.5) * ms:.1f}"
        f" ms, p99 {pct(t.health_latency, 0.99) * ms:.1f} ms ({len(t.health_latency)} polls)"
    )
    print(
        f"server RSS: {samples[0][1]:.1f} MB at {samples[0][0]:.0f} s, {warm[1]:.1f} MB after "
        f"warm-up ({warm[0]:.0f} s), {last[1]:.1f} MB at the end, max "
        f"{max(s[1] for s in samples):.1f} MB; prefix cache pool {warm[2]:.1f} -> {last[2]:.1f} "
        f"MB; growth after warm-up {rss_growth:+.1f} MB, outside the pool {outside:+.1f} MB"
    )
    print(f"server /health at the end: requests {final['requests']}, tokens {final['tokens']}")
    for f in t.failures[:20]:
        print("unexpected:", f)
    why = []
    if unexpected:
        why.append(f"{unexpected} unexpected answers")
    if final["requests"]["failed"]:
        why.append(f"the server counted {final['requests']['failed']} failed generations")
    if outside > args.max_growth_mb:
        why.append(
            f"RSS outside the prefix cache grew {outside:.1f} MB after warm-up "
            f"(limit {args.max_growth_mb} MB)"
        )
    return {
        "model": label,
        "clients": args.clients,
        "duration_s": args.duration,
        "wall_s": wall,
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "emulator_threads": args.num_threads,
        "prefix_cache_gib": args.prefix_cache_gib,
        "prefix_cache": capacity,
        "sent": t.sent,
        "ok": t.ok,
        "expected_4xx": t.expected,
        "unexpected": t.unexpected,
        "malformed_status": t.bad_status,
        "failures": t.failures,
        "requests_per_s": total / wall,
        "valid_requests_per_s": valid_ok / wall,
        "tokens_per_s": t.tokens / wall,
        "latency_ms": {"p50": pct(t.latency, 0.5) * ms, "p99": pct(t.latency, 0.99) * ms},
        "health_ms": {
            "p50": pct(t.health_latency, 0.5) * ms,
            "p99": pct(t.health_latency, 0.99) * ms,
        },
        "rss_samples": samples,
        "rss_mb": {
            "warm": warm[1],
            "end": last[1],
            "growth": rss_growth,
            "growth_outside_pool": outside,
            "max": max(s[1] for s in samples),
        },
        "server_health_end": final,
        "why": why,
    }


if __name__ == "__main__":
    sys.exit(main())
