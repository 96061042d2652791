"""hdex-serve: the real server in a subprocess on 127.0.0.1 (a free port), driven by the
official ``openai`` client and by raw HTTP, on the real SmolLM2 (real text, a chat template).
Every wait is bounded in time; only loopback traffic."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

openai = pytest.importorskip("openai")
pytest.importorskip("uvicorn")
pytest.importorskip("starlette")

from smollm2 import compiled_smollm2  # noqa: E402

KEY = "test-key-123"
NAME = "smollm2"
START_TIMEOUT_S = 120


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _http(base: str, path: str, body: bytes | None = None, key: str | None = KEY, method=None):
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


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    path = compiled_smollm2(tmp_path_factory)
    port = _free_port()
    log_path = tmp_path_factory.mktemp("serve") / "server.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HYPERDEX_PROGRESS": "0"}
    env.pop("HDEX_API_KEY", None)
    cmd = [sys.executable, "-m", "hyperdex.serving.cli", str(path), "--port", str(port)]
    cmd += ["--served-model-name", NAME, "--api-key", KEY, "--log-level", "warning"]
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
        )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + START_TIMEOUT_S
    try:
        while True:
            try:
                if _http(base, "/health", key=None)[0] == 200:
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"hdex-serve did not start:\n{log_path.read_text()}")
            time.sleep(0.2)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture()
def client(server):
    c = openai.OpenAI(base_url=server + "/v1", api_key=KEY, max_retries=0, timeout=120)
    yield c
    c.close()


def _chat(q: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": q}]


def _health(server: str) -> dict:
    return _http(server, "/health", key=None)[1]


def test_models_and_health(server, client) -> None:
    models = client.models.list()
    assert [m.id for m in models.data] == [NAME]
    assert client.models.retrieve(NAME).id == NAME
    health = _health(server)
    assert health["status"] == "ok" and health["model"] == NAME
    assert "emulator" in health["device"]


def test_chat_streamed_text_equals_non_streamed(client) -> None:
    messages = _chat("What is the capital of France? Answer in one sentence.")
    full = client.chat.completions.create(
        model=NAME, messages=messages, max_tokens=24, temperature=0
    )
    text = full.choices[0].message.content
    assert "Paris" in text
    assert full.choices[0].finish_reason in ("stop", "length")
    assert full.usage.total_tokens == full.usage.prompt_tokens + full.usage.completion_tokens

    chunks = list(
        client.chat.completions.create(
            model=NAME,
            messages=messages,
            max_tokens=24,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert content == text
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finals) == 1 and finals[0].choices[0].finish_reason == full.choices[0].finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage is not None  # the usage chunk
    usage = chunks[-1].usage
    assert usage.completion_tokens == full.usage.completion_tokens
    # the same prompt again: all but its last token come from the prefix cache
    assert usage.prompt_tokens_details.cached_tokens == usage.prompt_tokens - 1
    assert all(c.usage is None for c in chunks[:-1])


def test_completions_stream_stop_and_echo(client) -> None:
    kw = dict(model=NAME, prompt="The capital of France is", max_tokens=20, temperature=0)
    full = client.completions.create(stop=["."], **kw)
    text = full.choices[0].text
    assert "Paris" in text and "." not in text
    assert full.choices[0].finish_reason == "stop"
    streamed = "".join(
        c.choices[0].text for c in client.completions.create(stop=["."], stream=True, **kw)
    )
    assert streamed == text
    echoed = client.completions.create(echo=True, stop=["."], **kw)
    assert echoed.choices[0].text == "The capital of France is" + text
    long = client.completions.create(**{**kw, "max_tokens": 3}, extra_body={"ignore_eos": True})
    assert long.choices[0].finish_reason == "length" and long.usage.completion_tokens == 3


def test_sixteen_concurrent_clients(server, client) -> None:
    questions = [f"Say the number {i} in words." for i in range(16)]

    def ask(i: int, stream: bool) -> str:
        c = openai.OpenAI(base_url=server + "/v1", api_key=KEY, max_retries=0, timeout=120)
        try:
            kw = dict(model=NAME, messages=_chat(questions[i]), max_tokens=6, temperature=0)
            if not stream:
                return c.chat.completions.create(**kw).choices[0].message.content
            parts = c.chat.completions.create(stream=True, **kw)
            return "".join(p.choices[0].delta.content or "" for p in parts if p.choices)
        finally:
            c.close()

    expected = [ask(i, False) for i in range(16)]  # one at a time
    before = _health(server)["requests"]
    with ThreadPoolExecutor(16) as pool:
        futures = [pool.submit(ask, i, i % 2 == 1) for i in range(16)]
        got = [f.result(timeout=180) for f in futures]
    assert got == expected
    after = _health(server)["requests"]
    assert after["completed"] - before["completed"] == 16 and after["failed"] == before["failed"]


def test_disconnect_frees_the_device(server, client) -> None:
    before = _health(server)
    stream = client.chat.completions.create(
        model=NAME,
        messages=_chat("Tell me a very long story."),
        max_tokens=400,
        temperature=0,
        stream=True,
        extra_body={"ignore_eos": True},
    )
    seen = 0
    for _ in stream:
        seen += 1
        if seen == 4:
            break
    stream.close()  # the client goes away mid-generation
    deadline = time.monotonic() + 30
    while True:
        health = _health(server)
        if health["requests"]["cancelled"] > before["requests"]["cancelled"]:
            break
        assert time.monotonic() < deadline, health
        time.sleep(0.05)
    assert not health["running"]
    generated = health["tokens"]["generated"] - before["tokens"]["generated"]
    assert 3 <= generated < 400  # stopped long before max_tokens
    # the device serves the next request at once
    t0 = time.monotonic()
    reply = client.chat.completions.create(
        model=NAME, messages=_chat("Hi"), max_tokens=4, temperature=0
    )
    assert reply.choices[0].message.content and time.monotonic() - t0 < 30


def test_bad_requests_get_openai_errors(server, client) -> None:
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="nope", messages=_chat("hi"), max_tokens=2)
    assert e.value.status_code == 404
    assert e.value.response.json()["error"]["code"] == "model_not_found"

    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=NAME, prompt="hi", max_tokens=-1)
    error = e.value.response.json()["error"]
    assert error["param"] == "max_tokens" and error["type"] == "invalid_request_error"

    with pytest.raises(openai.AuthenticationError) as e:
        bad = openai.OpenAI(base_url=server + "/v1", api_key="wrong", max_retries=0, timeout=30)
        bad.models.list()
    assert e.value.status_code == 401
    assert e.value.response.json()["error"]["code"] == "invalid_api_key"
    assert _http(server, "/v1/models", key=None)[0] == 401

    status, body = _http(server, "/v1/chat/completions", b'{"model": "smollm2", "messa')
    assert status == 400 and body["error"]["type"] == "invalid_request_error"
    assert "JSON" in body["error"]["message"]
    status, body = _http(server, "/v1/completions", b"[1, 2]")
    assert status == 400 and "JSON object" in body["error"]["message"]

    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=NAME, messages=_chat("hi"), n=2)
    assert e.value.response.json()["error"]["param"] == "n"
    with pytest.raises(openai.BadRequestError, match="Unrecognized request argument"):
        client.chat.completions.create(
            model=NAME, messages=_chat("hi"), extra_body={"no_such_option": 1}
        )
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=NAME, prompt="word " * 1100, max_tokens=4)
    assert e.value.response.json()["error"]["code"] == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=NAME, prompt=[10**9], max_tokens=4)

    status, body = _http(server, "/v1/nothing")
    assert status == 404 and "error" in body
    status, body = _http(server, "/v1/completions", method="GET")
    assert status == 405 and "error" in body
    assert _health(server)["requests"]["failed"] == 0  # none of these reached the device


def test_server_survives_a_burst_of_disconnects(server, client) -> None:
    """Clients that give up while queued are skipped, not run."""
    before = _health(server)
    stop = threading.Event()

    def impatient() -> None:
        c = openai.OpenAI(base_url=server + "/v1", api_key=KEY, max_retries=0, timeout=0.5)
        try:
            c.chat.completions.create(
                model=NAME,
                messages=_chat("Write a poem."),
                max_tokens=200,
                temperature=0,
                extra_body={"ignore_eos": True},
            )
        except openai.APITimeoutError:
            pass
        finally:
            c.close()

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda _: impatient(), range(4)))
    stop.set()
    deadline = time.monotonic() + 30
    while True:
        health = _health(server)
        done = health["requests"]["cancelled"] - before["requests"]["cancelled"]
        if done >= 4 and not health["running"] and health["queued"] == 0:
            break
        assert time.monotonic() < deadline, health
        time.sleep(0.05)
    generated = health["tokens"]["generated"] - before["tokens"]["generated"]
    assert generated < 4 * 200
    reply = client.completions.create(model=NAME, prompt="One, two,", max_tokens=3, temperature=0)
    assert reply.choices[0].text
