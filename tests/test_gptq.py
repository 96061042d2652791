"""GPTQ / RTN in the C++ core (hyperdex._core.quant) against a plain NumPy GPTQ written
here, the error it should remove compared with round-to-nearest, the exact dequantization,
the Hessian accumulator, and the errors bad input must give."""

from __future__ import annotations

import re

import numpy as np
import pytest

from hyperdex import _core
from hyperdex.errors import ConfigError

quant = _core.quant

# -- a plain NumPy GPTQ (unblocked, column by column, float64) ------------------------------


def np_scale(absmax: np.ndarray, bits: int) -> np.ndarray:
    """fp16 scale of groups with these absmax values (computed in fp32, stored in fp16)."""
    s = (2.0 * absmax / (2**bits - 1)).astype(np.float32).astype(np.float16)
    s[s == 0] = 1.0
    return s


def np_quantize(w: np.ndarray, s16: np.ndarray, bits: int):
    """Codes and the dequantized fp16 value w' = fp16(float(q - z) * float(scale))."""
    z = 2 ** (bits - 1)
    q = np.clip(np.round(w / s16.astype(np.float64)) + z, 0, 2**bits - 1)
    wq = ((q - z).astype(np.float32) * s16.astype(np.float32)).astype(np.float16)
    return q.astype(np.uint8), wq.astype(np.float64)


def np_group_scale(w: np.ndarray, bits: int, mse: float) -> np.ndarray:
    """Scales of the groups w [rows, len]: from the largest weight, or (mse = 2) the best of
    absmax * (1 - i / 100), i < 20, by the squared error of the unrounded w'."""
    absmax = np.abs(w).max(axis=1)
    if not mse:
        return np_scale(absmax, bits)
    z = 2 ** (bits - 1)
    cands = np.stack([np_scale(absmax * (1 - i / 100), bits) for i in range(20)], axis=1)
    sd = cands.astype(np.float64)[:, :, None]  # [rows, 20, 1]
    q = np.clip(np.round(w[:, None, :] * (1.0 / sd)) + z, 0, 2**bits - 1)
    err = np.sum((w[:, None, :] - (q - z) * sd) ** 2, axis=2)
    return cands[np.arange(len(w)), np.argmin(err, axis=1)]  # the first of equal errors


def np_gptq(
    W,
    H,
    bits=4,
    group_size=128,
    desc_act=False,
    static_groups=False,
    damp_percent=0.01,
    act_group_aware=False,
    mse=0.0,
):
    """GPTQ as the paper and its reference code describe it, without lazy batching."""
    W = W.astype(np.float64).copy()
    H = H.astype(np.float64).copy()
    rows, cols = W.shape
    g = cols if group_size == -1 else group_size
    dead = np.diag(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    static = None
    if static_groups:
        static = [np_group_scale(W[:, i : i + g], bits, mse) for i in range(0, cols, g)]
    perm = np.argsort(-np.diag(H), kind="stable") if desc_act else np.arange(cols)
    if act_group_aware:  # whole groups by their largest H_jj, each group's columns by theirs
        diag = np.diag(H)
        starts = range(0, cols, g)
        order = np.argsort([-diag[i : i + g].max() for i in starts], kind="stable")
        perm = np.concatenate(
            [i + np.argsort(-diag[i : i + g], kind="stable") for i in np.array(starts)[order]]
        )
    W = W[:, perm]
    H = H[np.ix_(perm, perm)]
    damp = damp_percent * np.mean(np.diag(H))
    H[np.diag_indices(cols)] += damp
    linv = np.linalg.inv(np.linalg.cholesky(H))
    U = np.linalg.cholesky(linv.T @ linv).T  # upper Cholesky factor of H^-1
    codes = np.zeros((rows, cols), np.uint8)
    scales = np.zeros((rows, -(-cols // g)), np.float16)  # a shorter last group when g ∤ cols
    loss = 0.0
    s = None
    for j in range(cols):
        if static is not None:
            s = static[perm[j] // g]
        elif j == 0 or perm[j] // g != perm[j - 1] // g:  # a group starts (in visiting order)
            length = int(np.sum(perm // g == perm[j] // g))
            s = np_group_scale(W[:, j : j + length], bits, mse)
            scales[:, perm[j] // g] = s
        q, wq = np_quantize(W[:, j], s, bits)
        err = (W[:, j] - wq) / U[j, j]
        loss += float(np.sum(err**2)) / 2
        W[:, j:] -= np.outer(err, U[j, j:])
        codes[:, perm[j]] = q
    if static is not None:
        scales = np.stack(static, axis=1)
    return codes, scales, loss, damp


# -- data -----------------------------------------------------------------------------------


def layer(rows, cols, n=1024, seed=0, outliers=0, dead=()):
    """Weights and correlated calibration inputs X = Z A (H far from diagonal)."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, cols)) @ rng.standard_normal((cols, cols)) / np.sqrt(cols)
    if outliers:
        X[:, rng.choice(cols, outliers, replace=False)] *= 8.0
    X[:, list(dead)] = 0.0
    W = (rng.standard_normal((rows, cols)) * 0.02).astype(np.float32)
    return W, X.astype(np.float32)


def hessian(X):
    acc = quant.HessianAccumulator(X.shape[1])
    acc.add(X)
    return acc.hessian()


def output_error(W, codes, scales, bits, group_size, X):
    Wq = quant.dequantize(codes, scales, bits, group_size).astype(np.float64)
    return float(np.linalg.norm((W.astype(np.float64) - Wq) @ X.astype(np.float64).T))


# -- GPTQ against the NumPy version ---------------------------------------------------------

CASES = [
    dict(bits=4, group_size=128),
    dict(bits=4, group_size=32),
    dict(bits=4, group_size=64, block_size=48),
    dict(bits=4, group_size=96),  # 256 = 96 + 96 + 64: a shorter last group, as in GPTQ
    dict(bits=8, group_size=96, desc_act=True, static_groups=True),
    dict(bits=8, group_size=-1),
    dict(bits=4, group_size=64, static_groups=True),
    dict(bits=4, group_size=64, desc_act=True, static_groups=True),
    dict(bits=8, group_size=128, desc_act=True, static_groups=True, damp_percent=0.1),
    dict(bits=4, group_size=64, act_group_aware=True),
    dict(bits=4, group_size=96, act_group_aware=True, block_size=40),  # a short group inside
    dict(bits=8, group_size=32, act_group_aware=True, mse=2.0),
    dict(bits=4, group_size=64, mse=2.0),
    dict(bits=4, group_size=64, desc_act=True, static_groups=True, mse=2.0),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_gptq_matches_numpy_reference(case):
    W, X = layer(96, 256, seed=1, outliers=8, dead=(3, 200))
    H = hessian(X)
    kw = {k: v for k, v in case.items() if k != "block_size"}
    want_codes, want_scales, want_loss, want_damp = np_gptq(W, H, **kw)
    got = quant.gptq(W, H, name="blk.0.attn_q.weight", **case)
    assert got["codes"].dtype == np.uint8 and got["codes"].shape == W.shape
    assert got["scales"].dtype == np.float16 and got["scales"].shape == want_scales.shape
    # Both run in fp64 with different summation orders: a code may differ only where w / scale
    # sits on a rounding tie to ~1e-12, which random data essentially never does.
    mismatch = np.mean(got["codes"] != want_codes)
    assert mismatch <= 1e-3, f"{mismatch:.2%} of the codes differ"
    if case.get("mse"):  # the scale search sums in another order: a near-tie may go either way
        assert np.mean(got["scales"] != want_scales) <= 5e-3
    else:
        np.testing.assert_array_equal(got["scales"], want_scales)
    assert got["loss"] == pytest.approx(want_loss, rel=1e-9)
    assert got["damp"] == pytest.approx(want_damp, rel=1e-12)
    assert got["retries"] == 0
    z = 2 ** (case["bits"] - 1)
    assert np.all(got["codes"][:, [3, 200]] == z)  # dead inputs quantize to exactly 0


def test_gptq_is_deterministic_across_thread_counts():
    W, X = layer(200, 384, seed=2)
    H = hessian(X)
    a = quant.gptq(W, H, group_size=128, num_threads=1)
    b = quant.gptq(W, H, group_size=128, num_threads=2)
    np.testing.assert_array_equal(a["codes"], b["codes"])
    np.testing.assert_array_equal(a["scales"], b["scales"])
    assert a["loss"] == b["loss"]


def test_inputs_in_other_dtypes_are_converted():
    W, X = layer(32, 128, seed=10)
    H = hessian(X)
    W16 = W.astype(np.float16)
    a = quant.gptq(W16, H.astype(np.float32), group_size=64)  # converted on the way in
    b = quant.gptq(W16.astype(np.float32), H.astype(np.float32).astype(np.float64), group_size=64)
    np.testing.assert_array_equal(a["codes"], b["codes"])
    c = quant.gptq(np.asfortranarray(W), H, group_size=64)  # not C-contiguous: copied
    np.testing.assert_array_equal(c["codes"], quant.gptq(W, H, group_size=64)["codes"])
    np.testing.assert_array_equal(
        quant.rtn(W16, group_size=64)["codes"],
        quant.rtn(W16.astype(np.float32), group_size=64)["codes"],
    )


def test_gptq_reduces_the_output_error_of_rtn():
    W, X = layer(128, 512, n=2048, seed=3)
    H = hessian(X)
    g = quant.gptq(W, H, bits=4, group_size=128)
    r = quant.rtn(W, bits=4, group_size=128)
    e_gptq = output_error(W, g["codes"], g["scales"], 4, 128, X)
    e_rtn = output_error(W, r["codes"], r["scales"], 4, 128, X)
    assert e_gptq < 0.8 * e_rtn, (e_gptq, e_rtn)
    # int8 is far closer still, and GPTQ still helps.
    g8 = quant.gptq(W, H, bits=8, group_size=128)
    r8 = quant.rtn(W, bits=8, group_size=128)
    e8 = output_error(W, g8["codes"], g8["scales"], 8, 128, X)
    assert e8 < 0.8 * output_error(W, r8["codes"], r8["scales"], 8, 128, X)
    assert e8 < 0.1 * e_gptq


def test_desc_act_with_static_groups_keeps_groups_in_input_order():
    W, X = layer(128, 512, n=2048, seed=4, outliers=16)
    H = hessian(X)
    plain = quant.gptq(W, H, group_size=128)
    act = quant.gptq(W, H, group_size=128, desc_act=True, static_groups=True)
    e_plain = output_error(W, plain["codes"], plain["scales"], 4, 128, X)
    e_act = output_error(W, act["codes"], act["scales"], 4, 128, X)
    assert e_act <= e_plain, (e_act, e_plain)
    # Monotonic groups: group k's scale comes from input columns [128k, 128k + 128) of the
    # original weights (the RTN scale), and codes are in input order, so the plain
    # dequantization with consecutive groups reproduces the reference's w'.
    np.testing.assert_array_equal(act["scales"], quant.rtn(W, group_size=128)["scales"])
    want_codes, _, _, _ = np_gptq(W, H, group_size=128, desc_act=True, static_groups=True)
    assert np.mean(act["codes"] != want_codes) <= 1e-3


def test_rtn_codes_and_scales():
    W, _ = layer(64, 256, seed=5)
    r = quant.rtn(W, bits=4, group_size=64)
    s = np_scale(np.abs(W.astype(np.float64)).reshape(64, 4, 64).max(axis=2), 4)
    np.testing.assert_array_equal(r["scales"], s)
    q, wq = np_quantize(W.astype(np.float64), np.repeat(s, 64, axis=1), 4)
    np.testing.assert_array_equal(r["codes"], q)
    assert r["loss"] == pytest.approx(float(np.sum((W - wq) ** 2)), rel=1e-12)
    assert r["damp"] == 0.0 and r["retries"] == 0
    # Ties round to even; 7.5 scales clamp to the top code.
    r = quant.rtn(np.array([[7.5, 2.5, 3.5, -7.5]], np.float32), bits=4, group_size=-1)
    assert r["codes"].tolist() == [[15, 10, 12, 0]]
    assert r["scales"].tolist() == [[1.0]]


@pytest.mark.parametrize("bits", [4, 8])
def test_dequantize_matches_numpy(bits):
    rng = np.random.default_rng(6)
    rows, cols, g = 32, 256, 64
    codes = rng.integers(0, 2**bits, size=(rows, cols), dtype=np.uint8)
    scales = rng.uniform(1e-4, 0.1, size=(rows, cols // g)).astype(np.float16)
    got = quant.dequantize(codes, scales, bits, g)
    z = 2 ** (bits - 1)
    want = (codes.astype(np.int32) - z).astype(np.float16) * np.repeat(scales, g, axis=1)
    assert got.dtype == np.float16 and want.dtype == np.float16
    np.testing.assert_array_equal(got.view(np.uint16), want.view(np.uint16))
    with pytest.raises(ConfigError, match="code 16 .* above 15"):
        quant.dequantize(np.full((1, 4), 16, np.uint8), np.ones((1, 1), np.float16), 4, -1)


# -- the Hessian accumulator ----------------------------------------------------------------


def test_hessian_accumulator():
    rng = np.random.default_rng(7)
    X = rng.standard_normal((3, 100, 48)).astype(np.float16)  # [batch, seq, cols]
    Xd = X.reshape(-1, 48).astype(np.float64)
    want = 2.0 / 300 * Xd.T @ Xd
    # fp32 and fp64 rows: exact products in fp64, so batching and dtype do not matter.
    whole = quant.HessianAccumulator(48)
    whole.add(X.astype(np.float32))
    assert whole.count == 300 and whole.cols == 48
    parts = quant.HessianAccumulator(48, num_threads=1)
    parts.add(X[0].astype(np.float32))
    parts.add(X[1:].reshape(-1, 48).astype(np.float64))
    H = whole.hessian()
    assert H.dtype == np.float64 and H.shape == (48, 48)
    np.testing.assert_array_equal(H, parts.hessian())
    np.testing.assert_allclose(H, want, rtol=1e-12, atol=1e-12)
    # fp16 rows (calibration): summed in fp32 per 512 rows, the same bits on any thread count
    # and batching (X2: 1,200 rows, so two flushes into fp64 happen).
    X2 = np.concatenate([X.reshape(-1, 48)] * 4)
    h16 = quant.HessianAccumulator(48)
    h16.add(X2)
    parts16 = quant.HessianAccumulator(48, num_threads=1)
    for piece in np.split(X2, [100, 700, 701]):
        parts16.add(piece)
    np.testing.assert_array_equal(h16.hessian(), parts16.hessian())
    np.testing.assert_allclose(h16.hessian(), want, rtol=0, atol=1e-5 * np.abs(want).max())
    h16 = quant.HessianAccumulator(48)
    h16.add(X)
    np.testing.assert_allclose(h16.hessian(), want, rtol=0, atol=1e-5 * np.abs(want).max())
    with pytest.raises(ConfigError, match=r"\[\.\.\., 48\]"):
        whole.add(np.zeros((4, 47), np.float32))
    with pytest.raises(ConfigError, match="no calibration rows"):
        quant.HessianAccumulator(8).hessian()


# -- bad input ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small():
    W, X = layer(16, 128, n=256, seed=8)
    return W, hessian(X)


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        (dict(group_size=47), "group_size must be a positive even number of input columns or -1"),
        (dict(bits=3), "bits must be 4 or 8 (got 3)"),
        (dict(sym=False), "sym=False (asymmetric quantization with zero points) is not supported"),
        (dict(desc_act=True), "desc_act=True needs static_groups=True: the LPU streams each group"),
        (dict(damp_percent=0.0), "damp_percent must be between 0 and 1"),
        (dict(mse=-1.0), "mse must be 0 (scales from each group's largest weight) or the norm"),
        (
            dict(act_group_aware=True, desc_act=True, static_groups=True),
            "act_group_aware=True orders whole groups itself",
        ),
    ],
)
def test_bad_options(small, kwargs, pattern):
    W, H = small
    with pytest.raises(ConfigError, match=re.escape(pattern)) as e:
        quant.gptq(W, H, name="blk.2.ffn_up.weight", **kwargs)
    assert "layer 'blk.2.ffn_up.weight'" in str(e.value)
    if set(kwargs) <= {"group_size", "bits", "sym", "mse"}:  # the same checks guard RTN
        with pytest.raises(ConfigError, match=re.escape(pattern)):
            quant.rtn(W, name="blk.2.ffn_up.weight", **kwargs)


def test_bad_shapes_and_values(small):
    W, H = small
    with pytest.raises(ConfigError, match=r"H has shape \[64, 64\] but W \[16, 128\] has 128"):
        quant.gptq(W, H[:64, :64], name="L")
    with pytest.raises(ConfigError, match=r"W must be 2-D"):
        quant.gptq(W[0], H, name="L")
    Wn = W.copy()
    Wn[2, 5] = np.inf
    with pytest.raises(ConfigError, match=r"weights contain NaN or infinity \(row 2, column 5\)"):
        quant.gptq(Wn, H, name="L")
    Hn = H.copy()
    Hn[7, 7] = np.nan
    with pytest.raises(ConfigError, match=r"layer 'L': the Hessian contains NaN or infinity"):
        quant.gptq(W, Hn, name="L")


def test_hessian_that_will_not_factor_retries_then_names_the_layer(small):
    W, _ = small
    n = W.shape[1]
    v = np.random.default_rng(9).standard_normal(n)
    v /= np.linalg.norm(v)
    # Eigenvalue 1 - c = -0.05: the first damping (1% of mean(diag)) is too small, 10x works.
    c = 1.05
    r = quant.gptq(W, np.eye(n) - c * np.outer(v, v), group_size=64, name="L")
    assert r["retries"] == 1
    assert r["damp"] == pytest.approx(0.1 * (1 - c / n), rel=1e-12)
    # A hugely negative eigenvalue: damping x10^4 does not help either.
    with pytest.raises(ConfigError) as e:
        quant.gptq(W, np.eye(n) - 1e6 * np.outer(v, v), group_size=64, name="blk.5.attn_v.weight")
    msg = str(e.value)
    assert "layer 'blk.5.attn_v.weight'" in msg
    assert "not positive definite" in msg
    assert "multiplied by 10 4 times" in msg
    assert "more or more varied samples" in msg and "raise damp_percent" in msg
