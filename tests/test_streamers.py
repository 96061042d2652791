"""Streamers: the chunks are those of the installed transformers' TextStreamer /
TextIteratorStreamer (compared live, never against hard-coded boundaries); hyperdex's additions
(SSE framing, .text/.chunks, reuse, input kinds, errors) are tested on their own."""

from __future__ import annotations

import contextlib
import io
import queue
import threading
from typing import Any, Callable

import numpy as np
import pytest
import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from hyperdex.transformers.streamers import (
    BaseStreamer,
    TextIteratorStreamer,
    TextStreamer,
    format_sse,
)

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello world, hello streaming text generation!",
    "Lines end here.\nAnd a new line starts.\n\nTwo newlines above.",
    "我们在测试中文的流式输出。",
    "한국어 텍스트도 테스트합니다.",
    "Emoji time: 🚀🎉 and café au lait.",
]

# English, newlines, CJK, Hangul, emoji and characters whose bytes span several tokens
TEXTS = [
    "The quick brown fox jumps over the lazy dog. Hello world!",
    "Lines end here.\nAnd a new line starts.\n\nTwo newlines above.\n",
    "我们在测试中文的流式输出。中文 and English 混合。",
    "한국어 텍스트도 테스트합니다. 안녕하세요 world",
    "Emoji 🚀 rocket, party 🎉🎉, unseen 🦀 crab and 𝄞 clef.",
    "mixed 我们 한국어\n🚀 end",
    "line one\nline two\n\nend",
    "é中🦀x",
    "go 🚀🎉 done\n  indented\n\twindows 12345",
]


@pytest.fixture(scope="module")
def bpe() -> transformers.PreTrainedTokenizerFast:
    """A tiny byte-level BPE: rare characters (emoji, 𝄞) stay split into byte tokens."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=420,
        special_tokens=["<eos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(CORPUS, trainer)
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>")


class ByteTokenizer:
    """One token per UTF-8 byte (ids 0-255, 256 is a special token), decoded as byte-level BPE
    tokenizers do: an incomplete multi-byte character decodes to U+FFFD until its last byte
    arrives. ``ids`` may be a single int: transformers' TextStreamer passes one."""

    eos_token_id = 256

    def decode(self, ids: int | list[int], skip_special_tokens: bool = False) -> str:
        ids = [ids] if isinstance(ids, int) else list(ids)
        text = bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")
        return text if skip_special_tokens or 256 not in ids else text + "<eos>"

    def encode(self, text: str) -> list[int]:
        return list(text.encode())


@pytest.fixture(params=["bpe", "bytes"])
def tok(request, bpe) -> Any:
    return bpe if request.param == "bpe" else ByteTokenizer()


def _feed(streamer: Any, prompt: list[int], tokens: list[int], wrap: Callable = np.array) -> None:
    """Drive a streamer like generate(): the prompt as [1, n], then one [1] per token."""
    streamer.put(wrap([prompt]))
    for t in tokens:
        streamer.put(wrap([t]))
    streamer.end()


def _stdout_of(fn: Callable[[], None]) -> str:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        fn()
    return buf.getvalue()


def _ids(tok: Any, text: str) -> list[int]:
    return tok.encode(text) + [tok.eos_token_id]


class _Calls:
    """Mixin: record every on_finalized_text call (text, stream_end), then behave as before."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.calls: list[tuple[str, bool]] = []
        super().__init__(*args, **kwargs)

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        self.calls.append((text, stream_end))
        super().on_finalized_text(text, stream_end)


class RefCalls(_Calls, transformers.TextStreamer):
    pass


class OurCalls(_Calls, TextStreamer):
    pass


class OurIterCalls(_Calls, TextIteratorStreamer):
    pass


def test_classes_build_on_transformers() -> None:
    assert issubclass(TextStreamer, transformers.TextStreamer)
    assert issubclass(TextIteratorStreamer, transformers.TextIteratorStreamer)
    assert issubclass(TextIteratorStreamer, TextStreamer)  # hyperdex's API as before
    assert BaseStreamer is transformers.generation.streamers.BaseStreamer
    assert isinstance(TextIteratorStreamer(ByteTokenizer()), transformers.TextIteratorStreamer)


def test_bpe_splits_multibyte_characters(bpe) -> None:
    # the comparisons below rely on a character whose bytes span several tokens
    ids = bpe.encode("🦀 𝄞")
    partial = [bpe.decode(ids[:i]) for i in range(1, len(ids))]
    assert any(p.endswith("\ufffd") for p in partial)


def test_byte_tokenizer_decodes_a_single_int() -> None:
    assert ByteTokenizer().decode(ord("a")) == "a"
    assert ByteTokenizer().decode(256) == "<eos>"
    assert ByteTokenizer().decode(256, skip_special_tokens=True) == ""


# -- (a) same chunks as the installed transformers -----------------------------------------------


@pytest.mark.parametrize("text", TEXTS)
@pytest.mark.parametrize("skip_prompt", [False, True])
def test_text_streamer_prints_like_transformers(tok, text: str, skip_prompt: bool) -> None:
    ids = _ids(tok, text)
    ref = transformers.TextStreamer(tok, skip_prompt=skip_prompt, skip_special_tokens=True)
    ours = TextStreamer(tok, skip_prompt=skip_prompt)
    expected = _stdout_of(lambda: _feed(ref, ids[:3], ids[3:], torch.tensor))
    assert _stdout_of(lambda: _feed(ours, ids[:3], ids[3:], torch.tensor)) == expected
    assert ours.text + "\n" == expected


@pytest.mark.parametrize("text", TEXTS)
def test_text_streamer_finalizes_like_transformers(tok, text: str) -> None:
    ids = _ids(tok, text)
    ref = RefCalls(tok, skip_prompt=True, skip_special_tokens=True)
    ours = OurCalls(tok, skip_prompt=True, use_print=False)
    _feed(ref, ids[:2], ids[2:], torch.tensor)
    _feed(ours, ids[:2], ids[2:], torch.tensor)
    assert ours.calls == ref.calls  # every call, the empty ones and stream_end included
    assert ours.chunks == [t for t, _ in ref.calls if t]


@pytest.mark.parametrize("text", TEXTS)
def test_iterator_streamer_yields_like_transformers(tok, text: str) -> None:
    ids = _ids(tok, text)
    ref = transformers.TextIteratorStreamer(tok, skip_prompt=True, skip_special_tokens=True)
    ours = TextIteratorStreamer(tok, skip_prompt=True, timeout=5.0)
    _feed(ref, ids[:2], ids[2:], torch.tensor)
    _feed(ours, ids[:2], ids[2:], torch.tensor)
    expected = list(ref)
    assert list(ours) == expected
    assert ours.chunks == [t for t in expected if t]


@pytest.mark.parametrize("text", TEXTS[:3])
def test_skip_special_tokens_false_like_transformers(tok, text: str) -> None:
    ids = _ids(tok, text)
    ref = transformers.TextStreamer(tok)
    ours = TextStreamer(tok, skip_special_tokens=False)
    expected = _stdout_of(lambda: _feed(ref, ids[:1], ids[1:], torch.tensor))
    assert _stdout_of(lambda: _feed(ours, ids[:1], ids[1:])) == expected
    assert "<eos>" in expected


# -- (b) hyperdex's additions ------------------------------------------------------------------


def test_skip_special_tokens_defaults_to_true(tok) -> None:
    ids = _ids(tok, "Hello world")
    ours = TextStreamer(tok, use_print=False)
    _feed(ours, ids[:1], ids[1:])
    assert ours.text == "Hello world"
    it = TextIteratorStreamer(tok, timeout=5.0)
    _feed(it, ids[:1], ids[1:])
    assert "".join(it) == "Hello world"


@pytest.mark.parametrize("text", TEXTS)
@pytest.mark.parametrize("skip_prompt", [False, True])
def test_text_is_the_decoded_text(tok, text: str, skip_prompt: bool) -> None:
    # whatever the chunk boundaries: nothing lost, nothing twice, no U+FFFD of a split character
    prompt, ids = tok.encode("Q: "), _ids(tok, text)  # the prompt ends at a character boundary
    want = text if skip_prompt else "Q: " + text
    ours = TextStreamer(tok, skip_prompt=skip_prompt, use_print=False)
    it = TextIteratorStreamer(tok, skip_prompt=skip_prompt, timeout=5.0)
    for streamer in (ours, it):
        _feed(streamer, prompt, ids)
        assert streamer.text == want == "".join(streamer.chunks)
        assert "\ufffd" not in streamer.text and all(streamer.chunks)
    assert "".join(it) == want


@pytest.mark.parametrize(
    ("chunk", "event"),
    [
        ("hello ", "data: hello \n\n"),
        ("a\nb", "data: a\ndata: b\n\n"),
        ("line\n", "data: line\ndata: \n\n"),
        ("\n", "data: \ndata: \n\n"),
        ("x\r\ny\rz", "data: x\ndata: y\ndata: z\n\n"),
        ("\r\n\r", "data: \ndata: \ndata: \n\n"),
        ("  indented", "data:   indented\n\n"),
        (" ", "data:  \n\n"),
        ("我们", "data: 我们\n\n"),
        ("🚀", "data: 🚀\n\n"),
    ],
)
def test_format_sse_golden(chunk: str, event: str) -> None:
    assert format_sse(chunk) == event


def _sse_client_decode(stream: str) -> str:
    """Minimal SSE client (spec: join an event's data lines with LF, strip one space)."""
    out = []
    for event in stream.split("\n\n"):
        if event:
            lines = [ln[len("data:") :] for ln in event.split("\n")]
            out.append("\n".join(ln[1:] if ln.startswith(" ") else ln for ln in lines))
    return "".join(out)


@pytest.mark.parametrize("text", ["a\nb\n", "  two spaces", " \n \n", "中文\n🚀 x"])
def test_format_sse_round_trips_through_a_client(text: str) -> None:
    assert _sse_client_decode(format_sse(text)) == text


@pytest.mark.parametrize("text", TEXTS)
def test_sse_chunks_frame_exactly_the_non_empty_chunks(tok, text: str) -> None:
    ids = _ids(tok, text)
    ours = OurCalls(tok, skip_prompt=True, use_sse=True)
    out = _stdout_of(lambda: _feed(ours, ids[:2], ids[2:]))
    texts = [t for t, _ in ours.calls if t]
    assert ours.chunks == [format_sse(t) for t in texts]
    assert out == "".join(ours.chunks)  # printed as is: no empty events, no final newline
    assert ours.text == "".join(texts)
    assert _sse_client_decode(out) == tok.decode(ids[2:], skip_special_tokens=True)


@pytest.mark.parametrize("text", TEXTS)
def test_iterator_sse_yields_exactly_the_non_empty_chunks(tok, text: str) -> None:
    ids = _ids(tok, text)
    ours = OurIterCalls(tok, skip_prompt=True, timeout=5.0, use_sse=True)
    _feed(ours, ids[:2], ids[2:])
    events = list(ours)
    assert events == ours.chunks == [format_sse(t) for t, _ in ours.calls if t]


@pytest.mark.parametrize("cls", [OurCalls, OurIterCalls])
def test_sse_keeps_a_crlf_one_line_break(cls) -> None:
    # byte tokens: transformers releases a CRLF's "\r" and "\n" in separate calls
    text = "one\r\ntwo\r\n\r\nthree\r"
    quiet = {} if cls is OurIterCalls else {"use_print": False}
    ours = cls(ByteTokenizer(), skip_prompt=True, use_sse=True, **quiet)
    _feed(ours, [0], list(text.encode()))
    assert any(t.endswith("\r") for t, _ in ours.calls)  # the split this test is about
    assert _sse_client_decode("".join(ours.chunks)) == "one\ntwo\n\nthree\n"
    assert ours.text == text


def test_sse_without_print_prints_nothing(tok) -> None:
    ids = _ids(tok, TEXTS[5])
    ours = TextStreamer(tok, use_print=False, use_sse=True)
    assert _stdout_of(lambda: _feed(ours, ids[:1], ids[1:])) == ""
    assert ours.chunks and ours.chunks == [format_sse(c) for c in _plain_chunks(tok, ids, 1)]


def _plain_chunks(tok: Any, ids: list[int], n_prompt: int) -> list[str]:
    plain = TextStreamer(tok, use_print=False)
    _feed(plain, ids[:n_prompt], ids[n_prompt:])
    return plain.chunks


def test_use_print_false_prints_nothing(tok) -> None:
    ids = _ids(tok, TEXTS[1])
    ours = TextStreamer(tok, use_print=False)
    assert _stdout_of(lambda: _feed(ours, ids[:2], ids[2:])) == ""
    assert ours.text == TEXTS[1]


def test_use_print_prints_the_text_and_a_newline(tok) -> None:
    ids = _ids(tok, TEXTS[4])
    ours = TextStreamer(tok)
    assert _stdout_of(lambda: _feed(ours, ids[:2], ids[2:])) == TEXTS[4] + "\n"


def test_empty_generation(tok) -> None:
    ours = TextStreamer(tok, skip_prompt=True, use_sse=True)
    assert _stdout_of(lambda: _feed(ours, [ord("x")], [])) == ""
    assert ours.text == "" and ours.chunks == []
    it = TextIteratorStreamer(tok, skip_prompt=True, timeout=5.0, use_sse=True)
    _feed(it, [ord("x")], [])
    assert list(it) == []


@pytest.mark.parametrize("iterator", [False, True])
def test_streamer_reuse_resets_text_and_chunks(tok, iterator: bool) -> None:
    if iterator:
        ours: TextStreamer = TextIteratorStreamer(tok, skip_prompt=True, timeout=5.0)
    else:
        ours = TextStreamer(tok, skip_prompt=True, use_print=False)
    a, b = _ids(tok, "Hello world\nagain"), _ids(tok, "lazy 🚀 dog")
    _feed(ours, a[:1], a[1:])
    first, first_chunks = ours.text, list(ours.chunks)
    if iterator:
        assert "".join(ours) == first
    _feed(ours, b[:1], b[1:])  # the prompt of the second generation is skipped too
    assert first == "".join(first_chunks) == tok.decode(a[1:], skip_special_tokens=True)
    assert ours.text == "".join(ours.chunks) == tok.decode(b[1:], skip_special_tokens=True)
    if iterator:
        assert "".join(ours) == ours.text


def test_text_is_kept_after_end_until_the_next_put(tok) -> None:
    ids = _ids(tok, "Hello world")
    ours = TextStreamer(tok, use_print=False)
    _feed(ours, ids[:1], ids[1:])
    assert ours.text == "Hello world"
    ours.put(tok.encode("\n"))  # a newline flushes in every transformers version
    assert ours.text == "\n" and ours.chunks == ["\n"]


INPUT_KINDS = {
    "list [1, n] / [1]": lambda ids: ([ids], [[t] for t in ids]),
    "list [n] / int": lambda ids: (ids, list(ids)),
    "tuple": lambda ids: (tuple(ids), [(t,) for t in ids]),
    "ndarray [1, n] / [1]": lambda ids: (np.array([ids]), [np.array([t]) for t in ids]),
    "ndarray [n] / [] int32": lambda ids: (
        np.array(ids, dtype=np.int32),
        [np.array(t, dtype=np.int32) for t in ids],
    ),
    "numpy scalars": lambda ids: (np.array(ids), [np.int64(t) for t in ids]),
    "tensor [1, n] / [1]": lambda ids: (torch.tensor([ids]), [torch.tensor([t]) for t in ids]),
    "tensor [n] / []": lambda ids: (torch.tensor(ids), [torch.tensor(t) for t in ids]),
}


@pytest.mark.parametrize("kind", sorted(INPUT_KINDS))
def test_put_accepts_every_input_kind(tok, kind: str) -> None:
    ids = _ids(tok, TEXTS[4])
    prompt, steps = INPUT_KINDS[kind](ids[2:])
    ref = OurCalls(tok, use_print=False)  # plain lists of ints: the reference
    _feed(ref, ids[:2], ids[2:], wrap=lambda x: x)
    ours = OurCalls(tok, use_print=False)
    ours.put(ids[:2])
    ours.put(prompt)  # several tokens in one put, as after a prefill
    ours.end()
    many = OurCalls(tok, use_print=False)
    many.put(ids[:2])
    for step in steps:
        many.put(step)
    many.end()
    assert many.calls == ref.calls
    assert ours.text == many.text == ref.text == TEXTS[4]


def test_put_hands_transformers_what_it_reads(tok, monkeypatch) -> None:
    # transformers' put() reads .shape and .tolist(): whatever we get, it gets a 1-D int array
    seen: list[Any] = []
    original = transformers.TextStreamer.put

    def spy(self: Any, value: Any) -> None:
        seen.append(value)
        original(self, value)

    monkeypatch.setattr(transformers.TextStreamer, "put", spy)
    ours = TextStreamer(tok, use_print=False)
    for value in ([[1, 2]], (3,), 4, torch.tensor(5), np.array([[6]])):
        ours.put(value)
    assert [v.tolist() for v in seen] == [[1, 2], [3], [4], [5], [6]]
    assert all(len(v.shape) == 1 for v in seen)
    assert all(type(t) is int for v in seen for t in v.tolist())


def test_on_finalized_text_hook_receives_chunks(tok) -> None:
    class Collect(TextStreamer):
        def __init__(self, tok: Any) -> None:
            super().__init__(tok)
            self.calls: list[tuple[str, bool]] = []

        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            self.calls.append((text, stream_end))

    ids = _ids(tok, TEXTS[0])
    ours = Collect(tok)
    assert _stdout_of(lambda: _feed(ours, ids[:1], ids[1:])) == ""  # the override replaces print
    assert "".join(t for t, _ in ours.calls) == TEXTS[0]
    assert [end for _, end in ours.calls] == [False] * (len(ours.calls) - 1) + [True]


def test_iterator_streamer_from_another_thread(tok) -> None:
    ids = _ids(tok, TEXTS[2])
    ours = TextIteratorStreamer(tok, timeout=5.0)
    worker = threading.Thread(target=_feed, args=(ours, ids[:1], ids[1:]))
    worker.start()
    text = "".join(ours)
    worker.join()
    assert text == TEXTS[2]


def test_iterator_timeout_raises_empty() -> None:
    it = TextIteratorStreamer(ByteTokenizer(), timeout=0.05)
    assert it.timeout == 0.05  # checked first: without it the next() below would block
    with pytest.raises(queue.Empty):
        next(it)


# -- errors ------------------------------------------------------------------------------------


def test_batch_size_above_one_raises(tok) -> None:
    ours = TextStreamer(tok)
    with pytest.raises(ValueError, match=r"batch size 1 only, got token ids of shape \(2, 2\)"):
        ours.put(np.array([[1, 2], [3, 4]]))
    with pytest.raises(ValueError, match=r"batch size 1 only, got token ids of shape"):
        ours.put(torch.zeros((3, 1), dtype=torch.long))
    with pytest.raises(ValueError, match="batch size 1 only, got 2 sequences"):
        ours.put([[1, 2], [3, 4]])
    with pytest.raises(ValueError, match=r"shape \[n\] or \[1, n\], got \(1, 1, 2\)"):
        ours.put(np.zeros((1, 1, 2), dtype=np.int64))


def test_non_integer_tokens_raise(tok) -> None:
    ours = TextStreamer(tok)
    with pytest.raises(TypeError, match="integer token ids, got 1.5"):
        ours.put([1.5])
    with pytest.raises(TypeError, match="integer token ids, got True"):
        ours.put([True])
    with pytest.raises(TypeError, match="integer token ids"):
        ours.put(np.array([0.5]))
    with pytest.raises(TypeError, match=r"token ids \(tensor, array, list or int\), got"):
        ours.put("hello")
    with pytest.raises(TypeError, match=r"token ids \(tensor, array, list or int\), got"):
        ours.put(True)
    assert ours.text == "" and ours.token_cache == []  # nothing half-taken


def test_bad_constructor_arguments(tok) -> None:
    for name in ("skip_prompt", "skip_special_tokens", "use_print", "use_sse"):
        with pytest.raises(TypeError, match=f"{name} must be True or False"):
            TextStreamer(tok, **{name: "yes"})
    with pytest.raises(TypeError, match="decode"):
        TextStreamer(object())
    with pytest.raises(TypeError, match="decode"):
        TextIteratorStreamer(object())
    for timeout in (0, -1.0, True):
        with pytest.raises(ValueError, match="timeout must be None or a number"):
            TextIteratorStreamer(tok, timeout=timeout)


def test_base_streamer_is_abstract() -> None:
    with pytest.raises(NotImplementedError):
        BaseStreamer().put([1])
    with pytest.raises(NotImplementedError):
        BaseStreamer().end()
