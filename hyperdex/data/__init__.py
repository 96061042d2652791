"""Texts shipped with hyperdex: a calibration text for GPTQ and a separate evaluation text.

Both are real English in the public domain, shipped inside the package (no download at run
time); SOURCES.md beside this file gives their provenance, licence, the conversion and the
checksums, and ``build_texts.py`` rebuilds them from the upstream packages.

* :func:`calibration_text`: the default calibration data of ``compile(quantization=...)``:
  eight State of the Union addresses (1940-2010) and every eighth entry of the Jargon File
  4.4.7 (about 420 KB, some 93,600 SmolLM2 tokens): formal general prose plus technical prose,
  so that GPTQ does not fit one narrow register.
* :func:`evaluation_text`: for perplexity: Lewis Carroll's *Alice's Adventures in Wonderland*
  (about 143 KB, some 37,000 SmolLM2 tokens). It shares no 12-word run with the calibration
  text (tests/test_data.py checks that), so a perplexity measured on it is not inflated by
  calibrating on the same words.
* :func:`calibration_samples`: GPTQ calibration samples, random windows of a tokenized text.
* :func:`hyperdex.data.perplexity.perplexity`: perplexity of any ``logits_fn`` on token ids.
"""

from __future__ import annotations

import functools
from typing import Any, List, Optional, Sequence

import numpy as np

from ..errors import ConfigError

__all__ = [
    "calibration_text",
    "evaluation_text",
    "calibration_samples",
    "sample_windows",
    "tokenize",
    "CALIBRATION_FILE",
    "EVALUATION_FILE",
]

CALIBRATION_FILE = "calibration.txt"
EVALUATION_FILE = "evaluation.txt"


@functools.cache
def _read(name: str) -> str:
    from importlib import resources

    return resources.files(__name__).joinpath(name).read_text(encoding="utf-8")


def calibration_text() -> str:
    """The default GPTQ calibration text: State of the Union addresses and Jargon File entries
    (both public domain; SOURCES.md)."""
    return _read(CALIBRATION_FILE)


def evaluation_text() -> str:
    """The perplexity evaluation text: *Alice's Adventures in Wonderland* (public domain)."""
    return _read(EVALUATION_FILE)


def tokenize(tokenizer: Any, text: str) -> List[int]:
    """Token ids of ``text`` without special tokens (no BOS/EOS: calibration windows and
    perplexity windows are cut from the middle of a token stream).

    ``tokenizer`` is a Hugging Face tokenizer (anything callable as ``tokenizer(text,
    add_special_tokens=False)`` returning ``input_ids``), or any object with ``encode(text)``.
    """
    if callable(tokenizer):
        try:
            # verbose=False: a long text is not a model input, so the length warning is noise.
            out = tokenizer(text, add_special_tokens=False, verbose=False)
        except TypeError:
            out = tokenizer(text, add_special_tokens=False)
        ids = out["input_ids"] if isinstance(out, dict) or hasattr(out, "keys") else out
    elif hasattr(tokenizer, "encode"):
        ids = tokenizer.encode(text)
    else:
        raise ConfigError(
            f"tokenizer must be a Hugging Face tokenizer or have an encode(text) method, got "
            f"{type(tokenizer).__name__}"
        )
    ids = np.asarray(ids).reshape(-1)
    return [int(t) for t in ids]


def _positive_int(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def sample_windows(
    ids: Sequence[int], nsamples: int, seqlen: int, seed: int = 0, *, what: str = "the text"
) -> List[List[int]]:
    """``nsamples`` windows of ``seqlen`` consecutive tokens of ``ids``, their starts drawn
    uniformly (with replacement, as GPTQ's reference code does) by
    ``numpy.random.default_rng(seed).integers(0, len(ids) - seqlen + 1, size=nsamples)``.
    Deterministic for a given seed."""
    nsamples = _positive_int("nsamples", nsamples)
    seqlen = _positive_int("seqlen", seqlen)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ConfigError(f"seed must be an integer, got {seed!r}")
    n = len(ids)
    if n < seqlen:
        raise ConfigError(
            f"{what} has {n} tokens, fewer than one calibration sample of seqlen={seqlen} "
            f"tokens; use a smaller seqlen (at most {n}) or a longer text"
        )
    starts = np.random.default_rng(int(seed)).integers(0, n - seqlen + 1, size=nsamples)
    return [[int(t) for t in ids[s : s + seqlen]] for s in starts.tolist()]


def calibration_samples(
    tokenizer: Any,
    nsamples: int,
    seqlen: int,
    seed: int = 0,
    text: Optional[str] = None,
) -> List[List[int]]:
    """GPTQ calibration samples: ``nsamples`` random windows of ``seqlen`` tokens from the
    tokenized calibration text (``text``, by default :func:`calibration_text`).

    The same ``(tokenizer, nsamples, seqlen, seed, text)`` always gives the same samples.
    Raises :class:`hyperdex.errors.ConfigError` when the text is shorter than one window.
    """
    _positive_int("nsamples", nsamples)
    _positive_int("seqlen", seqlen)
    if text is None:
        text, what = calibration_text(), "the shipped calibration text"
    elif isinstance(text, str):
        what = "the calibration text"
    else:
        raise ConfigError(f"text must be a str or None, got {type(text).__name__}")
    ids = tokenize(tokenizer, text)
    return sample_windows(ids, nsamples, seqlen, seed, what=what)
