"""Hybrid mode, device_map={"gpu": G, "lpu": N}: PyTorch prefills (on the CPU here), the KV
cache is written into the LPU's KV regions, the LPU decodes: same greedy tokens as pure LPU."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from hyperdex.errors import ConfigError  # noqa: E402


def _load(path, device_map, **kw):
    from hyperdex.transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, device_map=device_map, **kw)


@pytest.mark.parametrize("family", ["llama", "qwen2", "gpt2", "opt"])
def test_same_greedy_tokens_as_pure_lpu(tmp_path, family: str) -> None:
    import helpers

    helpers.make_hf_model(family, tmp_path / "hf", seed=11, row_scale=1.0)
    path = helpers.compile_model(tmp_path / "hf", tmp_path / "out", max_length=128)
    lpu = _load(path, {"lpu": 1})
    hybrid = _load(path, {"gpu": 1, "lpu": 1}, prefix_cache_block_size=8)
    assert hybrid.hybrid is not None and "PyTorch on cpu" in hybrid.hybrid.describe
    rng = np.random.default_rng(5)
    shared = rng.integers(0, 512, 20).tolist()
    # the second and third prompts continue from cached KV: PyTorch gets it as past_key_values
    for prompt in (shared + [7, 8, 9], shared + [1], rng.integers(0, 512, 9).tolist(), shared):
        want = lpu.generate([prompt], max_new_tokens=16)
        got = hybrid.generate([prompt], max_new_tokens=16)
        assert got == want, (family, prompt)
    assert hybrid.prefix_cache.stats.hit_tokens > 0


def test_kv_written_by_pytorch_matches_the_lpu_own(tmp_path) -> None:
    import helpers

    helpers.make_hf_model("llama", tmp_path / "hf", seed=12)
    path = helpers.compile_model(tmp_path / "hf", tmp_path / "out", max_length=64)
    lpu = _load(path, {"lpu": 1}, enable_prefix_caching=False)
    hybrid = _load(path, {"gpu": 0, "lpu": 1}, enable_prefix_caching=False)
    prompt = list(range(3, 40))
    lpu.generate([prompt], max_new_tokens=1)
    hybrid.generate([prompt], max_new_tokens=1)
    n = len(prompt)
    ours = lpu._session.read_kv(0, n).astype(np.float32)
    theirs = hybrid._session.read_kv(0, n).astype(np.float32)
    # fp16 rounding of a few layers of activations: far below the values themselves
    assert np.abs(theirs).max() > 0.5
    assert np.abs(ours - theirs).max() < 0.05 * np.abs(ours).max()


def test_hybrid_needs_the_hf_weights(tmp_path) -> None:
    import helpers

    helpers.make_hf_model("llama", tmp_path / "hf", seed=13)
    path = helpers.compile_model(
        tmp_path / "hf", tmp_path / "out", max_length=64, low_memory_usage=True
    )
    with pytest.raises(ConfigError, match="low_memory_usage"):
        _load(path, {"gpu": 1, "lpu": 1})
    with pytest.raises(ConfigError, match="gpu"):
        _load(path, {"gpu": -1, "lpu": 1})
    with pytest.raises(ConfigError, match="unknown key"):
        _load(path, {"tpu": 1, "lpu": 1})
