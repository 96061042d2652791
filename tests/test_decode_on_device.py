"""When nothing on the host processes or reads the logits, a decode step is one call and no
logits are copied to Python (issue 18, point 1): greedy decoding takes the device's argmax,
sampling the C++ sampler's draw (csrc/runtime/sampler.cpp) on the logits left in C++.
Everything that reads or changes the logits still gets them, and the tokens are the same
either way: the C++ sampler is checked against the host pipeline token for token."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import helpers as H
import numpy as np
import pytest
import torch


class _Recorder:
    """The model's device session, with a record of what each decode call asked for: each
    ``decode`` call's want_logits, and the arguments of each ``decode_sample`` call."""

    def __init__(self, session: Any) -> None:
        self._session = session
        self.want_logits: list[bool] = []
        self.sampled: list[tuple[Any, ...]] = []

    def decode(self, token: int, want_logits: bool = True) -> Any:
        self.want_logits.append(bool(want_logits))
        return self._session.decode(token, want_logits)

    def decode_sample(self, token: int, *args: Any) -> int:
        self.sampled.append(args)
        return self._session.decode_sample(token, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._session, name)


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> str:
    root = tmp_path_factory.mktemp("on_device")
    H.make_hf_model("llama", root / "hf", seed=4, std=0.15)
    return H.compile_model(root / "hf", root / "lpu", max_length=64)


@pytest.fixture(scope="module")
def model(compiled: str) -> Any:
    return H.load_lpu(compiled)


def _record(model: Any) -> _Recorder:
    session = getattr(model._session, "_session", model._session)  # unwrap an earlier one
    model._session = _Recorder(session)
    return model._session


PROMPT = torch.tensor([[5, 17, 99, 3, 42, 7]])


def test_greedy_decodes_with_the_devices_argmax(model: Any) -> None:
    rec = _record(model)
    model.generate(PROMPT, max_new_tokens=12, do_sample=False, min_new_tokens=12, eos_token_id=2)
    # min_new_tokens masks eos on the host: every step needs the logits there.
    assert rec.want_logits and all(rec.want_logits)
    rec = _record(model)
    fast = model.generate(PROMPT, max_new_tokens=12, do_sample=False)
    assert rec.want_logits and not any(rec.want_logits), "logits crossed to Python"
    assert not rec.sampled
    # The same tokens as when the host takes the argmax of the logits (output_scores needs
    # them), and as the argmax of those logits.
    rec = _record(model)
    slow = model.generate(
        PROMPT, max_new_tokens=12, do_sample=False, output_scores=True,
        return_dict_in_generate=True,
    )  # fmt: skip
    assert all(rec.want_logits)
    assert fast[0].tolist() == slow.sequences[0].tolist()
    steps = [int(np.argmax(s[0].numpy())) for s in slow.scores]
    assert steps == slow.sequences[0, PROMPT.shape[1] :].tolist()


@pytest.mark.parametrize(
    "options",
    [
        {"do_sample": True, "seed": 1, "repetition_penalty": 1.3},
        {"do_sample": True, "seed": 1, "logit_bias": {3: 2.0}, "top_k": 5},
        {"do_sample": True, "seed": 1, "min_new_tokens": 4, "eos_token_id": 2},
        {"repetition_penalty": 1.3},
        {"presence_penalty": 0.5},
        {"logit_bias": {3: 2.0}},
    ],
)
def test_what_processes_the_logits_gets_them(model: Any, options: dict[str, Any]) -> None:
    rec = _record(model)
    model.generate(PROMPT, max_new_tokens=6, **options)
    assert rec.want_logits and all(rec.want_logits), options
    assert not rec.sampled


def test_a_callers_processor_gets_the_logits(model: Any) -> None:
    from transformers import LogitsProcessorList, RepetitionPenaltyLogitsProcessor

    rec = _record(model)
    model.generate(
        PROMPT, max_new_tokens=6, do_sample=False,
        logits_processor=LogitsProcessorList([RepetitionPenaltyLogitsProcessor(1.0)]),
    )  # fmt: skip
    assert rec.want_logits and all(rec.want_logits)


def test_streamed_greedy_tokens_are_the_devices(model: Any, tmp_path: Path) -> None:
    seen: list[int] = []

    class Streamer:
        def put(self, value: Any) -> None:
            seen.extend(np.asarray(value).reshape(-1).tolist())

        def end(self) -> None:
            pass

    rec = _record(model)
    out = model.generate(PROMPT, max_new_tokens=8, do_sample=False, streamer=Streamer())
    assert not any(rec.want_logits)
    assert seen == out[0].tolist()  # the prompt, then each token as it came


# -- sampling: the C++ sampler against the host pipeline ---------------------------------------

# GenerationConfig sampling options (do_sample=True), each with both min-p orders
SAMPLING = [
    {},
    {"temperature": 0.7},
    {"temperature": 1.6, "top_k": 40},
    {"top_k": 1},
    {"top_k": 7},
    {"top_p": 0.9},
    {"top_p": 0.5, "temperature": 1.3},
    {"top_p": 0.999},
    {"min_p": 0.05},
    {"min_p": 0.3, "top_p": 0.83},
    {"temperature": 0.8, "top_k": 50, "top_p": 0.95, "min_p": 0.02},
    {"top_k": 300, "top_p": 0.6, "min_p": 0.1},
]


class _Draw:
    """A generator whose one draw is ``u``: sample_token's inverse CDF at a chosen point."""

    def __init__(self, u: float) -> None:
        self.u = u

    def random(self) -> float:
        return self.u


def _config(order: str, **options: Any) -> Any:
    from hyperdex.transformers.generation import GenerationConfig

    return GenerationConfig(do_sample=True, max_new_tokens=4, sampling_order=order, **options)


def _knobs(config: Any) -> tuple[Any, ...]:
    """What generate hands the C++ sampler for ``config``, without the draw."""
    from hyperdex.transformers.generation import GenerationSession

    session = GenerationSession(config, [1])
    assert session.device_sampling and not session.needs_logits
    return session.sampling_args()[:-1]


def _logit_rows(rng: np.random.Generator, vocab: int, count: int) -> list[np.ndarray]:
    """Flat to peaked logits, some rounded (ties, also with the k-th of top-k), some with a
    fifth of the vocab -inf, one with three finite tokens."""
    rows = []
    for i in range(count):
        row = (rng.standard_normal(vocab) * rng.uniform(0.5, 4.0)).astype(np.float32)
        if i % 3 == 1:
            row = np.round(row * 2) / 2
        if i % 2 == 1:
            row[rng.choice(vocab, vocab // 5, replace=False)] = -np.inf
        rows.append(row)
    few = np.full(vocab, -np.inf, dtype=np.float32)
    few[rng.choice(vocab, 3, replace=False)] = [0.5, 0.5, -1.0]
    rows.append(few)
    return rows


@pytest.mark.parametrize("vocab,count", [(300, 24), (49152, 4)])
def test_cpp_sampler_draws_the_host_pipelines_token(vocab: int, count: int) -> None:
    from hyperdex import _core
    from hyperdex.transformers.generation import LogitsPipeline, sample_token

    rng = np.random.default_rng(vocab)
    ids = np.array([1])
    edges = [0.0, float(np.nextafter(1.0, 0.0))]
    checked, wrong = 0, []
    for logits in _logit_rows(rng, vocab, count):
        for options in SAMPLING:
            for order in ("transformers", "vllm"):
                config = _config(order, **options)
                scores = LogitsPipeline(config, 1)(ids, logits)
                knobs = _knobs(config)
                for u in edges + rng.random(6).tolist():
                    host = sample_token(scores, _Draw(u))
                    ours = _core.sample_logits(logits, *knobs, u)
                    checked += 1
                    if ours != host:
                        wrong.append((options, order, u, host, ours))
    assert not wrong, f"{len(wrong)} of {checked} draws differ, e.g. {wrong[:3]}"
    assert checked == (count + 1) * len(SAMPLING) * 2 * 8


def test_cpp_sampler_reports_what_the_host_pipeline_reports() -> None:
    from hyperdex import _core
    from hyperdex.errors import ConfigError

    plain = (1.0, 0, 1.0, 0.0, False)
    for bad in (np.nan, np.inf):
        logits = np.array([0.0, bad, 1.0], dtype=np.float32)
        with pytest.raises(FloatingPointError, match=r"NaN or \+inf"):
            _core.sample_logits(logits, *plain, 0.5)
        with pytest.raises(FloatingPointError, match=r"NaN or \+inf"):
            _core.sample_logits(logits, 0.7, 5, 0.9, 0.1, False, 0.5)
    masked = np.full(5, -np.inf, dtype=np.float32)
    with pytest.raises(ValueError, match="every token has probability 0"):
        _core.sample_logits(masked, *plain, 0.5)
    ok = np.zeros(5, dtype=np.float32)
    for knobs, message in [
        ((0.0, 0, 1.0, 0.0, False, 0.5), "temperature must be a finite float > 0, got 0.0"),
        ((1.0, -1, 1.0, 0.0, False, 0.5), "top_k must be an int >= 0"),
        ((1.0, 0, 1.5, 0.0, False, 0.5), r"top_p must be a float in \(0, 1\]"),
        ((1.0, 0, 1.0, -0.1, False, 0.5), r"min_p must be a float in \[0, 1\]"),
        ((1.0, 0, 1.0, 0.0, False, 1.0), r"u must be a uniform draw in \[0, 1\), got 1.0"),
    ]:
        with pytest.raises(ConfigError, match=message):
            _core.sample_logits(ok, *knobs)
    with pytest.raises(ValueError, match=r"shape \[vocab\]"):
        _core.sample_logits(np.zeros((2, 3), dtype=np.float32), *plain, 0.5)


def test_session_hands_the_sampler_one_draw_per_token() -> None:
    from hyperdex.transformers.generation import GenerationConfig, GenerationSession

    config = GenerationConfig(
        do_sample=True, seed=5, max_new_tokens=4, top_k=3, min_p=0.2, sampling_order="vllm"
    )
    session = GenerationSession(config, [1, 2])
    first = session.sampling_args()
    assert first[:-1] == (1.0, 3, 1.0, 0.2, True)
    draws = np.random.default_rng(5).random(3)
    assert first[-1] == draws[0]  # the draw sample_token would have made
    assert session.sampling_args()[-1] == draws[1]
    # a top_k past int32 is capped (k is capped at the vocab anyway)
    huge = GenerationSession(config.copy(top_k=2**40, min_p=None), [1])
    assert huge.sampling_args()[1:4] == (2**31 - 1, 1.0, 0.0)
    # what needs the logits on the host keeps them there
    for options in ({"repetition_penalty": 1.2}, {"presence_penalty": 0.1}, {"do_sample": False}):
        other = GenerationSession(config.copy(**options), [1])
        assert not other.device_sampling
        with pytest.raises(RuntimeError, match="device_sampling"):
            other.sampling_args()
    streamer = type("Logprobs", (), {"put": print, "end": print, "put_step": print})()
    assert not GenerationSession(config, [1], streamer=streamer).device_sampling
    assert not GenerationSession(config, [1], logits_processor=[print]).device_sampling


class _Identity:
    """A caller's logits processor that changes nothing: it takes generate to the host path."""

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        return scores


def _sample_both_ways(model: Any, options: dict[str, Any], new: int = 16) -> list[int]:
    """generate's tokens with the C++ sampler; checks that every decode step was one
    decode_sample call and that the host path (logits in Python) gives the same tokens."""
    rec = _record(model)
    fast = model.generate(PROMPT, max_new_tokens=new, do_sample=True, **options)
    steps = fast.shape[1] - PROMPT.shape[1] - 1  # the first token comes from the prefill
    assert not rec.want_logits, "logits crossed to Python"
    assert len(rec.sampled) == steps > 0
    rec = _record(model)
    slow = model.generate(
        PROMPT, max_new_tokens=new, do_sample=True, logits_processor=[_Identity()], **options
    )
    assert rec.want_logits and all(rec.want_logits) and not rec.sampled
    assert fast.tolist() == slow.tolist(), options
    return fast[0, PROMPT.shape[1] :].tolist()


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"temperature": 0.6, "top_k": 20},
        {"top_p": 0.8},
        {"min_p": 0.1, "temperature": 1.4},
        {"temperature": 1.2, "top_k": 50, "top_p": 0.9, "min_p": 0.05, "sampling_order": "vllm"},
    ],
)
def test_sampled_decode_is_one_call_with_the_hosts_tokens(
    model: Any, options: dict[str, Any]
) -> None:
    outputs = {tuple(_sample_both_ways(model, {"seed": s, **options})) for s in range(3)}
    assert len(outputs) > 1, "the seeds should sample different tokens"


def test_streamed_sampling_uses_the_cpp_sampler(model: Any) -> None:
    options = {"do_sample": True, "seed": 11, "top_p": 0.9}
    rec = _record(model)
    streamed = list(model.generate_yield(PROMPT, max_new_tokens=10, **options))
    assert rec.sampled and not rec.want_logits
    whole = model.generate(PROMPT, max_new_tokens=10, **options)
    assert streamed == whole[0, PROMPT.shape[1] :].tolist()


def test_sampling_on_a_ring_matches_one_device(tmp_path: Path) -> None:
    """Session::decode gathers the ring's logits slices in C++; decode_sample samples them
    there, with the tokens of the host path."""
    H.make_hf_model("llama", tmp_path / "hf", seed=4, std=0.15)
    ring = H.load_lpu(H.compile_model(tmp_path / "hf", tmp_path / "ring", 64, num_device=2), 2)
    assert ring._session.num_devices == 2
    _sample_both_ways(ring, {"seed": 3, "top_k": 30, "temperature": 0.9}, new=10)


def test_sampling_through_the_board_backend(
    compiled: str, model: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """backend="xrt" on the simulated board (the XRT backend's logic, the emulator as its
    kernel): decode_sample samples what the board's logits read back gave, as the emulator."""
    import json

    from hyperdex import _core
    from hyperdex import xrt as xrt_env
    from hyperdex.transformers import AutoModelForCausalLM

    preset = json.loads((Path(compiled) / "config" / "memory_map.json").read_text())
    stub = xrt_env.write_stub_xclbin(tmp_path / "lpu.xclbin", preset["device_preset"])

    def simulated(preset: Any, config: Any, xclbin: str, kernel: str, index: int, timeout: float):
        return _core.Session.simulated_board(preset, config, xclbin, kernel, timeout)

    monkeypatch.setattr(_core.Session, "xrt", staticmethod(simulated))
    monkeypatch.setattr(xrt_env, "has_xrt", lambda: True)
    monkeypatch.setenv("HYPERDEX_XCLBIN", str(stub))
    board = AutoModelForCausalLM.from_pretrained(compiled, backend="xrt")
    assert "simulated board" in board.device_description
    options = {"seed": 21, "top_p": 0.9, "min_p": 0.05}
    tokens = _sample_both_ways(board, options, new=10)
    assert tokens == _sample_both_ways(model, options, new=10)
