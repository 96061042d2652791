"""Perplexity of a causal LM over token ids, given only a function that returns logits.

``perplexity(logits_fn, ids, seqlen)`` cuts ``ids`` into consecutive windows of ``seqlen``
tokens (the incomplete tail is dropped, as in GPTQ's and most papers' wikitext evaluation),
runs ``logits_fn`` on each window on its own (fresh context), and returns
``exp(mean NLL)`` over every predicted token: in a window of ``seqlen`` tokens the logits at
position ``j`` predict token ``j + 1``, so each window predicts ``seqlen - 1`` tokens.

With ``stride < seqlen`` the windows overlap (Hugging Face's "sliding window" perplexity):
window ``k`` starts at ``k * stride``, and only the tokens no earlier window has scored are
scored, so every token after the first is scored exactly once, with up to ``seqlen - 1`` tokens
of context. ``stride == seqlen`` (the default) is the non-overlapping evaluation above.

``logits_fn`` is any callable ``ids (np.ndarray[int64] of shape [n]) -> logits [n, vocab]``
(numpy, or anything ``np.asarray`` accepts: a torch tensor on the CPU works). The NLL is
computed in float64 with a stable log-sum-exp.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import ConfigError

__all__ = ["perplexity", "evaluate", "PerplexityResult", "windows", "token_nll"]

LogitsFn = Callable[[np.ndarray], Any]


@dataclass(frozen=True)
class PerplexityResult:
    """``perplexity = exp(nll / tokens)``; ``nll`` is the summed negative log-likelihood
    (nats) of the ``tokens`` predicted tokens over ``windows`` windows."""

    perplexity: float
    nll: float
    tokens: int
    windows: int

    @property
    def mean_nll(self) -> float:
        return self.nll / self.tokens


def windows(n: int, seqlen: int, stride: Optional[int] = None) -> List[Tuple[int, int, int]]:
    """``(begin, end, first_target)`` of every window over ``n`` tokens: the window is
    ``ids[begin:end]`` and it scores targets ``first_target .. end - 1``."""
    stride = seqlen if stride is None else stride
    out: List[Tuple[int, int, int]] = []
    scored_until = 1  # token 0 has no context, so it is never a target
    begin = 0
    while begin + seqlen <= n:
        end = begin + seqlen
        first = max(scored_until, begin + 1)
        if first < end:
            out.append((begin, end, first))
            scored_until = end
        begin += stride
    return out


def token_nll(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """-log softmax(logits)[target] per row, in float64 (``logits`` [m, vocab])."""
    x = np.asarray(logits, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] != len(targets):
        raise ConfigError(
            f"logits must have shape [{len(targets)}, vocab] here, got {tuple(x.shape)}"
        )
    if not np.all(np.isfinite(x)):
        raise ConfigError("logits_fn returned non-finite logits (inf or nan)")
    peak = x.max(axis=1, keepdims=True)
    log_z = peak[:, 0] + np.log(np.exp(x - peak).sum(axis=1))
    return log_z - x[np.arange(len(targets)), targets]


def _check_args(ids: Sequence[int], seqlen: int, stride: Optional[int]) -> np.ndarray:
    if isinstance(seqlen, bool) or not isinstance(seqlen, (int, np.integer)) or seqlen < 2:
        raise ConfigError(f"seqlen must be an integer >= 2, got {seqlen!r}")
    if stride is not None and (
        isinstance(stride, bool)
        or not isinstance(stride, (int, np.integer))
        or not 1 <= stride <= seqlen
    ):
        raise ConfigError(f"stride must be an integer in [1, seqlen={seqlen}], got {stride!r}")
    array = np.asarray(ids)
    if array.ndim != 1 or not (array.size == 0 or np.issubdtype(array.dtype, np.integer)):
        raise ConfigError("ids must be a flat sequence of integer token ids")
    if array.size < seqlen:
        raise ConfigError(
            f"{array.size} tokens are fewer than one window of seqlen={seqlen}; use a smaller "
            f"seqlen or more text"
        )
    return array.astype(np.int64)


def iter_windows(
    logits_fn: LogitsFn, ids: Sequence[int], seqlen: int, stride: Optional[int] = None
) -> Iterator[Tuple[float, int]]:
    """(summed NLL, scored tokens) per window, in order (for progress reporting)."""
    array = _check_args(ids, seqlen, stride)
    for begin, end, first in windows(array.size, int(seqlen), stride):
        window = array[begin:end]
        logits = np.asarray(logits_fn(window))
        if logits.ndim == 3 and logits.shape[0] == 1:
            logits = logits[0]
        if logits.ndim != 2 or logits.shape[0] != window.size:
            raise ConfigError(
                f"logits_fn must return logits of shape [{window.size}, vocab] for a window of "
                f"{window.size} tokens, got {tuple(logits.shape)}"
            )
        rows = np.arange(first - begin - 1, end - begin - 1)
        targets = array[first:end]
        if targets.size and (targets.min() < 0 or targets.max() >= logits.shape[1]):
            raise ConfigError(
                f"token ids must lie in [0, {logits.shape[1]}) (the logits' vocabulary)"
            )
        nll = token_nll(logits[rows], targets)
        yield float(nll.sum()), int(targets.size)


def evaluate(
    logits_fn: LogitsFn,
    ids: Sequence[int],
    seqlen: int,
    stride: Optional[int] = None,
    max_windows: Optional[int] = None,
) -> PerplexityResult:
    """Like :func:`perplexity`, with the summed NLL and the counts. ``max_windows`` stops
    after that many windows (a quick estimate on a prefix of ``ids``)."""
    total, count, used = 0.0, 0, 0
    for nll, tokens in iter_windows(logits_fn, ids, seqlen, stride):
        total += nll
        count += tokens
        used += 1
        if max_windows is not None and used >= max_windows:
            break
    return PerplexityResult(math.exp(total / count), total, count, used)


def perplexity(
    logits_fn: LogitsFn, ids: Sequence[int], seqlen: int, stride: Optional[int] = None
) -> float:
    """exp(mean NLL) of ``logits_fn`` over ``ids`` in windows of ``seqlen`` tokens
    (non-overlapping unless ``stride < seqlen``; see the module docstring)."""
    return evaluate(logits_fn, ids, seqlen, stride).perplexity
