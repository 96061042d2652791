"""Prefix caching: the block pool's rules (chained salted hashes, full blocks only, refcounts,
LRU under a capacity) and, on the emulator, outputs bit-identical with the cache on and off,
through resident reuse, restores from the pool and eviction under pressure."""

from __future__ import annotations

import numpy as np
import pytest

from hyperdex.transformers.prefix_cache import PrefixCache

pytest.importorskip("torch")
pytest.importorskip("transformers")

BLOCK = 16


def _pool(capacity_blocks: int, salt: bytes = b"salt", block: int = 4) -> PrefixCache:
    return PrefixCache(block, block_bytes=8, capacity_bytes=8 * capacity_blocks, salt=salt)


def _data(v: int) -> np.ndarray:
    return np.full(4, v, dtype=np.float16)  # 8 bytes


# -- the pool ----------------------------------------------------------------------------------


def test_hashes_are_chained_salted_and_cover_full_blocks_only() -> None:
    pool = _pool(4)
    tokens = list(range(11))
    keys = pool.block_hashes(tokens)
    assert len(keys) == 2  # 11 tokens: two full blocks of 4, the rest is not cached
    assert keys == pool.block_hashes(tokens[:8]) == pool.block_hashes(np.array(tokens[:9]))
    changed = [99] + tokens[1:]
    other = pool.block_hashes(changed)
    assert other[0] != keys[0] and other[1] != keys[1]  # block 1 depends on block 0's tokens
    assert _pool(4, salt=b"other model").block_hashes(tokens) != keys
    assert len(set(keys)) == 2 and all(len(k) == 32 for k in keys)


def test_lru_evicts_the_least_recently_used() -> None:
    pool = _pool(2)
    assert pool.put(b"a", _data(1)) and pool.put(b"b", _data(2))
    assert pool.get(b"a") is not None  # a is now the most recent
    assert pool.put(b"c", _data(3))
    assert b"b" not in pool and b"a" in pool and b"c" in pool
    assert pool.stats.evicted_blocks == 1
    assert pool.bytes_used == 16 and pool.capacity_blocks == 2


def test_chains_are_evicted_tail_first() -> None:
    pool = _pool(3)
    for key in (b"h0", b"h1", b"h2"):
        pool.put(key, _data(0))
    pool.touch_chain([b"h0", b"h1", b"h2"])
    pool.put(b"x", _data(1))
    assert b"h0" in pool and b"h1" in pool and b"h2" not in pool


def test_referenced_blocks_are_never_evicted() -> None:
    pool = _pool(2)
    pool.put(b"a", _data(1))
    pool.put(b"b", _data(2))
    pool.acquire([b"a", b"b"])
    assert pool.refcount(b"a") == 1
    assert not pool.put(b"c", _data(3))  # full of referenced blocks: rejected
    assert pool.stats.rejected_blocks == 1 and b"c" not in pool
    pool.release([b"a"])
    assert pool.put(b"c", _data(3))
    assert b"a" not in pool and b"b" in pool
    pool.release([b"b", b"b"])  # never below zero
    assert pool.refcount(b"b") == 0


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="block_size"):
        PrefixCache(0, 8, 64, b"")
    with pytest.raises(ValueError, match="capacity"):
        PrefixCache(4, 8, -1, b"")
    with pytest.raises(ValueError, match="bytes"):
        _pool(2).put(b"a", np.zeros(3, np.float16))


# -- on the emulator ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    import helpers

    base = tmp_path_factory.mktemp("prefix")
    helpers.make_hf_model("llama", base / "hf", seed=3)
    return helpers.compile_model(base / "hf", base / "out", max_length=256)


def _load(path, **kw):
    from hyperdex.transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, device_map={"lpu": 1}, **kw)


def _run(model, prompt, **kw):
    out = model.generate(
        [prompt], max_new_tokens=6, return_dict_in_generate=True, output_logits=True, **kw
    )
    return out.sequences[0], [np.asarray(x) for x in out.logits]


def _prompts(seed: int) -> list[list[int]]:
    """Families of prompts that share prefixes, interleaved with unrelated ones."""
    rng = np.random.default_rng(seed)
    a, b = rng.integers(0, 512, 70).tolist(), rng.integers(0, 512, 40).tolist()
    tail = lambda n: rng.integers(0, 512, n).tolist()  # noqa: E731
    return [
        a + tail(5),
        a + tail(9),  # resident: continues from the device's sequence
        b + tail(3),  # takes the device over: a's blocks go to the pool
        a + tail(2),  # restored from the pool
        a[:33],  # a shorter prefix of a: part resident, part not
        b + tail(20),
        a + tail(1),
        a,  # exactly a cached prompt: its last token is still prefilled
        a,
    ]


def test_outputs_identical_with_cache_on_and_off(compiled) -> None:
    on = _load(compiled, prefix_cache_block_size=BLOCK)
    off = _load(compiled, enable_prefix_caching=False)
    cached = []
    for prompt in _prompts(0):
        seq_on, logits_on = _run(on, prompt)
        seq_off, logits_off = _run(off, prompt)
        assert seq_on == seq_off
        for x, y in zip(logits_on, logits_off):
            assert np.array_equal(x, y)  # bit for bit
        cached.append(on.last_cached_tokens)
    stats = on.prefix_cache.stats
    assert cached[0] == 0 and cached[1] == 70 and cached[3] >= 64 and cached[7] == 69
    assert stats.restored_blocks > 0 and stats.saved_blocks > 0 and stats.resident_hit_tokens > 0
    assert stats.hit_tokens == sum(cached)
    assert off.prefix_cache is None and off.last_cached_tokens == 0


def test_sampling_identical_with_cache_on_and_off(compiled) -> None:
    on = _load(compiled, prefix_cache_block_size=BLOCK)
    off = _load(compiled, enable_prefix_caching=False)
    for prompt in _prompts(1)[:5]:
        kw = dict(do_sample=True, temperature=0.8, top_k=20, seed=5)
        assert _run(on, prompt, **kw)[0] == _run(off, prompt, **kw)[0]


def test_eviction_under_pressure_keeps_results_right(compiled) -> None:
    on = _load(compiled, prefix_cache_block_size=BLOCK, prefix_cache_bytes=0)
    block_bytes = on.prefix_cache.block_bytes
    on = _load(compiled, prefix_cache_block_size=BLOCK, prefix_cache_bytes=3 * block_bytes)
    off = _load(compiled, enable_prefix_caching=False)
    rng = np.random.default_rng(2)
    families = [rng.integers(0, 512, 50).tolist() for _ in range(4)]
    for step in range(10):
        prompt = families[step % 4] + rng.integers(0, 512, 3).tolist()
        assert _run(on, prompt)[0] == _run(off, prompt)[0]
        assert len(on.prefix_cache) <= 3
    stats = on.prefix_cache.stats
    assert stats.evicted_blocks > 0 and stats.saved_blocks > 3


def test_forward_and_taken_over_generations_keep_the_cache_right(compiled) -> None:
    on = _load(compiled, prefix_cache_block_size=BLOCK)
    off = _load(compiled, enable_prefix_caching=False)
    prompts = _prompts(3)
    _run(on, prompts[0])
    # forward() rewrites the cache from position 0 with every logit row
    got = np.asarray(on([prompts[1]]).logits)
    assert np.array_equal(got, np.asarray(off([prompts[1]]).logits))
    # a paused generation taken over by another call
    paused = on.generate_yield([prompts[3]], max_new_tokens=5)
    next(paused)
    assert _run(on, prompts[2])[0] == _run(off, prompts[2])[0]
    with pytest.raises(RuntimeError, match="another call"):
        list(paused)
    for prompt in prompts[3:6]:
        assert _run(on, prompt)[0] == _run(off, prompt)[0]
    assert on.prefix_cache.stats.restored_blocks > 0


def test_learned_positions_model(tmp_path) -> None:
    import helpers

    helpers.make_hf_model("gpt2", tmp_path / "hf", seed=4)
    path = helpers.compile_model(tmp_path / "hf", tmp_path / "out", max_length=128)
    on = _load(path, prefix_cache_block_size=8)
    off = _load(path, enable_prefix_caching=False)
    rng = np.random.default_rng(4)
    a, b = rng.integers(0, 512, 30).tolist(), rng.integers(0, 512, 30).tolist()
    for prompt in (a + [1, 2], b, a + [3], a):
        seq, logits = _run(on, prompt)
        seq_off, logits_off = _run(off, prompt)
        assert seq == seq_off and all(np.array_equal(x, y) for x, y in zip(logits, logits_off))
    assert on.prefix_cache.stats.restored_blocks > 0
