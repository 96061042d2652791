"""hdex-serve's vLLM-compatible features, with the real ``openai`` client against the real
server (a subprocess on a free loopback port) on the real SmolLM2: log-probabilities (checked
against the log-softmax of the model's forward logits, computed here), ``n`` choices, vLLM's
sampling options, ``/metrics``, ``/tokenize``, ``/detokenize``, ``/version``, ``/health``
while the model loads, unknown fields and options the device cannot honour."""

from __future__ import annotations

import contextlib
import threading
import time
import urllib.request
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

openai = pytest.importorskip("openai")
pytest.importorskip("uvicorn")
prometheus_parser = pytest.importorskip("prometheus_client.parser")

from serve_helpers import (  # noqa: E402
    KEY,
    LOGS,
    NAME,
    forward_log_softmax,
    free_port,
    greedy_reference,
    http,
    post,
    serving,
)
from smollm2 import compiled_smollm2  # noqa: E402

TOL = 1e-3


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> Path:
    return compiled_smollm2(tmp_path_factory)


@pytest.fixture(scope="module")
def server(model_path, tmp_path_factory):
    with serving(model_path, tmp_path_factory.mktemp("serve") / "server.log") as (_, base):
        yield base


@pytest.fixture(scope="module")
def lm(model_path):
    """The same compiled model in this process, for reference logits."""
    from hyperdex.transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_path, num_threads=1)
    return model, AutoTokenizer.from_pretrained(model_path)


@pytest.fixture()
def client(server):
    c = openai.OpenAI(base_url=server + "/v1", api_key=KEY, max_retries=0, timeout=120)
    yield c
    c.close()


def _chat(q: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": q}]


def _chat_ids(server: str, messages: list[dict[str, str]]) -> list[int]:
    status, body = post(server, "/tokenize", {"model": NAME, "messages": messages})
    assert status == 200, body
    return body["tokens"]


def _token_id(name: str) -> int:
    assert name.startswith("token_id:"), name
    return int(name.split(":", 1)[1])


# -- log-probabilities ---------------------------------------------------------------------------


def test_chat_logprobs_are_log_softmax_of_the_logits(server, client, lm) -> None:
    model, tok = lm
    messages = _chat("What is the capital of France?")
    kw = dict(model=NAME, messages=messages, max_tokens=8, temperature=0.8, seed=11)
    extra = {"return_tokens_as_token_ids": True, "ignore_eos": True}
    full = client.chat.completions.create(logprobs=True, top_logprobs=3, extra_body=extra, **kw)
    content = full.choices[0].logprobs.content
    assert len(content) == full.usage.completion_tokens == 8
    prompt = _chat_ids(server, messages)
    assert len(prompt) == full.usage.prompt_tokens
    ids = [_token_id(c.token) for c in content]
    assert tok.decode(ids, skip_special_tokens=True) == full.choices[0].message.content
    want = forward_log_softmax(model, prompt + ids)
    for k, entry in enumerate(content):
        row = want[len(prompt) - 1 + k]
        assert abs(entry.logprob - row[ids[k]]) < TOL
        top = [_token_id(t.token) for t in entry.top_logprobs]
        assert top == list(np.argsort(-row, kind="stable")[:3])
        for t in entry.top_logprobs:
            assert abs(t.logprob - row[_token_id(t.token)]) < TOL

    # streamed: the chunks' entries add up to the same list; tokens by their text this time
    chunks = list(client.chat.completions.create(logprobs=True, top_logprobs=3, stream=True, **kw))
    streamed = [
        e
        for c in chunks
        if c.choices and c.choices[0].logprobs
        for e in c.choices[0].logprobs.content
    ]
    plain = client.chat.completions.create(logprobs=True, top_logprobs=3, **kw)
    assert [e.model_dump() for e in streamed] == [
        e.model_dump() for e in plain.choices[0].logprobs.content
    ]
    for entry, token_id in zip(streamed, ids):
        assert entry.token == tok.decode([token_id]) and entry.bytes == list(entry.token.encode())
    # without logprobs: none
    assert client.chat.completions.create(**kw).choices[0].logprobs is None


def test_completion_logprobs_echo_and_stream(server, client, lm) -> None:
    model, tok = lm
    prompt = "The capital of France is"
    kw = dict(model=NAME, prompt=prompt, max_tokens=6, temperature=0.7, seed=4, logprobs=2)
    ids_reply = client.completions.create(
        echo=True, extra_body={"return_tokens_as_token_ids": True}, **kw
    )
    lp = ids_reply.choices[0].logprobs
    ids = [_token_id(t) for t in lp.tokens]
    prompt_ids = tok(prompt).input_ids
    assert ids[: len(prompt_ids)] == prompt_ids
    assert len(ids) == len(prompt_ids) + ids_reply.usage.completion_tokens
    want = forward_log_softmax(model, ids)
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None  # nothing predicts it
    for i in range(1, len(ids)):
        row = want[i - 1]
        assert abs(lp.token_logprobs[i] - row[ids[i]]) < TOL
        top = {_token_id(t): v for t, v in lp.top_logprobs[i].items()}
        # the chosen token and the 2 likeliest (OpenAI: up to logprobs + 1 entries)
        assert set(top) == {ids[i], *np.argsort(-row, kind="stable")[:2].tolist()}
        assert all(abs(v - row[t]) < TOL for t, v in top.items())

    # by text: offsets follow the tokens' text, which spells the echoed prompt and the answer
    text_reply = client.completions.create(echo=True, **kw)
    lp = text_reply.choices[0].logprobs
    assert "".join(lp.tokens) == text_reply.choices[0].text
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(len(lp.tokens))]

    # streamed: the chunks' logprobs add up to the non-streamed ones, offsets included
    plain = client.completions.create(**kw).choices[0].logprobs
    merged: dict[str, list] = defaultdict(list)
    text = ""
    for chunk in client.completions.create(stream=True, **kw):
        if chunk.choices and chunk.choices[0].logprobs is not None:
            for field in ("tokens", "token_logprobs", "top_logprobs", "text_offset"):
                merged[field] += getattr(chunk.choices[0].logprobs, field)
            text += chunk.choices[0].text
    assert dict(merged) == {
        "tokens": plain.tokens,
        "token_logprobs": plain.token_logprobs,
        "top_logprobs": plain.top_logprobs,
        "text_offset": plain.text_offset,
    }
    assert plain.text_offset[0] == 0 and text == "".join(plain.tokens)


def test_prompt_logprobs_in_vllm_shape(server, lm) -> None:
    model, tok = lm
    prompt = "Water boils at"
    status, body = post(
        server,
        "/v1/completions",
        {"model": NAME, "prompt": prompt, "max_tokens": 1, "prompt_logprobs": 1},
    )
    assert status == 200, body
    entries = body["choices"][0]["prompt_logprobs"]
    ids = tok(prompt).input_ids
    want = forward_log_softmax(model, ids)
    assert entries[0] is None and len(entries) == len(ids)
    for i in range(1, len(ids)):
        step = entries[i]
        assert next(iter(step)) == str(ids[i])  # the prompt's own token first
        best = int(np.argmax(want[i - 1]))
        assert step[str(best)]["rank"] == 1
        for token, item in step.items():
            assert abs(item["logprob"] - want[i - 1, int(token)]) < TOL
            assert item["decoded_token"] == tok.decode([int(token)])


# -- n, penalties, logit_bias, min_p -------------------------------------------------------------


def test_n_choices_sample_with_seed_plus_index(client) -> None:
    kw = dict(model=NAME, messages=_chat("Tell me a story."), max_tokens=10, temperature=1.0)
    both = client.chat.completions.create(n=2, seed=5, **kw)
    assert [c.index for c in both.choices] == [0, 1]
    alone = [client.chat.completions.create(seed=s, **kw).choices[0] for s in (5, 6)]
    texts = [c.message.content for c in both.choices]
    assert texts == [c.message.content for c in alone] and texts[0] != texts[1]
    single = client.chat.completions.create(seed=5, **kw)
    assert both.usage.prompt_tokens == single.usage.prompt_tokens  # the prompt counts once
    assert both.usage.completion_tokens == sum(
        c.usage.completion_tokens for c in (single, client.chat.completions.create(seed=6, **kw))
    )

    # completions, streamed: chunks carry their choice's index, each adds up to its text
    ckw = dict(model=NAME, prompt="Once upon a time", max_tokens=8, temperature=1.0, seed=9)
    plain = client.completions.create(n=3, **ckw)
    parts: dict[int, str] = defaultdict(str)
    finished = set()
    for chunk in client.completions.create(n=3, stream=True, **ckw):
        for choice in chunk.choices:
            parts[choice.index] += choice.text
            if choice.finish_reason:
                finished.add(choice.index)
    assert dict(parts) == {c.index: c.text for c in plain.choices} and finished == {0, 1, 2}
    assert len({c.text for c in plain.choices}) == 3


def test_penalties_bias_and_min_p_on_the_server(server, client, lm) -> None:
    model, _ = lm
    text = "Repeat: hello hello hello hello hello"
    status, body = post(server, "/tokenize", {"model": NAME, "prompt": text})
    prompt = body["tokens"]

    def token_ids(extra_body: dict | None = None, **options) -> list[int]:
        """The chosen tokens, read from the logprobs (named by id)."""
        reply = client.completions.create(
            model=NAME,
            prompt=text,
            max_tokens=8,
            logprobs=0,
            extra_body={
                "ignore_eos": True,
                "return_tokens_as_token_ids": True,
                **(extra_body or {}),
            },
            **options,
        )
        return [_token_id(t) for t in reply.choices[0].logprobs.tokens]

    greedy = token_ids(temperature=0)
    assert greedy == greedy_reference(model, prompt, 8)

    def frequency(logits: np.ndarray, generated: list[int]) -> np.ndarray:
        for t in set(generated):
            logits[t] -= 1.2 * generated.count(t) + 0.4
        return logits

    penalized = token_ids(temperature=0, frequency_penalty=1.2, presence_penalty=0.4)
    assert penalized == greedy_reference(model, prompt, 8, frequency) != greedy

    banned = greedy[0]

    def biased(logits: np.ndarray, generated: list[int]) -> np.ndarray:
        logits[banned] -= 100  # values past 100 are clamped to it, as OpenAI does
        return logits

    got = token_ids(temperature=0, logit_bias={str(banned): -500})
    assert banned not in got and got == greedy_reference(model, prompt, 8, biased)

    # min_p=1 keeps only the likeliest token: sampling becomes greedy
    assert token_ids(temperature=1.0, seed=3) != greedy
    assert token_ids(temperature=1.0, seed=3, extra_body={"min_p": 1.0}) == greedy


# -- the other endpoints -------------------------------------------------------------------------


def _metrics(server: str) -> dict[str, float]:
    with urllib.request.urlopen(server + "/metrics", timeout=30) as r:
        assert r.headers["Content-Type"].startswith("text/plain")
        text = r.read().decode()
    out: dict[str, float] = {}
    for family in prometheus_parser.text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.labels.get("model_name") != NAME:
                continue
            extra = {k: v for k, v in sample.labels.items() if k not in ("model_name", "engine")}
            key = sample.name + "".join(f"{{{k}={v}}}" for k, v in sorted(extra.items()))
            out[key] = sample.value
    return out


def test_metrics_count_the_requests_tokens(server, client) -> None:
    before = _metrics(server)
    kw = dict(model=NAME, temperature=0)
    replies = [
        client.completions.create(prompt="One, two, three,", max_tokens=5, **kw),
        client.chat.completions.create(messages=_chat("Hi"), max_tokens=4, **kw),
        client.chat.completions.create(messages=_chat("Hi"), max_tokens=4, **kw),  # cached
    ]
    after = _metrics(server)

    def delta(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    usage = [r.usage for r in replies]
    assert delta("vllm:prompt_tokens_total") == sum(u.prompt_tokens for u in usage)
    assert delta("vllm:generation_tokens_total") == sum(u.completion_tokens for u in usage)
    assert delta("vllm:prefix_cache_queries_total") == sum(u.prompt_tokens for u in usage)
    hits = sum(u.prompt_tokens_details.cached_tokens for u in usage)
    assert delta("vllm:prefix_cache_hits_total") == hits > 0
    for name in (
        "vllm:time_to_first_token_seconds_count",
        "vllm:e2e_request_latency_seconds_count",
        "vllm:request_queue_time_seconds_count",
    ):
        assert delta(name) == 3, name
    steps = sum(u.completion_tokens - 1 for u in usage)
    assert delta("vllm:inter_token_latency_seconds_count") == steps
    reasons = [r.choices[0].finish_reason for r in replies]
    for reason in set(reasons):
        got = delta(f"vllm:request_success_total{{finished_reason={reason}}}")
        assert got == reasons.count(reason)
    assert after["vllm:num_requests_running"] == 0 and after["vllm:num_requests_waiting"] == 0


def test_tokenize_detokenize_and_version(server, client, lm) -> None:
    _, tok = lm
    status, body = post(server, "/tokenize", {"model": NAME, "prompt": "Hello world"})
    assert status == 200
    assert body == {
        "count": len(tok("Hello world").input_ids),
        "max_model_len": 1024,
        "tokens": tok("Hello world").input_ids,
        "token_strs": None,
    }
    messages = _chat("Hi there")
    status, body = post(server, "/tokenize", {"messages": messages, "return_token_strs": True})
    reply = client.chat.completions.create(
        model=NAME, messages=messages, max_tokens=1, temperature=0
    )
    assert body["count"] == reply.usage.prompt_tokens == len(body["tokens"])
    assert body["token_strs"] == tok.convert_ids_to_tokens(body["tokens"])
    assert tok.decode(body["tokens"]).endswith("<|im_start|>assistant\n")
    status, body = post(server, "/detokenize", {"model": NAME, "tokens": tok("Hi you").input_ids})
    assert (status, body) == (200, {"prompt": "Hi you"})

    assert post(server, "/tokenize", {"prompt": "x"}, key=None)[0] == 401
    status, body = post(server, "/detokenize", {"tokens": [10**6]})
    assert status == 400 and body["error"]["param"] == "tokens"
    status, body = post(server, "/tokenize", {"prompt": "x", "messages": messages})
    assert status == 400
    status, body = post(server, "/tokenize", {"model": "other", "prompt": "x"})
    assert status == 404

    from hyperdex import __version__

    assert http(server, "/version", key=None) == (200, {"version": __version__})


def test_unknown_fields_are_ignored_with_a_warning(server, client) -> None:
    reply = client.chat.completions.create(
        model=NAME,
        messages=_chat("Hi"),
        max_tokens=2,
        extra_body={"no_such_option": 1, "stream_options": None, "another_one": [1]},
    )
    assert reply.choices[0].message.content
    deadline = time.monotonic() + 10
    want = "The following fields were present in the request but ignored: ['another_one', "
    while want not in LOGS[server].read_text():
        assert time.monotonic() < deadline, LOGS[server].read_text()
        time.sleep(0.05)


@pytest.mark.parametrize(
    "extra, param, says",
    [
        ({"use_beam_search": True}, "use_beam_search", "temperature=0"),
        ({"best_of": 3}, "best_of", "use n"),
        ({"length_penalty": 0.5}, "length_penalty", "beam search"),
        ({"guided_json": {"type": "foo"}}, "guided_json", "Invalid type: foo"),
        ({"response_format": {"type": "xml"}}, "response_format.type", "json_schema"),
        ({"tools": [{"type": "retrieval"}]}, "tools.0", "function"),
        ({"allowed_token_ids": [1, 2]}, "allowed_token_ids", "logit_bias"),
        ({"top_logprobs": 2}, "top_logprobs", "logprobs: true"),
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs", "from 0 to 20"),
        ({"logit_bias": {"abc": 1}}, "logit_bias", "token ids"),
        ({"logit_bias": {"99999999": 1}}, "logit_bias", "token ids"),
        ({"presence_penalty": 2.5}, "presence_penalty", "[-2, 2]"),
        ({"min_p": 2}, "min_p", "[0, 1]"),
        ({"n": 0}, "n", "n must be"),
        ({"stream": True, "prompt_logprobs": 1}, "prompt_logprobs", "stream"),
    ],
)
def test_options_that_cannot_be_honoured_are_refused(server, extra, param, says) -> None:
    body = {"model": NAME, "messages": _chat("Hi"), "max_tokens": 2, **extra}
    status, answer = post(server, "/v1/chat/completions", body)
    assert status == 400, answer
    error = answer["error"]
    assert error["param"] == param and says in error["message"], error


# -- /health while the model loads ---------------------------------------------------------------


@contextlib.contextmanager
def _in_process(app):
    """The app on uvicorn in a thread, on a free loopback port; stopped after."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive()
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)


def test_health_is_503_while_the_model_loads(model_path) -> None:
    from hyperdex.serving import load_for_serving
    from hyperdex.serving.openai_server import create_app

    gate = threading.Event()

    def loader():
        assert gate.wait(60)
        return load_for_serving(model_path, num_threads=1)

    with _in_process(create_app(None, None, NAME, loader=loader)) as base:
        try:
            assert http(base, "/health", key=None) == (503, {"status": "loading", "model": NAME})
            status, body = http(base, "/v1/models", key=None)
            assert status == 503 and body["error"]["code"] == "model_loading"
            status, body = post(base, "/v1/completions", {"model": NAME, "prompt": "Hi"})
            assert status == 503 and body["error"]["code"] == "model_loading"
            assert http(base, "/version", key=None)[0] == 200
            with urllib.request.urlopen(base + "/metrics", timeout=30) as r:
                assert b"vllm:num_requests_waiting" in r.read()
        finally:
            gate.set()
        deadline = time.monotonic() + 60
        while http(base, "/health", key=None)[0] != 200:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        body = {"model": NAME, "prompt": "Hi", "max_tokens": 2, "temperature": 0}
        status, answer = post(base, "/v1/completions", body)
        assert status == 200 and answer["usage"]["completion_tokens"] == 2

    failures: list[BaseException] = []

    def broken():
        raise OSError("no such model")

    app = create_app(None, None, NAME, loader=broken, on_load_failed=failures.append)
    with _in_process(app) as base:
        deadline = time.monotonic() + 30
        while not failures:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert http(base, "/health", key=None) == (503, {"status": "failed", "model": NAME})
        status, body = post(base, "/tokenize", {"prompt": "Hi"})
        assert status == 503 and "failed to load" in body["error"]["message"]
    assert str(failures[0]) == "no such model"


def test_a_model_that_cannot_load_exits_1(tmp_path) -> None:
    import subprocess
    import sys

    missing = tmp_path / "no-such-model"
    done = subprocess.run(
        [sys.executable, "-m", "hyperdex.serving.cli", str(missing), "--port", "0"],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 1, done
    assert "hdex-serve: " in done.stderr and str(missing) in done.stderr
    assert "Traceback" not in done.stderr
