"""Streamers for ``generate(streamer=...)``, built on transformers' own streamer classes.

``generate`` calls ``put(prompt_ids)`` once, then ``put(new_token_ids)`` after every step, then
``end()``. Values may be torch tensors, numpy arrays, lists or ints, of shape [], [n] or
[1, n]; only batch size 1 is supported.

:class:`TextStreamer` and :class:`TextIteratorStreamer` subclass transformers' classes of the
same names, so when text is released (the flush rules: newlines, CJK ideographs, words, bytes
of a character split over several tokens, ...) is decided by the transformers version that is
installed, not re-implemented here. hyperdex adds input normalisation and checks, a
``skip_special_tokens=True`` default, optional printing, Server-Sent Events and a record of the
emitted text (:attr:`TextStreamer.text`, :attr:`TextStreamer.chunks`).

Server-Sent Events (``use_sse=True``): each non-empty chunk becomes one event, see
:func:`format_sse`.
"""

from __future__ import annotations

import numbers
import re
from typing import Any

import numpy as np
from transformers.generation.streamers import BaseStreamer
from transformers.generation.streamers import TextIteratorStreamer as _HFTextIteratorStreamer
from transformers.generation.streamers import TextStreamer as _HFTextStreamer

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


class TextStreamer(_HFTextStreamer):
    """transformers' ``TextStreamer`` (same chunks, same stdout) with hyperdex's additions.

    Args:
        tokenizer: anything with ``decode(ids, **decode_kwargs) -> str``; transformers may
            also pass a single int as ``ids``.
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
        # positional like transformers' own subclasses do, so that with TextIteratorStreamer
        # below this reaches transformers' TextIteratorStreamer.__init__ too
        super().__init__(
            tokenizer, skip_prompt, skip_special_tokens=skip_special_tokens, **decode_kwargs
        )
        self.use_print = use_print
        self.use_sse = use_sse
        self.chunks: list[str] = []
        self._parts: list[str] = []
        self._held_cr = False  # SSE: a chunk's last "\r" waits, it may start a CRLF
        self._stream_ended = False

    @property
    def text(self) -> str:
        """The plain text emitted so far in the current (or last) generation."""
        return "".join(self._parts)

    def put(self, value: Any) -> None:
        """Receive token ids ([], [n] or [1, n]); transformers decides what text is final."""
        ids = _token_list(value)
        if self._stream_ended:  # a new generation on a reused streamer
            self._stream_ended = False
            self._parts = []
            self.chunks = []
            self._held_cr = False
        # transformers' put() reads .shape and .tolist(): hand it a 1-D array whatever came in
        super().put(np.asarray(ids, dtype=np.int64))

    def end(self) -> None:
        """Emit whatever is left (transformers' ``end``) and mark the end of the stream."""
        # set first: the next put() must start a new record even if emitting the rest fails
        self._stream_ended = True
        super().end()

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        """Hook called with each piece of final text (often empty) and once with
        ``stream_end=True``. Records it, then prints it if ``use_print``. Override to send the
        text elsewhere."""
        chunk = self._record(text, stream_end)
        if not self.use_print:
            return
        if self.use_sse:
            if chunk:
                print(chunk, end="", flush=True)
        else:
            # transformers' printing; named, not super(): in TextIteratorStreamer's MRO the
            # next class is transformers' iterator, which would queue instead
            _HFTextStreamer.on_finalized_text(self, text, stream_end)

    def _record(self, text: str, stream_end: bool = False) -> str:
        """Store ``text`` and return the chunk to emit ('' for nothing)."""
        if self.use_sse:
            # transformers may release "\r" and "\n" of one CRLF in two chunks; as two events
            # they would read as two line breaks, so a trailing "\r" waits for the next chunk
            if self._held_cr:
                text, self._held_cr = "\r" + text, False
            if text.endswith("\r") and not stream_end:
                text, self._held_cr = text[:-1], True
        if not text:
            return ""
        self._parts.append(text)
        chunk = format_sse(text) if self.use_sse else text
        self.chunks.append(chunk)
        return chunk


class TextIteratorStreamer(TextStreamer, _HFTextIteratorStreamer):
    """transformers' ``TextIteratorStreamer`` with hyperdex's additions: ``generate`` runs in a
    thread and the consumer does ``for text in streamer``.

    Yields the same strings as transformers' TextIteratorStreamer (including its empty ones)
    unless ``use_sse``, where it yields one SSE event per non-empty chunk. ``timeout`` (seconds)
    bounds each wait for the next item; on expiry ``queue.Empty`` is raised, so a consumer
    does not hang when ``generate`` failed. Nothing is printed. :attr:`text` and
    :attr:`chunks` are kept as in :class:`TextStreamer`.
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
        # TextStreamer.__init__ goes on to transformers' TextIteratorStreamer.__init__ (MRO),
        # which makes the queue and stop signal with its default timeout: set ours after it
        super().__init__(tokenizer, skip_prompt, use_print=False, use_sse=use_sse, **decode_kwargs)
        self.timeout = timeout

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        """Queue the text (or its SSE event), and the stop signal at the end."""
        chunk = self._record(text, stream_end)
        if not self.use_sse:
            _HFTextIteratorStreamer.on_finalized_text(self, text, stream_end)
            return
        if chunk:  # no empty SSE events
            self.text_queue.put(chunk, timeout=self.timeout)
        if stream_end:
            self.text_queue.put(self.stop_signal, timeout=self.timeout)
