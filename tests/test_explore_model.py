"""The explorer's performance model against hand computation: one operator's roofline, the
all-reduce, bytes per element (W4A16, GQA), and the Pareto front's defining property."""

from __future__ import annotations

import numpy as np
import pytest

from hyperdex.explore import pareto_front
from hyperdex.explore.perf import comm
from hyperdex.explore.perf.operators import (
    kv_bytes_per_token,
    layer_ops,
    weight_bytes_per_element,
    weights_total,
)
from hyperdex.explore.perf.roofline import op_seconds


def _params(**over: float) -> dict[str, np.ndarray]:
    p = dict(
        d=1024.0,
        heads=8.0,
        kv_heads=8.0,
        d_head=128.0,
        d_ff=4096.0,
        vocab=1000.0,
        layers=2.0,
        gated=False,
        parallel=False,
        act_bytes=2.0,
        w_bytes=2.0,
        kv_bytes=2.0,
        a8=False,
        peak_tflops=100.0,
        int8_tflops=200.0,
        vector_tflops=10.0,
        eff_compute=1.0,
        kernel_s=0.0,
        fused=False,
    )
    p.update(over)
    return {k: np.array([[v]]) for k, v in p.items()}


def f(x: np.ndarray) -> float:
    return float(np.ravel(x)[0])


def _op(ops, name):
    return next(o for o in ops if o.name == name)


def test_qkv_roofline_by_hand_memory_bound_then_compute_bound():
    P = _params()
    one = np.array([[1.0]])
    bw = np.array([[1e12]])  # 1 TB/s sustained
    # Decode, one token: qkv is [1024 x 3072] fp16 = 6,291,456 bytes + 4 * 1024 * 2 of
    # activations; 2 * 1024 * 3072 FLOPs. Memory time 6.299648 us >> compute 0.063 us.
    qkv = _op(layer_ops(P, one, one, one, one * 10, prefill=False), "qkv_proj")
    assert f(qkv.flops) == 2 * 1024 * 3072
    assert f(qkv.bytes) == 3 * 1024 * 1024 * 2 + 4 * 1024 * 2
    assert f(op_seconds(qkv, P, bw)) == pytest.approx(6.299648e-6, rel=1e-9)
    # Prefill of 1000 tokens: 6.29e9 FLOPs at 100 TFLOP/s = 62.9 us > 14.5 us of memory.
    s = one * 1000
    qkv = _op(layer_ops(P, one, one, s, s, prefill=True), "qkv_proj")
    assert f(op_seconds(qkv, P, bw)) == pytest.approx(2 * 1024 * 3072 * 1000 / 100e12)
    # A per-kernel overhead adds once per operator.
    P2 = _params(kernel_s=5e-6)
    assert f(op_seconds(qkv, P2, bw)) == pytest.approx(2 * 1024 * 3072 * 1000 / 100e12 + 5e-6)


def test_fused_elementwise_costs_no_memory_trip():
    P = _params(fused=True)
    one = np.array([[1.0]])
    norm = _op(layer_ops(P, one, one, one, one, prefill=False), "attn_norm")
    t = f(op_seconds(norm, P, np.array([[1e9]])))
    assert t == pytest.approx(5 * 1024 / 10e12)  # flops on the vector units only
    P = _params(fused=False)
    assert f(op_seconds(norm, P, np.array([[1e9]]))) == pytest.approx(2 * 1024 * 2 / 1e9)


def test_ring_allreduce_by_hand():
    # 8 devices, 1 MB, 100 GB/s, 2 us per step: 14 steps * 2 us + 14/8 * 1e6 / 1e11 s.
    t = comm.ring_allreduce(np.array(1e6), np.array(8.0), np.array(100.0), np.array(2e-6))
    assert f(t) == pytest.approx(14 * 2e-6 + 14 / 8 * 1e6 / 100e9)
    assert (
        f(comm.ring_allreduce(np.array(1e6), np.array(1.0), np.array(100.0), np.array(2e-6))) == 0.0
    )


def test_2d_ring_fewer_latency_steps_than_one_ring():
    size, n, bw, alpha = np.array(64.0), np.array(64.0), np.array(100.0), np.array(5e-6)
    flat = f(comm.ring_allreduce(size, n, bw, alpha))
    grid = f(comm.ring2d_allreduce(size, n, bw, alpha))
    # 8 x 8: 2*7 + 2*7 = 28 steps instead of 2*63 = 126.
    assert grid == pytest.approx(28 * 5e-6, rel=1e-3)
    assert flat == pytest.approx(126 * 5e-6, rel=1e-3)


def test_w4a16_halves_weight_bytes_of_w8():
    q = np.array(["w4a16", "w8a16", "w16a16", "w8a8"])
    no_scales = weight_bytes_per_element(q, np.zeros(4))
    assert list(no_scales) == [0.5, 1.0, 2.0, 1.0]
    g128 = weight_bytes_per_element(q, np.full(4, 128.0))
    assert list(g128) == [0.5 + 2 / 128, 1.0 + 2 / 128, 2.0, 1.0 + 2 / 128]  # fp16 scales
    P8 = _params(w_bytes=1.0)
    P4 = _params(w_bytes=0.5)
    emb = 2 * 1000 * 1024 * 2.0  # embeddings and head stay fp16
    assert f(weights_total(P4) - emb) == pytest.approx(f(weights_total(P8) - emb) / 2)


def test_gqa_reduces_kv_cache_and_its_traffic():
    mha, gqa = _params(kv_heads=8.0), _params(kv_heads=1.0)
    assert f(kv_bytes_per_token(gqa)) == f(kv_bytes_per_token(mha)) / 8
    one = np.array([[1.0]])
    ctx = np.array([[4096.0]])
    a = _op(layer_ops(mha, one, one, one, ctx, prefill=False), "attention")
    b = _op(layer_ops(gqa, one, one, one, ctx, prefill=False), "attention")
    assert f(b.bytes) < f(a.bytes) / 4
    assert f(b.flops) == f(a.flops)  # the same query heads do the same math


def test_pareto_front_property():
    rng = np.random.default_rng(0)
    x, y = rng.random(500), rng.random(500)
    front = pareto_front(x, y)
    on = set(front.tolist())
    for i in front:  # nothing beats a front point on both axes
        assert not np.any((x < x[i]) & (y < y[i]))
    for j in range(500):  # everything else is beaten (or equalled) by a front point
        if j not in on:
            assert np.any((x[front] <= x[j]) & (y[front] <= y[j]))
    assert np.all(np.diff(x[front]) >= 0) and np.all(np.diff(y[front]) < 0)
