"""hdex-serve --ray: the OpenAI-compatible API from replicas on Ray Serve, on a local Ray
cluster of this module's own (``ray start --head`` with 2 fake LPUs; the replicas run on the
emulator), driven by the official ``openai`` client and compared with a single hdex-serve.
Every wait is bounded; the cluster is stopped at the end, also on failure."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterator, Optional

import pytest

openai = pytest.importorskip("openai")
pytest.importorskip("uvicorn")
ray = pytest.importorskip("ray", reason="Ray cannot be installed here: pip install 'hyperdex[ray]'")
serve = pytest.importorskip("ray.serve")

import helpers as H  # noqa: E402
from ray_helpers import ray_cluster  # noqa: E402
from serve_helpers import KEY, NAME, free_port, serving  # noqa: E402

from hyperdex.serving.ray_serve import (  # noqa: E402
    APP_NAME,
    DEVICES_HEADER,
    MAX_ONGOING,
    REPLICA_HEADER,
    routing_text,
)

MAX_LENGTH = 1024
PROMPTS = [f"question {i}: what is the capital of france" for i in range(16)]
SHORT = 24  # tokens per answer in the concurrency test
LONG = 600  # in the replica-kill test: long enough that a replica is killed mid-answer
KILL_RUN = 12  # requests in that test: 4 in flight on each replica (MAX_ONGOING), 4 waiting
SYSTEM = "a system prompt that every request shares, " * 6
START_TIMEOUT_S = 240
STOP_TIMEOUT_S = 60
CHAT_TEMPLATE = (
    "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)


# -- the model, the reference answers, the cluster -------------------------------------------


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> Path:
    """A tiny random Llama with a byte-level BPE tokenizer and a chat template, compiled."""
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    root = tmp_path_factory.mktemp("ray-serve-model")
    folder = root / "tiny-chat"
    H.make_hf_model("llama", folder, seed=3, config=H._llama(max_position_embeddings=MAX_LENGTH))
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=H.VOCAB, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(
        [SYSTEM, *PROMPTS, "the quick brown fox jumps over the lazy dog"], trainer
    )
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok)
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(str(folder))
    return Path(H.compile_model(folder, root / "compiled", max_length=MAX_LENGTH))


def _client(base: str) -> Any:
    return openai.OpenAI(base_url=base + "/v1", api_key=KEY, max_retries=0, timeout=300)


def _chat(prompt: str, system: Optional[str] = None) -> list[dict[str, str]]:
    head = [{"role": "system", "content": system}] if system else []
    return head + [{"role": "user", "content": prompt}]


def _stream(client: Any, prompt: str, max_tokens: int) -> tuple[Optional[str], str]:
    """(replica that answered, streamed text) of a greedy chat request."""
    raw = client.chat.completions.with_raw_response.create(
        model=NAME,
        messages=_chat(prompt),
        max_tokens=max_tokens,
        temperature=0,
        stream=True,
        extra_body={"ignore_eos": True},
    )
    text = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
    return raw.headers.get(REPLICA_HEADER), text


@pytest.fixture(scope="module")
def reference(model_path, tmp_path_factory) -> dict[tuple[str, int], str]:
    """A single hdex-serve's answers: (prompt, max_tokens) -> text."""
    log = tmp_path_factory.mktemp("ray-serve-ref") / "server.log"
    with serving(model_path, log, "--num-threads", "1") as (_, base):
        client = _client(base)
        out = {(p, SHORT): _stream(client, p, SHORT)[1] for p in PROMPTS}
        out.update({(p, LONG): _stream(client, p, LONG)[1] for p in PROMPTS[:KILL_RUN]})
        client.close()
    return out


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[tuple[str, int]]:
    """(Ray address, the port every hdex-serve --ray here serves on: Serve's proxy keeps
    the first one it was given)."""
    with ray_cluster(tmp_path_factory.mktemp("ray-serve-cluster")) as address:
        yield address, free_port()


@pytest.fixture(scope="module")
def driver(cluster) -> Iterator[None]:
    """This process connected to the cluster too (to kill a replica, read Serve's status)."""
    ray.init(address=cluster[0], logging_level="warning", log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


def _ray_serve_cmd(model: Any, cluster: tuple[str, int], *args: str) -> list[str]:
    address, port = cluster
    return [
        sys.executable, "-m", "hyperdex.serving.cli", str(model), "--ray", address,
        "--port", str(port), "--served-model-name", NAME, "--api-key", KEY,
        "--log-level", "warning", "--num-threads", "1", *args,
    ]  # fmt: skip


def _env() -> dict[str, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HYPERDEX_PROGRESS": "0"}
    env.pop("HDEX_API_KEY", None)
    env.pop("RAY_ADDRESS", None)
    return env


@contextlib.contextmanager
def _ray_serving(model: Path, cluster: tuple[str, int], log_path: Path) -> Iterator[str]:
    """hdex-serve --ray with 2 replicas, once /health answers 200; SIGTERM after (exit 0)."""
    cmd = _ray_serve_cmd(model, cluster, "--replicas", "2")
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=_env()
        )
    base = f"http://127.0.0.1:{cluster[1]}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(base + "/health", timeout=5) as r:
                    if r.status == 200 and "serving" in log_path.read_text():
                        break
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"hdex-serve --ray did not start:\n{log_path.read_text()[-6000:]}")
            time.sleep(0.5)
        yield base
    finally:
        proc.terminate()
        try:
            code = proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait(timeout=10)
        assert code == 0, log_path.read_text()[-4000:]


def _refused(model: Any, cluster: tuple[str, int], *args: str, timeout: float = 120) -> str:
    """stderr of an hdex-serve --ray that must exit 1 before serving anything."""
    done = subprocess.run(
        _ray_serve_cmd(model, cluster, *args),
        capture_output=True,
        text=True,
        timeout=timeout,
        env=_env(),
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 1, (done.returncode, done.stdout[-2000:], done.stderr[-4000:])
    assert "serving" not in done.stdout
    return done.stderr


# -- bad input: each refused in one clear line, before any request is accepted ---------------
# (first in the module: the served application below must not be running meanwhile)


def test_address_that_does_not_answer(model_path) -> None:
    port = free_port()  # nothing listens there
    start = time.monotonic()
    err = _refused(model_path, (f"127.0.0.1:{port}", free_port()), timeout=60)
    assert f"no Ray cluster answers at 127.0.0.1:{port}" in err
    assert "ray start --head" in err
    assert time.monotonic() - start < 60


def test_more_lpus_than_the_cluster_has(model_path, cluster, driver) -> None:
    err = _refused(model_path, cluster, "--replicas", "3")
    assert "3 replicas of 1 LPU(s) do not fit" in err and "hold at most 2" in err
    err = _refused(model_path, cluster, "--num-lpu", "4")
    assert "a replica needs 4 LPU(s) on one node" in err and "no node of the cluster" in err
    assert APP_NAME not in serve.status().applications  # nothing was deployed


def test_model_not_compiled(model_path, cluster, driver) -> None:
    source = model_path.parents[2] / "tiny-chat"  # the HF folder, never compiled without prefix
    err = _refused(source, cluster, "--replicas", "1", timeout=240)
    assert "hdex-serve: the replicas failed to start: replica " in err, err[-4000:]
    assert "no compiled model at" in err and "compile it first" in err
    assert "every node that runs a replica needs the compiled folder" in err
    assert "Traceback" not in err
    assert APP_NAME not in serve.status().applications  # deleted again


# -- serving ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def served(model_path, cluster, driver, reference, tmp_path_factory) -> Iterator[str]:
    log = tmp_path_factory.mktemp("ray-serve-app") / "hdex-serve.log"
    with _ray_serving(model_path, cluster, log) as base:
        yield base


def test_routing_text() -> None:
    chat = b'{"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]}'
    assert routing_text("/v1/chat/completions", chat) == "\x1esystem\x1fs\x1euser\x1fu"
    assert routing_text("/v1/completions", b'{"prompt": ["a", "b"]}') == "a"
    assert routing_text("/v1/completions", b'{"prompt": [1, 2]}') == "1 2"
    assert routing_text("/v1/completions", b"[" * 100_000) == ""
    assert routing_text("/health", b"") == ""


def test_sixteen_concurrent_streams_match_a_single_server(served, reference) -> None:
    client = _client(served)
    with ThreadPoolExecutor(len(PROMPTS)) as pool:
        results = list(pool.map(lambda p: _stream(client, p, SHORT), PROMPTS))
    client.close()
    assert [text for _, text in results] == [reference[(p, SHORT)] for p in PROMPTS]
    replicas = {replica for replica, _ in results}
    assert len(replicas) == 2 and None not in replicas, replicas  # both replicas served


def test_each_replica_owns_its_own_lpu(served) -> None:
    client = _client(served)
    seen: dict[str, str] = {}
    deadline = time.monotonic() + 60
    with ThreadPoolExecutor(8) as pool:
        while len(seen) < 2 and time.monotonic() < deadline:
            for raw in pool.map(
                lambda p: client.models.with_raw_response.list(), range(8)
            ):  # fmt: skip
                seen[raw.headers[REPLICA_HEADER]] = raw.headers[DEVICES_HEADER]
    client.close()
    assert sorted(seen.values()) == ["0", "1"], seen


def test_prefix_aware_routing(served) -> None:
    """Requests that share a long system prompt go to the replica that served it first, whose
    prefix cache then supplies the shared tokens."""
    client = _client(served)

    def ask(question: str) -> tuple[str, Any]:
        raw = client.chat.completions.with_raw_response.create(
            model=NAME, messages=_chat(question, SYSTEM), max_tokens=4, temperature=0
        )
        return raw.headers[REPLICA_HEADER], raw.parse().usage

    first, usage = ask("q0")
    assert usage.prompt_tokens > 64  # at least two 32-token blocks of shared prefix
    for i in range(1, 7):  # random routing would pick the same replica 6 times in 64 runs
        replica, usage = ask(f"q{i}")
        assert replica == first
        assert usage.prompt_tokens_details.cached_tokens >= 32
    client.close()


def test_a_client_that_disconnects_cancels_its_generation(served) -> None:
    """The disconnect travels from Serve's proxy through the ingress to the replica's app, which
    stops generating (its /health counts the request as cancelled)."""
    client = _client(served)
    raw = client.chat.completions.with_raw_response.create(
        model=NAME,
        messages=_chat("a generation nobody reads to the end"),
        max_tokens=MAX_LENGTH - 64,
        temperature=0,
        stream=True,
        extra_body={"ignore_eos": True},
    )
    replica = raw.headers[REPLICA_HEADER]
    stream = raw.parse()
    next(iter(stream))
    stream.close()
    client.close()
    deadline = time.monotonic() + 60
    cancelled = 0
    while time.monotonic() < deadline and not cancelled:
        with urllib.request.urlopen(served + "/health", timeout=10) as r:
            if r.headers[REPLICA_HEADER] == replica:
                cancelled = json.loads(r.read())["requests"]["cancelled"]
        time.sleep(0.2)
    assert cancelled >= 1


def _replica_actors() -> dict[str, str]:
    """Replica id -> actor name of the HdexReplica actors alive now."""
    out = {}
    for actor in ray.util.list_named_actors(all_namespaces=True):
        name = actor["name"]
        if actor["namespace"] == "serve" and "#HdexReplica#" in name:
            out[name.rsplit("#", 1)[1]] = name
    return out


def _running() -> int:
    app = serve.status().applications.get(APP_NAME)
    if app is None:
        return 0
    return app.deployments["HdexReplica"].replica_states.get("RUNNING", 0)


def test_a_killed_replica_is_replaced_and_only_its_requests_fail(served, reference) -> None:
    before = _replica_actors()
    assert len(before) == 2
    client = _client(served)
    prompts = PROMPTS[:KILL_RUN]
    started: dict[str, threading.Event] = {r: threading.Event() for r in before}
    results: dict[str, tuple[Optional[str], Any]] = {}

    def run(prompt: str) -> None:
        replica = None
        try:
            raw = client.chat.completions.with_raw_response.create(
                model=NAME,
                messages=_chat(prompt),
                max_tokens=LONG,
                temperature=0,
                stream=True,
                extra_body={"ignore_eos": True},
            )
            replica = raw.headers.get(REPLICA_HEADER)
            text = ""
            for chunk in raw.parse():
                if chunk.choices and chunk.choices[0].delta.content:
                    text += chunk.choices[0].delta.content
                    if replica in started:
                        started[replica].set()
            results[prompt] = (replica, text)
        except openai.APIError as e:
            results[prompt] = (replica, e)

    threads = [threading.Thread(target=run, args=(p,)) for p in prompts]
    for t in threads:
        t.start()
    victim = None
    deadline = time.monotonic() + 120
    while victim is None and time.monotonic() < deadline:
        victim = next((r for r, e in started.items() if e.is_set()), None)
        time.sleep(0.01)
    assert victim is not None, "no stream started"
    ray.kill(ray.get_actor(before[victim], namespace="serve"), no_restart=True)
    for t in threads:
        t.join(timeout=300)
    client.close()
    assert all(not t.is_alive() for t in threads)

    failed = []
    for prompt in prompts:
        replica, outcome = results[prompt]
        if isinstance(outcome, str):  # answered in full, and right
            assert outcome == reference[(prompt, LONG)]
            continue
        failed.append(prompt)
        assert replica in (victim, None), (replica, outcome)  # only the killed one's requests
        assert "replica serving this request stopped" in str(outcome), outcome
    assert failed, "the killed replica had no request in flight"
    assert len(failed) <= MAX_ONGOING  # those waiting in the router went to another replica

    deadline = time.monotonic() + 180  # Serve notices the death and starts a new replica
    while time.monotonic() < deadline:
        now = _replica_actors()
        if _running() == 2 and len(now) == 2 and victim not in now:
            break
        time.sleep(1)
    now = _replica_actors()
    assert victim not in now and len(now) == 2 and _running() == 2, (now, serve.status())
    client = _client(served)
    with ThreadPoolExecutor(4) as pool:
        again = list(pool.map(lambda p: _stream(client, p, SHORT), PROMPTS[:4]))
    client.close()
    assert [t for _, t in again] == [reference[(p, SHORT)] for p in PROMPTS[:4]]
