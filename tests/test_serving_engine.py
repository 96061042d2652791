"""The serving engine's parts without a server: incremental detokenization (split characters,
stop strings), sampling options, the fair queue, cancellation, device counts from the
environment."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from hyperdex.errors import ConfigError
from hyperdex.serving import device_map_from_env
from hyperdex.serving.engine import (
    Delta,
    Engine,
    FairQueue,
    IncrementalDetokenizer,
    Job,
    PromptTooLong,
    Sampling,
    run_generation,
    token_budget,
    token_logprob,
)

EOS = 256


class ByteTokenizer:
    """One token per UTF-8 byte; 256 is a special eos token ("<eos>")."""

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        out = bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")
        if not skip_special_tokens and EOS in ids:
            out += "<eos>"
        return out


def _deltas(text: str, **kw) -> tuple[list[str], IncrementalDetokenizer]:
    detok = IncrementalDetokenizer(ByteTokenizer(), **kw)
    out = [detok.add(b) for b in text.encode()]
    out.append(detok.finish())
    return [d for d in out if d], detok


@pytest.mark.parametrize("text", ["Hello world", "我们 中文。", "안녕 🚀🎉 é\n𝄞 end"])
def test_detokenizer_never_splits_a_character(text: str) -> None:
    deltas, detok = _deltas(text)
    assert "".join(deltas) == text == detok.text
    assert all("\ufffd" not in d for d in deltas)
    assert len(deltas) == len(text)  # one delta per completed character


def test_stop_strings_end_the_text_before_them() -> None:
    deltas, detok = _deltas("Paris is nice. More text", stop=["."])
    assert detok.text == "Paris is nice" and detok.stopped_by == "."
    assert "".join(deltas) == detok.text
    deltas, detok = _deltas("one two END three", stop=["END", "zzz"], include_stop=True)
    assert detok.text == "one two END" and "".join(deltas) == detok.text
    # a stop string split over tokens is never streamed in part
    deltas, detok = _deltas("abc ENDING", stop=["END"])
    assert deltas and all("E" not in d for d in deltas) and detok.text == "abc "
    # a false start is released once it cannot be a stop string any more
    deltas, detok = _deltas("an ENtry", stop=["END"])
    assert "".join(deltas) == "an ENtry" and detok.stopped_by is None


def test_earliest_stop_string_wins_and_special_tokens() -> None:
    _, detok = _deltas("x; y. z", stop=[".", ";"])
    assert detok.text == "x" and detok.stopped_by == ";"
    detok = IncrementalDetokenizer(ByteTokenizer(), skip_special_tokens=False)
    for t in [*b"hi", EOS]:
        detok.add(t)
    assert detok.text + detok.finish() == "hi<eos>"


def test_sampling_options() -> None:
    greedy = Sampling(temperature=0, max_tokens=5, stop="x").generate_kwargs(5)
    assert greedy["do_sample"] is False and "temperature" not in greedy
    sample = Sampling(temperature=0.7, top_k=-1, top_p=0.9, seed=3, stop_token_ids=[4])
    kw = sample.generate_kwargs(9)
    assert kw["do_sample"] and kw["top_k"] == 0 and kw["top_p"] == 0.9 and kw["seed"] == 3
    assert kw["stop"] == [4] and kw["max_new_tokens"] == 9
    assert Sampling(ignore_eos=True).generate_kwargs(1)["eos_token_id"] is None
    vllm = Sampling(min_p=0.1, presence_penalty=0.5, logit_bias={3: -100.0}).generate_kwargs(2)
    assert vllm["min_p"] == 0.1 and vllm["sampling_order"] == "vllm"
    assert vllm["presence_penalty"] == 0.5 and vllm["frequency_penalty"] == 0.0
    assert vllm["logit_bias"] == {3: -100.0}
    greedy = Sampling(temperature=0, min_p=0.5, frequency_penalty=1.0).generate_kwargs(2)
    assert "min_p" not in greedy and greedy["frequency_penalty"] == 1.0  # penalties: greedy too
    for bad, name in [
        (dict(max_tokens=0), "max_tokens"),
        (dict(max_tokens=-4), "max_tokens"),
        (dict(temperature=-1), "temperature"),
        (dict(top_p=0), "top_p"),
        (dict(top_k=-2), "top_k"),
        (dict(seed=-1), "seed"),
        (dict(stop=[""]), "stop"),
        (dict(repetition_penalty=0), "repetition_penalty"),
        (dict(repetition_penalty=float("inf")), "repetition_penalty"),
        (dict(repetition_penalty=float("nan")), "repetition_penalty"),
        (dict(temperature=float("inf")), "temperature"),
        (dict(top_p=float("nan")), "top_p"),
        (dict(min_p=1.5), "min_p"),
        (dict(presence_penalty=-3), "presence_penalty"),
        (dict(frequency_penalty=float("inf")), "frequency_penalty"),
        (dict(logit_bias={"7": 1.0}), "logit_bias"),
        (dict(logit_bias={7: float("nan")}), "logit_bias"),
        (dict(logprobs=-1), "logprobs"),
        (dict(prompt_logprobs=1.5), "prompt_logprobs"),
    ]:
        with pytest.raises(ValueError) as e:
            Sampling(**bad)
        assert e.value.args[1] == name


def test_fair_queue_round_robin_over_clients() -> None:
    q = FairQueue(max_jobs=6)
    jobs = {}
    for name in ("a1", "a2", "a3", "b1", "c1", "b2"):
        jobs[name] = Job([1], Sampling(), lambda *_: None, client=name[0])
        assert q.put(jobs[name])
    assert not q.put(Job([1], Sampling(), lambda *_: None, client="d"))  # full
    order = [q.get(timeout=1) for _ in range(6)]
    assert [next(k for k, v in jobs.items() if v is j) for j in order] == [
        "a1",
        "b1",
        "c1",
        "a2",
        "b2",
        "a3",
    ]
    t0 = time.monotonic()
    assert q.get(timeout=0.05) is None and time.monotonic() - t0 < 2


class FakeModel:
    """Counts up from the last prompt token; ``delay`` seconds per token."""

    max_length = 64
    vocab_size = 300

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.last_cached_tokens = 0
        self.started = threading.Event()

        class Config:
            eos_token_ids = (EOS,)

        self.generation_config = Config()

    def generate_yield(self, ids, max_new_tokens, streamer=None, **kw):
        self.started.set()
        token = ids[0][-1]
        for _ in range(max_new_tokens):
            time.sleep(self.delay)
            token = self.next_token(token)
            if streamer is not None:  # as GenerationSession reports each step
                streamer.put_step(token, self.logits(token), self.logits(token))
            yield token

    @staticmethod
    def next_token(token: int) -> int:
        return ord("a") + (token + 1 - ord("a")) % 26

    def logits(self, token: int) -> np.ndarray:
        """Made-up logits in which ``token`` is the likeliest."""
        logits = np.linspace(-3.0, 1.0, self.vocab_size, dtype=np.float32)
        logits[token] = 4.0
        return logits


class ScriptModel(FakeModel):
    """Yields ``script`` whatever the prompt."""

    def __init__(self, script: list[int]) -> None:
        super().__init__()
        self.script = list(script)

    def generate_yield(self, ids, max_new_tokens, streamer=None, **kw):
        self._steps = iter(self.script)
        return super().generate_yield(ids, min(max_new_tokens, len(self.script)), streamer)

    def next_token(self, token: int) -> int:
        return next(self._steps)


def test_run_generation_budget_and_reasons() -> None:
    model = FakeModel()
    r = run_generation(model, ByteTokenizer(), [ord("a")], Sampling(max_tokens=5))
    assert r.text == "bcdef" and r.finish_reason == "length" and r.completion_tokens == 5
    r = run_generation(model, ByteTokenizer(), [ord("a")], Sampling(max_tokens=9, stop="e"))
    assert r.text == "bcd" and r.finish_reason == "stop" and r.stop_reason == "e"
    r = run_generation(
        model, ByteTokenizer(), [ord("a")], Sampling(max_tokens=9, stop_token_ids=[ord("c")])
    )
    assert r.text == "bc" and r.stop_reason == ord("c")
    assert token_budget(model, 60, None) == 4
    with pytest.raises(PromptTooLong):
        token_budget(model, 60, 5)
    with pytest.raises(PromptTooLong):
        token_budget(model, 64, None)


def test_token_logprob_is_log_softmax_with_rank_and_top() -> None:
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    logits = (rng.standard_normal(1000) * 3).astype(np.float32)
    logits[[10, 20]] = logits.max() + 1  # a tie at the top: the lower id comes first
    want = torch.log_softmax(torch.from_numpy(logits).double(), -1).numpy()
    order = sorted(range(1000), key=lambda i: (-want[i], i))
    for token in (10, 20, order[7], order[-1]):
        entry = token_logprob(logits, token, 5)
        assert abs(entry.logprob - want[token]) < 1e-9
        assert entry.rank == int((want >= want[token]).sum())  # vLLM's rank
        assert [t for t, _ in entry.top] == order[:5]
        np.testing.assert_allclose([lp for _, lp in entry.top], want[order[:5]], atol=1e-9)
    assert token_logprob(logits, 3, 0).top == []


def test_streamed_logprobs_add_up_to_the_result() -> None:
    """A held character's log-probabilities travel with the delta that releases its text; a
    token without text (eos) sends them with an empty last delta."""
    e_acute = list("é".encode())
    model = ScriptModel([*e_acute, ord("a"), EOS])
    deltas: list[Delta] = []
    r = run_generation(
        model, ByteTokenizer(), [ord("x")], Sampling(max_tokens=9, logprobs=2), deltas.append
    )
    assert r.text == "éa" and r.token_ids == [*e_acute, ord("a"), EOS]
    assert [d.text for d in deltas] == ["é", "a", ""]
    assert [len(d.logprobs) for d in deltas] == [2, 1, 1]
    streamed = [e for d in deltas for e in d.logprobs]
    assert streamed == r.logprobs and [e.token_id for e in streamed] == r.token_ids
    for e in r.logprobs:
        assert e.rank == 1 and e.top[0][0] == e.token_id
        want = token_logprob(model.logits(e.token_id), e.token_id, 2)
        assert e == want
    assert r.cumulative_logprob == pytest.approx(sum(e.logprob for e in r.logprobs))
    plain = run_generation(model, ByteTokenizer(), [ord("x")], Sampling(max_tokens=9))
    assert plain.logprobs is None and plain.cumulative_logprob is None


def test_engine_reports_finished_jobs_with_token_times() -> None:
    model = FakeModel()
    seen: list = []
    engine = Engine(model, ByteTokenizer(), on_finish=lambda job, r: seen.append((job, r)))
    events, done, sink = _recording_sinks("a")
    job = Job([ord("a")], Sampling(max_tokens=4), sink("a"))
    engine.start()
    try:
        assert engine.submit(job) and done["a"].wait(10)
    finally:
        engine.shutdown()
    ((got_job, result),) = seen
    assert got_job is job and result.completion_tokens == 4 and len(result.token_times) == 4
    assert job.enqueued_at <= job.started_at <= result.token_times[0]
    assert result.token_times == sorted(result.token_times)


def _recording_sinks(*names: str):
    """Per job name: the (kind, payload) events its sink got, an Event set when it ended, and
    ``sink(name)``, the job's sink."""
    events: dict[str, list] = {k: [] for k in names}
    done = {k: threading.Event() for k in names}

    def sink(name):
        def put(kind, payload):
            events[name].append((kind, payload))
            if kind != "delta":
                done[name].set()

        return put

    return events, done, sink


def test_engine_cancels_running_and_skips_queued_jobs() -> None:
    model = FakeModel(delay=0.01)
    engine = Engine(model, ByteTokenizer(), max_queue=4)
    events, done, sink = _recording_sinks("long", "queued", "next")

    jobs = {k: Job([ord("a")], Sampling(max_tokens=50), sink(k), client=k) for k in events}
    engine.start()
    try:
        assert engine.submit(jobs["long"])
        assert model.started.wait(5)
        assert engine.submit(jobs["queued"]) and engine.submit(jobs["next"])
        jobs["queued"].cancel()  # gives up while waiting
        time.sleep(0.05)
        jobs["long"].cancel()  # gives up mid-generation
        for name in events:
            assert done[name].wait(10), name
    finally:
        engine.shutdown()
    long_result = events["long"][-1][1]
    assert long_result.finish_reason == "cancelled" and long_result.completion_tokens < 50
    assert events["queued"] == [("done", None)]  # never ran
    assert events["next"][-1][1].completion_tokens == 50
    assert engine.stats.cancelled == 2 and engine.stats.completed == 1


def test_engine_cancel_all_stops_the_running_job_and_the_queue() -> None:
    """What a server that shuts down does once its grace period is nearly spent."""
    model = FakeModel(delay=0.01)
    engine = Engine(model, ByteTokenizer(), max_queue=4)
    events, done, sink = _recording_sinks("running", "a", "b")

    engine.start()
    try:
        assert engine.submit(Job([ord("a")], Sampling(max_tokens=60), sink("running"), "x"))
        assert model.started.wait(5)
        for name in ("a", "b"):
            assert engine.submit(Job([ord("a")], Sampling(max_tokens=60), sink(name), name))
        assert engine.cancel_all() == 3
        for name in events:
            assert done[name].wait(10), name
    finally:
        engine.shutdown()
    assert events["running"][-1][1].finish_reason == "cancelled"
    assert events["a"] == events["b"] == [("done", None)]
    assert engine.cancel_all() == 0 and len(engine.queue) == 0


def test_device_map_from_env(monkeypatch) -> None:
    monkeypatch.delenv("NUM_LPU_DEVICES", raising=False)
    monkeypatch.delenv("NUM_GPU_DEVICES", raising=False)
    assert device_map_from_env() is None
    monkeypatch.setenv("NUM_LPU_DEVICES", "2")
    assert device_map_from_env() == {"lpu": 2}
    monkeypatch.setenv("NUM_GPU_DEVICES", "1")
    assert device_map_from_env() == {"gpu": 1, "lpu": 2}
    assert device_map_from_env(num_lpu=1, num_gpu=0) == {"lpu": 1}
    monkeypatch.setenv("NUM_LPU_DEVICES", "two")
    with pytest.raises(ConfigError, match="NUM_LPU_DEVICES"):
        device_map_from_env()
