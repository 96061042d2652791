"""Streamers for ``generate(streamer=...)``, with transformers' protocol and flush rules.

``generate`` calls ``put(prompt_ids)`` once, then ``put(new_token_ids)`` after every step, then
``end()``. Values may be torch tensors, numpy arrays, lists or ints, of shape [n] or [1, n];
only batch size 1 is supported.

:class:`TextStreamer` and :class:`TextIteratorStreamer` emit text exactly when transformers'
classes of the same names do: the cached tokens are re-decoded at every step and the text is
released at a newline (the cache is then reset), after a CJK ideograph, or otherwise up to the
last space (an incomplete word, or a multi-byte character split across tokens, which decodes
to U+FFFD, waits); ``end()`` releases the rest.

Server-Sent Events (``use_sse=True``): each non-empty chunk becomes one event, see
:func:`format_sse`.
"""

from __future__ import annotations

import numbers
import re
from queue import Queue
from typing import Any

__all__ = ["BaseStreamer", "TextIteratorStreamer", "TextStreamer", "format_sse"]

_LINE_BREAK = re.compile(r"\r\n|\r|\n")


def format_sse(chunk: str) -> str:
    """Frame ``chunk`` as one Server-Sent Event: ``data: <line>`` for every line of the chunk,
    then a blank line. SSE ends a data line at CR, LF or CRLF and clients rejoin the lines of
    one event with LF, so newlines survive the trip (``"a\\nb"`` -> ``"data: a\\ndata: b\\n\\n"``,
    a trailing newline gives a last empty ``data: `` line) while CR and CRLF arrive as LF.
    Leading spaces survive too: clients strip only the one space after ``data:``.
    """
    return "".join(f"data: {line}\n" for line in _LINE_BREAK.split(chunk)) + "\n"


def _token_list(value: Any) -> list[int]:
    """Token ids of one sequence from a tensor/array/list/int of shape [], [n] or [1, n]."""
    if hasattr(value, "shape") and hasattr(value, "tolist"):  # torch tensor or numpy array
        shape = tuple(value.shape)
        if len(shape) > 2:
            raise ValueError(
                f"streamer.put() expects token ids of shape [n] or [1, n], got {shape}"
            )
        if len(shape) == 2 and shape[0] != 1:
            raise ValueError(
                f"streamers support batch size 1 only, got token ids of shape {shape}; "
                "generate one sequence at a time when streaming"
            )
        value = value.tolist()
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return [int(value)]
    if not isinstance(value, (list, tuple)):
        raise TypeError(
            f"streamer.put() expects token ids (tensor, array, list or int), got {type(value)}"
        )
    if value and isinstance(value[0], (list, tuple)):
        if len(value) != 1:
            raise ValueError(
                f"streamers support batch size 1 only, got {len(value)} sequences; "
                "generate one sequence at a time when streaming"
            )
        value = value[0]
    ids = []
    for t in value:
        if not isinstance(t, numbers.Integral) or isinstance(t, bool):
            raise TypeError(f"streamer.put() expects integer token ids, got {t!r}")
        ids.append(int(t))
    return ids


def _is_chinese_char(cp: int) -> bool:
    """Whether ``cp`` is in a CJK Unified Ideographs block (transformers' definition: Hangul,
    Hiragana and Katakana are not included, they are written with spaces)."""
    return (
        0x4E00 <= cp <= 0x9FFF
        or 0x3400 <= cp <= 0x4DBF
        or 0x20000 <= cp <= 0x2A6DF
        or 0x2A700 <= cp <= 0x2B73F
        or 0x2B740 <= cp <= 0x2B81F
        or 0x2B820 <= cp <= 0x2CEAF
        or 0xF900 <= cp <= 0xFAFF
        or 0x2F800 <= cp <= 0x2FA1F
    )


class BaseStreamer:
    """Base class of streamers: ``generate`` calls ``put(token_ids)`` (the prompt first, then
    each new token) and ``end()`` once at the end."""

    def put(self, value: Any) -> None:
        raise NotImplementedError

    def end(self) -> None:
        raise NotImplementedError


class TextStreamer(BaseStreamer):
    """Decode tokens as they come and emit text as soon as whole words are formed.

    Args:
        tokenizer: anything with ``decode(ids, **decode_kwargs) -> str``.
        skip_prompt: drop the first ``put()`` (the prompt).
        skip_special_tokens: passed to ``decode``. Default True, unlike transformers (whose
            streamers print e.g. ``<|im_end|>`` unless told otherwise).
        use_print: print the text to stdout as it comes, exactly as transformers' TextStreamer
            (a newline after the last chunk). False: nothing is printed; read :attr:`text` /
            :attr:`chunks` or override :meth:`on_finalized_text`.
        use_sse: emit each non-empty chunk as a Server-Sent Event (:func:`format_sse`),
            printed as is (no extra newline at the end) when ``use_print``.
        decode_kwargs: more keyword arguments for ``decode``.

    :attr:`text` is the plain text emitted so far and :attr:`chunks` the emitted strings
    (SSE-framed when ``use_sse``; empty chunks are not recorded). Both are reset when the next
    generation starts, so one streamer can serve several ``generate`` calls.
    """

    def __init__(
        self,
        tokenizer: Any,
        skip_prompt: bool = False,
        skip_special_tokens: bool = True,
        use_print: bool = True,
        use_sse: bool = False,
        **decode_kwargs: Any,
    ) -> None:
        for name, flag in (
            ("skip_prompt", skip_prompt),
            ("skip_special_tokens", skip_special_tokens),
            ("use_print", use_print),
            ("use_sse", use_sse),
        ):
            if not isinstance(flag, bool):
                raise TypeError(f"{name} must be True or False, got {flag!r}")
        if not callable(getattr(tokenizer, "decode", None)):
            raise TypeError(
                f"tokenizer must have a decode() method (a transformers tokenizer), "
                f"got {type(tokenizer).__name__}"
            )
        self.tokenizer = tokenizer
        self.skip_prompt = skip_prompt
        self.use_print = use_print
        self.use_sse = use_sse
        self.decode_kwargs: dict[str, Any] = {
            "skip_special_tokens": skip_special_tokens,
            **decode_kwargs,
        }
        self.chunks: list[str] = []
        self._parts: list[str] = []
        # transformers' streaming state
        self.token_cache: list[int] = []
        self.print_len = 0
        self.next_tokens_are_prompt = True
        self._stream_ended = False

    @property
    def text(self) -> str:
        """The plain text emitted so far in the current (or last) generation."""
        return "".join(self._parts)

    def put(self, value: Any) -> None:
        """Receive token ids ([n] or [1, n]), decode the cache and emit what is final."""
        ids = _token_list(value)
        if self._stream_ended:  # a new generation on a reused streamer
            self._stream_ended = False
            self._parts = []
            self.chunks = []
        if self.skip_prompt and self.next_tokens_are_prompt:
            self.next_tokens_are_prompt = False
            return

        self.token_cache.extend(ids)
        text = self.tokenizer.decode(self.token_cache, **self.decode_kwargs)
        if text.endswith("\n"):
            # a finished line: emit and start a new cache (decoding stays short)
            printable = text[self.print_len :]
            self.token_cache = []
            self.print_len = 0
        elif len(text) > 0 and _is_chinese_char(ord(text[-1])):
            # CJK text has no spaces: each ideograph is final
            printable = text[self.print_len :]
            self.print_len += len(printable)
        else:
            # up to the last space: the word after it may still change with the next token
            printable = text[self.print_len : text.rfind(" ") + 1]
            self.print_len += len(printable)
        self.on_finalized_text(printable)

    def end(self) -> None:
        """Emit whatever is left in the cache and mark the end of the stream."""
        if self.token_cache:
            text = self.tokenizer.decode(self.token_cache, **self.decode_kwargs)
            printable = text[self.print_len :]
            self.token_cache = []
            self.print_len = 0
        else:
            printable = ""
        self.next_tokens_are_prompt = True
        self._stream_ended = True
        self.on_finalized_text(printable, stream_end=True)

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        """Hook called with each piece of final text (often empty) and once with
        ``stream_end=True``. Records it, then prints it if ``use_print``. Override to send the
        text elsewhere."""
        chunk = self._record(text)
        if self.use_print:
            if self.use_sse:
                if chunk:
                    print(chunk, end="", flush=True)
            else:
                print(text, flush=True, end="" if not stream_end else None)

    def _record(self, text: str) -> str:
        """Store ``text`` and return the chunk to emit ('' for nothing)."""
        if not text:
            return ""
        self._parts.append(text)
        chunk = format_sse(text) if self.use_sse else text
        self.chunks.append(chunk)
        return chunk


class TextIteratorStreamer(TextStreamer):
    """A streamer to iterate over from another thread: ``generate`` runs in a thread and the
    consumer does ``for text in streamer``.

    Yields the same strings as transformers' TextIteratorStreamer (including its empty ones)
    unless ``use_sse``, where it yields one SSE event per non-empty chunk. ``timeout`` (seconds)
    bounds each wait for the next item; on expiry ``queue.Empty`` is raised, so a consumer
    does not hang when ``generate`` failed. Nothing is printed.
    """

    def __init__(
        self,
        tokenizer: Any,
        skip_prompt: bool = False,
        timeout: float | None = None,
        use_sse: bool = False,
        **decode_kwargs: Any,
    ) -> None:
        if timeout is not None and (isinstance(timeout, bool) or not timeout > 0):
            raise ValueError(f"timeout must be None or a number of seconds > 0, got {timeout!r}")
        super().__init__(tokenizer, skip_prompt, use_print=False, use_sse=use_sse, **decode_kwargs)
        self.timeout = timeout
        self.text_queue: Queue[Any] = Queue()
        self.stop_signal = object()

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        """Queue the text (or its SSE event), and the stop signal at the end."""
        chunk = self._record(text)
        if chunk or not self.use_sse:
            self.text_queue.put(chunk if self.use_sse else text, timeout=self.timeout)
        if stream_end:
            self.text_queue.put(self.stop_signal, timeout=self.timeout)

    def __iter__(self) -> TextIteratorStreamer:
        return self

    def __next__(self) -> str:
        value = self.text_queue.get(timeout=self.timeout)
        if value is self.stop_signal:
            raise StopIteration
        return value
