"""Collectives on an alpha-beta link model: every step costs a latency (alpha) plus bytes
over bandwidth (beta)."""

from __future__ import annotations

import numpy as np


def ring_allreduce(
    size: np.ndarray, n: np.ndarray, gbps: np.ndarray, alpha_s: np.ndarray
) -> np.ndarray:
    """Seconds for a ring all-reduce of ``size`` bytes over ``n`` devices: reduce-scatter then
    all-gather, 2(n-1) steps of size/n bytes each."""
    n = np.asarray(n, dtype=float)
    steps = 2.0 * (n - 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = steps * alpha_s + steps / n * size / (gbps * 1e9)
    return np.where(n > 1, t, 0.0)


def split_2d(n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A power-of-two group as a near-square n1 x n2 grid (n1 >= n2)."""
    n = np.asarray(n, dtype=float)
    n1 = 2.0 ** np.ceil(np.log2(np.maximum(n, 1.0)) / 2.0)
    n1 = np.minimum(n1, n)
    return n1, n / n1


def ring2d_allreduce(
    size: np.ndarray, n: np.ndarray, gbps: np.ndarray, alpha_s: np.ndarray
) -> np.ndarray:
    """2-D ring (a torus): reduce-scatter along rows, all-reduce the 1/n1 shards along columns,
    all-gather along rows. Fewer latency steps than one ring of n; each dimension has half of
    the device's links."""
    n1, n2 = split_2d(n)
    half = gbps / 2.0
    rows = ring_allreduce(size, n1, half, alpha_s)
    cols = ring_allreduce(size / n1, n2, half, alpha_s)
    return np.where(n > 1, rows + cols, 0.0)


def point_to_point(size: np.ndarray, gbps: np.ndarray, alpha_s: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return alpha_s + size / (gbps * 1e9)
