"""hdex-serve: the real server in a subprocess on 127.0.0.1 (a free port), driven by the
official ``openai`` client and by raw HTTP, on the real SmolLM2 (real text, a chat template).
Every wait is bounded in time; only loopback traffic."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

openai = pytest.importorskip("openai")
pytest.importorskip("uvicorn")
pytest.importorskip("starlette")

from serve_helpers import KEY, NAME  # noqa: E402
from serve_helpers import LOGS as _LOGS  # noqa: E402
from serve_helpers import http as _http  # noqa: E402
from serve_helpers import serving as _serving  # noqa: E402
from smollm2 import compiled_smollm2  # noqa: E402


def _health(server: str) -> dict:
    return _http(server, "/health", key=None)[1]


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> Path:
    return compiled_smollm2(tmp_path_factory)


@pytest.fixture(scope="module")
def server(model_path, tmp_path_factory):
    log_path = tmp_path_factory.mktemp("serve") / "server.log"
    with _serving(model_path, log_path) as (_, base):
        yield base


@pytest.fixture()
def client(server):
    c = openai.OpenAI(base_url=server + "/v1", api_key=KEY, max_retries=0, timeout=120)
    yield c
    c.close()


def _chat(q: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": q}]


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
        client.chat.completions.create(model=NAME, messages=_chat("hi"), n=0)
    assert e.value.response.json()["error"]["param"] == "n"
    # an option the device cannot honour is refused, naming it and what to use instead
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(
            model=NAME, messages=_chat("hi"), extra_body={"use_beam_search": True}
        )
    error = e.value.response.json()["error"]
    assert error["param"] == "use_beam_search" and error["code"] == "unsupported_parameter"
    assert "temperature=0" in error["message"]
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


# -- hardening: request size, bad input, the event loop, flags, SIGTERM, TLS -----------------


def _error_shape(status: int, body: dict, want: int) -> dict:
    assert status == want, body
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    return error


def _port_of(base: str) -> int:
    return int(base.rsplit(":", 1)[1])


def _raw_response(port: int, head: bytes, timeout: float = 30) -> tuple[int, dict]:
    """Status and JSON body of a raw request that sends only ``head`` (no body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as c:
        c.sendall(head)
        data = b""
        while b"\r\n\r\n" not in data or len(data.split(b"\r\n\r\n", 1)[1]) < _length(data):
            part = c.recv(65536)
            if not part:
                break
            data += part
    head_part, body = data.split(b"\r\n\r\n", 1)
    return int(head_part.split()[1]), json.loads(body)


def _length(data: bytes) -> int:
    for line in data.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return int(line.split(b":")[1])
    return 1 << 30


def _completion(prompt: str) -> bytes:
    return json.dumps({"model": NAME, "prompt": prompt, "max_tokens": 2}).encode()


def test_bodies_past_the_limit_get_413_without_being_read(server, client) -> None:
    port = _port_of(server)
    limit = 4 << 20  # the default
    # a declared Content-Length past the limit: refused before a byte of the body is sent
    head = (
        b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
        + KEY.encode()
        + b"\r\nContent-Type: application/json\r\nContent-Length: 100000000000\r\n\r\n"
    )
    error = _error_shape(*_raw_response(port, head), 413)
    assert error["code"] == "request_too_large" and str(limit) in error["message"]

    # a chunked body without a length: cut off once past the limit, while it is still coming
    sent = [0]
    with socket.create_connection(("127.0.0.1", port), timeout=30) as c:
        c.sendall(head.replace(b"Content-Length: 100000000000", b"Transfer-Encoding: chunked"))

        def feed() -> None:
            chunk = b"x" * 65536
            with contextlib.suppress(OSError):
                while sent[0] < 1 << 30:  # bounded; the answer comes long before
                    c.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    sent[0] += len(chunk)

        feeder = threading.Thread(target=feed, daemon=True)
        feeder.start()
        answer = c.recv(65536)
        assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
        assert sent[0] < 128 << 20  # 4 MiB + 16 MiB drained + buffers, not the 1 GiB
        c.shutdown(socket.SHUT_RDWR)
    feeder.join(10)

    # a client that leaves halfway through its body: nothing to answer, nothing logged
    with socket.create_connection(("127.0.0.1", port), timeout=30) as c:
        c.sendall(head.replace(b"100000000000", b"1000") + b'{"model": "smol')
    # the openai client (keep-alive) and urllib (Connection: close: sends all, then reads)
    with pytest.raises(openai.APIStatusError) as e:
        client.completions.create(model=NAME, prompt="x" * (limit + 1), max_tokens=2)
    assert e.value.status_code == 413
    assert e.value.response.json()["error"]["code"] == "request_too_large"
    error = _error_shape(*_http(server, "/v1/completions", _completion("y" * (5 << 20))), 413)
    assert error["type"] == "invalid_request_error"
    # just under the limit is read (and refused for its length in tokens, not its size)
    status, body = _http(server, "/v1/completions", _completion("z" * (limit - 200)))
    assert _error_shape(status, body, 400)["code"] == "context_length_exceeded"
    assert _health(server)["status"] == "ok"


def test_every_bad_body_gets_a_400(server) -> None:
    nested = b"[" * 100_000 + b"]" * 100_000
    cases = {
        "lone surrogate in the prompt": b'{"model": "smollm2", "prompt": "a\\ud800b"}',
        "lone low surrogate in a message": (
            b'{"model": "smollm2", "messages": [{"role": "user", "content": "\\udc00"}]}'
        ),
        "surrogate in the model name": b'{"model": "\\ud800", "prompt": "hi"}',
        "surrogate in a key": b'{"model": "smollm2", "prompt": "hi", "\\ud800": 1}',
        "100k nested arrays": nested,
        "100k nested objects": b'{"a":' * 100_000 + b"1" + b"}" * 100_000,
        "deep inside a field": b'{"model": "smollm2", "prompt": ' + nested + b"}",
        "4301-digit max_tokens": b'{"model": "smollm2", "prompt": "hi", "max_tokens": '
        + b"9" * 4301
        + b"}",
        "4000-digit max_tokens": b'{"model": "smollm2", "prompt": "hi", "max_tokens": '
        + b"9" * 4000
        + b"}",
        "4000-digit token id": b'{"model": "smollm2", "prompt": [' + b"7" * 4000 + b"]}",
        "NaN": b'{"model": "smollm2", "prompt": "hi", "temperature": NaN}',
        "Infinity": b'{"model": "smollm2", "prompt": "hi", "top_p": -Infinity}',
        "1e999 penalty": b'{"model": "smollm2", "prompt": "hi", "repetition_penalty": 1e999}',
        "1e999 temperature": b'{"model": "smollm2", "prompt": "hi", "temperature": 1e999}',
        "prompt an object": b'{"model": "smollm2", "prompt": {"a": 1}}',
        "prompt mixed": b'{"model": "smollm2", "prompt": [[1, 2], "x"]}',
        "messages a string": b'{"model": "smollm2", "messages": "hi"}',
        "message without role": b'{"model": "smollm2", "messages": [{"content": "hi"}]}',
        "max_tokens a word": b'{"model": "smollm2", "prompt": "hi", "max_tokens": "ten"}',
        "max_tokens a float": b'{"model": "smollm2", "prompt": "hi", "max_tokens": 2.5}',
        "stop a number": b'{"model": "smollm2", "prompt": "hi", "stop": 5}',
        "stream a list": b'{"model": "smollm2", "prompt": "hi", "stream": [1]}',
        "stream_options a number": b'{"model": "smollm2", "prompt": "hi", "stream_options": 3}',
        "image part": (
            b'{"model": "smollm2", "messages": [{"role": "user", "content": '
            b'[{"type": "image_url", "image_url": {"url": "x"}}]}]}'
        ),
        "template kwargs clash": (
            b'{"model": "smollm2", "messages": [{"role": "user", "content": "hi"}], '
            b'"chat_template_kwargs": {"tokenize": true}}'
        ),
        "not UTF-8": b'{"model": "smollm2", "prompt": "\xff\xfe"}',
        "null": b"null",
        "empty": b"",
    }
    before = _health(server)["requests"]
    for what, body in cases.items():
        for path in ("/v1/completions", "/v1/chat/completions"):
            status, answer = _http(server, path, body)
            error = _error_shape(status, answer, 400) if status == 400 else None
            # the model name check (404) may come before a field the other route lacks
            assert error is not None or (status == 404 and b'"model": "smollm2"' not in body), (
                what,
                path,
                status,
                answer,
            )
            if error is not None:
                assert error["type"] == "invalid_request_error", (what, path)
    after = _health(server)["requests"]
    assert after["failed"] == before["failed"]  # none reached the device
    assert "Traceback" not in _LOGS[server].read_text()


def test_health_answers_while_a_huge_prompt_is_tokenized(model_path, tmp_path) -> None:
    """Parsing and tokenizing run off the event loop: /health stays fast during a 10 MB prompt
    (allowed here: the limit is raised), which takes seconds to tokenize."""
    with _serving(model_path, tmp_path / "log", "--max-request-bytes", "16MiB") as (_, base):
        _health(base)  # warm
        body = _completion("hello world " * (10_000_000 // 12))
        done: dict[str, object] = {}

        def send() -> None:
            done["answer"] = _http(base, "/v1/completions", body)

        sender = threading.Thread(target=send)
        sender.start()
        times = []
        deadline = time.monotonic() + 120
        while sender.is_alive() and time.monotonic() < deadline:
            t0 = time.perf_counter()
            assert _http(base, "/health", key=None)[0] == 200
            times.append(time.perf_counter() - t0)
            time.sleep(0.02)
        sender.join(60)
        status, answer = done["answer"]
        assert _error_shape(status, answer, 400)["code"] == "context_length_exceeded"
        times.sort()
        # a noisy 2-core machine: a few slow polls are allowed, a blocked loop is not
        assert times[len(times) // 2] < 0.1 and times[-1] < 0.5, times
        assert len(times) >= 5, times  # the prompt took long enough to measure anything


def _cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HYPERDEX_PROGRESS": "0"}
    return subprocess.run(
        [sys.executable, "-m", "hyperdex.serving.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        stdin=subprocess.DEVNULL,
    )


def test_flags_are_checked_before_the_model_loads(tmp_path) -> None:
    from hyperdex.serving.cli import build_parser

    missing = str(tmp_path / "no-such-model")  # loading it would fail with exit 1
    for args, says in [
        (["--port", "99999"], "--port"),
        (["--port", "-1"], "--port"),
        (["--port", "9" * 5000], "--port"),
        (["--max-queue", "0"], "--max-queue"),
        (["--max-request-bytes", "0"], "--max-request-bytes"),
        (["--max-request-bytes", "4 parsecs"], "--max-request-bytes"),
        (["--prefix-cache-gib", "nan"], "--prefix-cache-gib"),
        (["--block-size", "0"], "--block-size"),
        (["--num-threads", "-2"], "--num-threads"),
        (["--ssl-keyfile", str(tmp_path / "k.pem")], "--ssl-certfile"),
        (["--ssl-keyfile", missing, "--ssl-certfile", missing], "--ssl-certfile"),
    ]:
        done = _cli(missing, *args)
        assert done.returncode == 2, (args, done.stderr)
        assert "usage: hdex-serve" in done.stderr and says in done.stderr, (args, done.stderr)
        assert "Traceback" not in done.stderr
    parse = build_parser().parse_args
    assert parse(["m"]).max_request_bytes == 4 << 20
    assert parse(["m", "--max-request-bytes", "512KiB"]).max_request_bytes == 512 << 10
    assert parse(["m", "--max-request-bytes", "16M"]).max_request_bytes == 16 << 20
    assert parse(["m", "--max-request-bytes", "1000"]).max_request_bytes == 1000
    # a busy port is found before loading too (else the model's error would come first)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        done = _cli(missing, "--port", str(busy.getsockname()[1]))
    assert done.returncode == 1 and "cannot listen" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_sigterm_drains_and_exits_0(model_path, tmp_path) -> None:
    """SIGTERM: no new connections; a request running finishes; one that would outlast the
    grace period is cancelled in time to end properly (finish_reason "abort"); exit 0."""
    with _serving(model_path, tmp_path / "log") as (proc, base):
        c = openai.OpenAI(base_url=base + "/v1", api_key=KEY, max_retries=0, timeout=120)
        kw = dict(model=NAME, temperature=0, extra_body={"ignore_eos": True})
        results: dict[str, object] = {}

        def short() -> None:  # running when SIGTERM comes: it finishes
            results["short"] = c.completions.create(prompt="Count:", max_tokens=100, **kw)

        def long() -> None:  # queued behind it, longer than the grace period: cancelled
            stream = c.completions.create(prompt="Story:", max_tokens=1000, stream=True, **kw)
            results["long"] = [p.choices[0] for p in stream if p.choices]

        threads = [threading.Thread(target=short), threading.Thread(target=long)]
        threads[0].start()
        deadline = time.monotonic() + 30
        while not _health(base)["running"]:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        threads[1].start()
        while _health(base)["queued"] == 0:
            assert time.monotonic() < deadline and threads[1].is_alive()
            time.sleep(0.02)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        threads[0].join(60)
        assert results["short"].usage.completion_tokens == 100  # drained, not dropped
        with pytest.raises(OSError):  # no new connections meanwhile
            urllib.request.urlopen(base + "/health", timeout=5)
        assert proc.wait(timeout=60) == 0
        assert time.monotonic() - t0 < 10 + 5  # within uvicorn's grace period (and a margin)
        threads[1].join(30)
        assert not threads[1].is_alive()
        choices = results["long"]
        assert choices[-1].finish_reason == "abort" and 1 < len(choices) < 1000
        c.close()
    log = (tmp_path / "log").read_text()
    assert "Traceback" not in log and "cancelled 1 request(s)" in log, log


def _self_signed(folder: Path) -> tuple[Path, Path]:
    """(certificate, key) for 127.0.0.1: with cryptography, else the openssl command."""
    cert, key = folder / "cert.pem", folder / "key.pem"
    try:
        import datetime
        import ipaddress

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
    except ImportError:
        import shutil

        if shutil.which("openssl") is None:
            pytest.skip("neither the cryptography package nor the openssl command is available")
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"]
            + ["-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2"]
            + ["-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
            check=True,
            capture_output=True,
            timeout=60,
        )
        return cert, key
    private = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(private, hashes.SHA256())
    )
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert, key


def test_tls(model_path, tmp_path) -> None:
    import ssl

    cert, key = _self_signed(tmp_path)
    trusted = ssl.create_default_context(cafile=str(cert))
    args = ("--ssl-keyfile", str(key), "--ssl-certfile", str(cert))
    with _serving(model_path, tmp_path / "log", *args, scheme="https", context=trusted) as (
        _,
        base,
    ):
        make = getattr(openai, "DefaultHttpx2Client", None) or openai.DefaultHttpxClient
        http = make(verify=trusted)
        c = openai.OpenAI(base_url=base + "/v1", api_key=KEY, max_retries=0, http_client=http)
        try:
            reply = c.chat.completions.create(
                model=NAME, messages=_chat("Hi"), max_tokens=4, temperature=0
            )
            assert reply.choices[0].message.content
        finally:
            c.close()
        with pytest.raises(urllib.error.URLError) as e:  # not trusted without the cert
            urllib.request.urlopen(
                base + "/health", timeout=10, context=ssl.create_default_context()
            )
        assert isinstance(e.value.reason, ssl.SSLCertVerificationError)
        plain = base.replace("https://", "http://")
        with pytest.raises(OSError):  # plain HTTP is not served
            urllib.request.urlopen(plain + "/health", timeout=10)
