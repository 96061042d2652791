"""One model object, many threads: forward, generate and generate_yield calls from several
threads run one after another (the device holds one sequence) and all give the results they
give alone. A generate_yield generator holds the device until it ends or is closed; a call
from its own thread takes the device over and the generator fails clearly when resumed.
Every wait is bounded."""

from __future__ import annotations

import gc
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest

N_THREADS = 8
JOIN_S = 60


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Any:
    import helpers

    base = tmp_path_factory.mktemp("threads")
    helpers.make_hf_model("llama", base / "hf", seed=5)
    return helpers.load_lpu(helpers.compile_model(base / "hf", base / "out", max_length=128))


def _prompts(n: int, seed: int = 0) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    shared = rng.integers(0, 512, 20).tolist()  # some share a prefix: the prefix cache works too
    return [
        (shared if i % 3 == 0 else []) + rng.integers(0, 512, 5 + 3 * i).tolist() for i in range(n)
    ]


def _gen(model: Any, prompt: list[int], i: int) -> list[int]:
    kw: dict[str, Any] = {"max_new_tokens": 6 + i % 4}
    if i % 2:
        kw.update(do_sample=True, temperature=0.8, top_k=20, seed=i)
    return [int(t) for t in model.generate([prompt], **kw)[0]]


def _run_threads(target: Any, n: int) -> list[Any]:
    with ThreadPoolExecutor(n) as pool:
        futures = [pool.submit(target, i) for i in range(n)]
        return [f.result(timeout=JOIN_S) for f in futures]


def test_generate_from_many_threads_equals_one_thread(model: Any) -> None:
    prompts = _prompts(N_THREADS)
    alone = [_gen(model, p, i) for i, p in enumerate(prompts)]
    barrier = threading.Barrier(N_THREADS)

    def work(i: int) -> list[list[int]]:
        barrier.wait(timeout=JOIN_S)  # all start together: as much overlap as possible
        return [_gen(model, prompts[i], i) for _ in range(3)]

    for i, runs in enumerate(_run_threads(work, N_THREADS)):
        assert runs == [alone[i]] * 3, i


def test_forward_generate_and_generate_yield_mixed_across_threads(model: Any) -> None:
    prompts = _prompts(N_THREADS, seed=1)
    logits = [np.asarray(model([p]).logits) for p in prompts]
    tokens = [_gen(model, p, i) for i, p in enumerate(prompts)]
    yielded = [list(model.generate_yield([p], max_new_tokens=5)) for p in prompts]
    barrier = threading.Barrier(N_THREADS)

    def work(i: int) -> None:
        barrier.wait(timeout=JOIN_S)
        for step in range(3):
            kind = (i + step) % 3
            if kind == 0:
                assert np.array_equal(np.asarray(model([prompts[i]]).logits), logits[i])
            elif kind == 1:
                assert _gen(model, prompts[i], i) == tokens[i]
            else:  # consumed slowly: the generator holds the device across its yields
                got = []
                for token in model.generate_yield([prompts[i]], max_new_tokens=5):
                    got.append(int(token))
                    time.sleep(0.002)
                assert got == yielded[i]

    _run_threads(work, N_THREADS)


def test_a_paused_generator_makes_other_threads_wait(model: Any) -> None:
    a, b = _prompts(2, seed=2)
    expected_a = list(model.generate_yield([a], max_new_tokens=8))
    expected_b = _gen(model, b, 0)
    gen = model.generate_yield([a], max_new_tokens=8)
    got_a = [next(gen), next(gen)]  # now it holds the device, paused
    result: dict[str, Any] = {}

    def other() -> None:
        result["b"] = _gen(model, b, 0)
        result["at"] = time.monotonic()

    thread = threading.Thread(target=other)
    thread.start()
    thread.join(0.5)
    assert thread.is_alive() and "b" not in result  # waiting for the generator
    got_a += list(gen)  # the generator finishes undisturbed...
    finished_a = time.monotonic()
    thread.join(JOIN_S)
    assert not thread.is_alive()
    assert got_a == expected_a and result["b"] == expected_b  # ...then the other thread runs
    assert result["at"] >= finished_a


def test_a_closed_or_collected_generator_frees_the_device(model: Any) -> None:
    a, b = _prompts(2, seed=3)
    expected = _gen(model, b, 0)
    for drop in ("close", "collect", "close-elsewhere"):
        gen = model.generate_yield([a], max_new_tokens=20)
        next(gen)
        with ThreadPoolExecutor(1) as pool:
            waiting = pool.submit(_gen, model, b, 0)
            time.sleep(0.2)
            assert not waiting.done()
            if drop == "close":
                gen.close()
            elif drop == "collect":
                del gen
                gc.collect()
            else:  # finished on another thread than the one that started it
                pool2 = ThreadPoolExecutor(1)
                pool2.submit(gen.close).result(timeout=JOIN_S)
                pool2.shutdown()
            assert waiting.result(timeout=JOIN_S) == expected, drop


def test_one_thread_interleaving_its_generators_gets_an_error_not_a_deadlock(model: Any) -> None:
    a, b = _prompts(2, seed=4)
    expected_b = list(model.generate_yield([b], max_new_tokens=6))
    first = model.generate_yield([a], max_new_tokens=6)
    next(first)
    second = model.generate_yield([b], max_new_tokens=6)
    got_b = [next(second)]  # this thread's new call takes the device over
    with pytest.raises(RuntimeError, match="another call used the device while this generation"):
        next(first)
    got_b += list(second)  # the new one is unharmed
    assert got_b == expected_b
    # and the device is free for everyone afterwards
    with ThreadPoolExecutor(1) as pool:
        assert pool.submit(_gen, model, b, 1).result(timeout=JOIN_S) == _gen(model, b, 1)


def test_a_call_inside_a_paused_generation_on_its_thread_still_works(model: Any) -> None:
    """generate() (or a forward) between two steps of this thread's own generator: the call
    runs, the generator reports the takeover, nothing waits forever."""
    a, b = _prompts(2, seed=6)
    expected = _gen(model, b, 0)
    gen = model.generate_yield([a], max_new_tokens=6)
    next(gen)
    assert _gen(model, b, 0) == expected
    with pytest.raises(RuntimeError, match="another call"):
        list(gen)
    with ThreadPoolExecutor(1) as pool:
        assert pool.submit(_gen, model, b, 0).result(timeout=JOIN_S) == expected
