"""PNG plots: latency against TCO per token with the Pareto front, and the roofline of the
chosen design (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

import numpy as np

from .pareto import pareto_front

if TYPE_CHECKING:
    from ..core import ExploreResult
    from ..inputs.loader import Input


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and CI
    import matplotlib.pyplot as plt

    return plt


def pareto(result: ExploreResult, path: Union[str, Path]) -> str:
    plt = _plt()
    ok = result.feasible
    x = ok["decode_usd_per_mtok"].astype(float)
    y = ok["decode_ms_per_token"].astype(float)
    front = pareto_front(x, y)
    fig, ax = plt.subplots(figsize=(7, 5))
    ax.scatter(x, y, s=6, c="0.7", label=f"design points ({len(x)})")
    ax.plot(x[front], y[front], "o-", c="tab:red", ms=4, label=f"Pareto front ({len(front)})")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("TCO per generated token (USD per 1M tokens)")
    ax.set_ylabel("decode latency (ms per token)")
    ax.set_title(f"{result.model_name} on {result.hardware_name}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return str(path)


def roofline(result: ExploreResult, hw: Input, path: Union[str, Path]) -> str:
    """The operators of the cheapest design's decode step on that chip's roofline."""
    from .roofline_data import operator_points

    plt = _plt()
    best = result.best()
    pts, peak, bw, title = operator_points(result, hw, best)
    fig, ax = plt.subplots(figsize=(7, 5))
    ai = np.logspace(-2, 4, 200)
    ax.plot(ai, np.minimum(peak, ai * bw), "k-", lw=1.5, label="roof (sustained)")
    for name, intensity, achieved in pts:
        if intensity > 0 and achieved > 0:
            ax.scatter(intensity, achieved, s=20)
            ax.annotate(
                name, (intensity, achieved), fontsize=7, xytext=(3, 3), textcoords="offset points"
            )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity (FLOP per off-chip byte)")
    ax.set_ylabel("attained TFLOP/s")
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return str(path)
