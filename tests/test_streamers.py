"""Streamers: same output as transformers' TextStreamer / TextIteratorStreamer, SSE framing."""

from __future__ import annotations

import contextlib
import io
import threading

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

TEXTS = [
    "The quick brown fox jumps over the lazy dog. Hello world!",
    "Lines end here.\nAnd a new line starts.\n\nTwo newlines above.\n",
    "我们在测试中文的流式输出。中文 and English 混合。",
    "한국어 텍스트도 테스트합니다. 안녕하세요 world",
    "Emoji 🚀 rocket, party 🎉🎉, unseen 🦀 crab and 𝄞 clef.",
    "mixed 我们 한국어\n🚀 end",
]


@pytest.fixture(scope="module")
def tokenizer() -> transformers.PreTrainedTokenizerFast:
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


def _feed(streamer: object, prompt: list[int], tokens: list[int], wrap=np.array) -> None:
    """Drive a streamer like generate(): the prompt as [1, n], then one [1] per token."""
    streamer.put(wrap([prompt]))
    for t in tokens:
        streamer.put(wrap([t]))
    streamer.end()


def _stdout_of(fn) -> str:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        fn()
    return buf.getvalue()


def test_tokenizer_splits_multibyte_characters(tokenizer) -> None:
    # the streamer tests below rely on a character whose bytes span several tokens
    ids = tokenizer.encode("🦀 𝄞")
    partial = [tokenizer.decode(ids[:i]) for i in range(1, len(ids))]
    assert any(p.endswith("\ufffd") for p in partial)


@pytest.mark.parametrize("text", TEXTS)
@pytest.mark.parametrize("skip_prompt", [False, True])
def test_text_streamer_prints_like_transformers(tokenizer, text: str, skip_prompt: bool) -> None:
    ids = tokenizer.encode(text) + [tokenizer.eos_token_id]
    prompt, new = ids[:3], ids[3:]
    ref = transformers.TextStreamer(tokenizer, skip_prompt=skip_prompt, skip_special_tokens=True)
    ours = TextStreamer(tokenizer, skip_prompt=skip_prompt)
    expected = _stdout_of(lambda: _feed(ref, prompt, new, torch.tensor))
    got = _stdout_of(lambda: _feed(ours, prompt, new, torch.tensor))
    assert got == expected
    assert ours.text + "\n" == expected


@pytest.mark.parametrize("wrap", [np.array, torch.tensor, lambda x: x])
def test_put_accepts_tensors_arrays_and_lists(tokenizer, wrap) -> None:
    ids = tokenizer.encode(TEXTS[4])
    ref = transformers.TextStreamer(tokenizer, skip_special_tokens=True)
    expected = _stdout_of(lambda: _feed(ref, ids[:2], ids[2:], torch.tensor))
    ours = TextStreamer(tokenizer)
    assert _stdout_of(lambda: _feed(ours, ids[:2], ids[2:], wrap)) == expected


def test_put_accepts_1d_and_scalar_tokens(tokenizer) -> None:
    ids = tokenizer.encode(TEXTS[0])
    ours = TextStreamer(tokenizer, use_print=False)
    ours.put(torch.tensor(ids[:2]))  # 1-D prompt
    for t in ids[2:]:
        ours.put(torch.tensor(t))  # 0-D tensor
    ours.end()
    assert ours.text == TEXTS[0]


def test_skip_special_tokens_false_keeps_eos(tokenizer) -> None:
    ids = tokenizer.encode("Hello world") + [tokenizer.eos_token_id]
    ref = transformers.TextStreamer(tokenizer)
    ours = TextStreamer(tokenizer, skip_special_tokens=False)
    expected = _stdout_of(lambda: _feed(ref, ids[:1], ids[1:]))
    assert _stdout_of(lambda: _feed(ours, ids[:1], ids[1:])) == expected
    assert "<eos>" in expected


@pytest.mark.parametrize("text", TEXTS)
def test_iterator_streamer_yields_like_transformers(tokenizer, text: str) -> None:
    ids = tokenizer.encode(text)
    ref = transformers.TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    ours = TextIteratorStreamer(tokenizer, skip_prompt=True, timeout=5.0)
    _feed(ref, ids[:2], ids[2:])
    _feed(ours, ids[:2], ids[2:])
    expected = list(ref)
    got = list(ours)
    assert got == expected
    assert "".join(got) == tokenizer.decode(ids[2:])


def test_iterator_streamer_from_another_thread(tokenizer) -> None:
    ids = tokenizer.encode(TEXTS[2])
    ours = TextIteratorStreamer(tokenizer, timeout=5.0)
    worker = threading.Thread(target=_feed, args=(ours, ids[:1], ids[1:]))
    worker.start()
    text = "".join(ours)
    worker.join()
    assert text == TEXTS[2]


def test_use_print_false_prints_nothing(tokenizer) -> None:
    ids = tokenizer.encode(TEXTS[1])
    ours = TextStreamer(tokenizer, use_print=False)
    assert _stdout_of(lambda: _feed(ours, ids[:2], ids[2:])) == ""
    assert ours.text == TEXTS[1]
    assert "".join(ours.chunks) == TEXTS[1]
    assert all(ours.chunks)  # empty flushes are not recorded


def test_on_finalized_text_hook_receives_chunks(tokenizer) -> None:
    class Collect(TextStreamer):
        def __init__(self, tok) -> None:
            super().__init__(tok, use_print=False)
            self.calls: list[tuple[str, bool]] = []

        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            self.calls.append((text, stream_end))

    ids = tokenizer.encode(TEXTS[0])
    ours = Collect(tokenizer)
    _feed(ours, ids[:1], ids[1:])
    assert "".join(t for t, _ in ours.calls) == TEXTS[0]
    assert [end for _, end in ours.calls].count(True) == 1 and ours.calls[-1][1]


def test_streamer_reuse_resets_text(tokenizer) -> None:
    ours = TextStreamer(tokenizer, skip_prompt=True, use_print=False)
    a, b = tokenizer.encode("Hello world"), tokenizer.encode("lazy dog")
    _feed(ours, a[:1], a[1:])
    first = ours.text
    _feed(ours, b[:1], b[1:])
    assert first == tokenizer.decode(a[1:])
    assert ours.text == tokenizer.decode(b[1:])


# -- SSE ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("chunk", "event"),
    [
        ("hello ", "data: hello \n\n"),
        ("a\nb", "data: a\ndata: b\n\n"),
        ("line\n", "data: line\ndata: \n\n"),
        ("\n", "data: \ndata: \n\n"),
        ("x\r\ny\rz", "data: x\ndata: y\ndata: z\n\n"),
        ("  indented", "data:   indented\n\n"),
        ("我们", "data: 我们\n\n"),
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


class CharTokenizer:
    """One token per character: makes the flush points easy to predict."""

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return "".join(chr(i) for i in ids)


def test_text_streamer_sse_golden() -> None:
    ids = [ord(c) for c in "Hi there\nnext 中文 end"]
    ours = TextStreamer(CharTokenizer(), skip_prompt=True, use_sse=True)
    out = _stdout_of(lambda: _feed(ours, [ord("x")], ids))
    assert out == (
        "data: Hi \n\n"
        "data: there\ndata: \n\n"
        "data: next \n\n"
        "data: 中\n\n"
        "data: 文\n\n"
        "data:  \n\n"
        "data: end\n\n"
    )
    assert ours.chunks == [e + "\n\n" for e in out.split("\n\n")[:-1]]
    assert _sse_client_decode(out) == "Hi there\nnext 中文 end"


def test_text_streamer_sse_queued_without_print(tokenizer) -> None:
    ids = tokenizer.encode(TEXTS[5])
    ours = TextStreamer(tokenizer, use_print=False, use_sse=True)
    assert _stdout_of(lambda: _feed(ours, ids[:1], ids[1:])) == ""
    assert all(c.startswith("data: ") and c.endswith("\n\n") for c in ours.chunks)
    assert _sse_client_decode("".join(ours.chunks)) == TEXTS[5]


def test_iterator_streamer_sse(tokenizer) -> None:
    ids = tokenizer.encode(TEXTS[1])
    ours = TextIteratorStreamer(tokenizer, timeout=5.0, use_sse=True)
    _feed(ours, ids[:1], ids[1:])
    events = list(ours)
    assert events and all(e.startswith("data: ") and e.endswith("\n\n") for e in events)
    assert _sse_client_decode("".join(events)) == TEXTS[1]


# -- errors ------------------------------------------------------------------------------------


def test_batch_size_above_one_raises(tokenizer) -> None:
    ours = TextStreamer(tokenizer)
    with pytest.raises(ValueError, match="batch size 1"):
        ours.put(np.array([[1, 2], [3, 4]]))
    with pytest.raises(ValueError, match="batch size 1"):
        ours.put([[1, 2], [3, 4]])
    with pytest.raises(ValueError, match=r"shape \[n\] or \[1, n\]"):
        ours.put(np.zeros((1, 1, 2), dtype=np.int64))


def test_non_integer_tokens_raise(tokenizer) -> None:
    ours = TextStreamer(tokenizer)
    with pytest.raises(TypeError, match="integer token ids"):
        ours.put([1.5])
    with pytest.raises(TypeError, match="token ids"):
        ours.put("hello")


def test_bad_constructor_arguments(tokenizer) -> None:
    with pytest.raises(TypeError, match="use_print"):
        TextStreamer(tokenizer, use_print="yes")
    with pytest.raises(TypeError, match="decode"):
        TextStreamer(object())
    with pytest.raises(ValueError, match="timeout"):
        TextIteratorStreamer(tokenizer, timeout=0)


def test_base_streamer_is_abstract() -> None:
    with pytest.raises(NotImplementedError):
        BaseStreamer().put([1])
    with pytest.raises(NotImplementedError):
        BaseStreamer().end()


# -- golden strings, one token per UTF-8 byte ----------------------------------------------------


class ByteTokenizer:
    """One token per UTF-8 byte (ids 0-255), decoded as byte-level BPE tokenizers do: an
    incomplete multi-byte character decodes to U+FFFD until its last byte arrives."""

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")


# what transformers' TextStreamer emits for each text (checked against it below)
GOLDEN = {
    "english": ("Hello world, streaming works.", ["Hello ", "world, ", "streaming ", "works."]),
    "newlines": ("line one\nline two\n\nend", ["line ", "one\n", "line ", "two\n", "\n", "end"]),
    # each ideograph is final at once; 。 is punctuation, not an ideograph: it waits
    "cjk": ("我们在测试。中文", ["我", "们", "在", "测", "试", "。中", "文"]),
    # Hangul is written with spaces: it flushes word by word like English
    "hangul": ("안녕하세요 세계 잘", ["안녕하세요 ", "세계 ", "잘"]),
    "emoji": ("go 🚀🎉 done", ["go ", "🚀🎉 ", "done"]),
    # é (2 bytes) and 🦀 (4 bytes) arrive byte by byte: never a U+FFFD in the output
    "split": ("é中🦀x", ["é中", "🦀x"]),
}


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_golden_chunks(name: str) -> None:
    text, chunks = GOLDEN[name]
    ids = list(text.encode())
    ours = TextStreamer(ByteTokenizer(), skip_prompt=True, use_print=False)
    _feed(ours, [0], ids, wrap=lambda x: x)
    assert ours.chunks == chunks
    assert ours.text == text and "\ufffd" not in "".join(ours.chunks)
    ref = transformers.TextStreamer(ByteTokenizer(), skip_prompt=True)
    assert _stdout_of(lambda: _feed(ours, [0], ids)) == ""
    printing = TextStreamer(ByteTokenizer(), skip_prompt=True)
    assert _stdout_of(lambda: _feed(printing, [0], ids)) == _stdout_of(lambda: _feed(ref, [0], ids))
    iterator = TextIteratorStreamer(ByteTokenizer(), skip_prompt=True, timeout=5.0)
    _feed(iterator, [0], ids)
    assert [c for c in iterator if c] == chunks


def test_golden_sse_events() -> None:
    text, chunks = GOLDEN["newlines"]
    ours = TextStreamer(ByteTokenizer(), skip_prompt=True, use_print=False, use_sse=True)
    _feed(ours, [0], list(text.encode()))
    assert ours.chunks == [
        "data: line \n\n",
        "data: one\ndata: \n\n",
        "data: line \n\n",
        "data: two\ndata: \n\n",
        "data: \ndata: \n\n",
        "data: end\n\n",
    ]
    assert _sse_client_decode("".join(ours.chunks)) == text
