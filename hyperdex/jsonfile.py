"""Reading JSON that hyperdex did not just write (compiled folders, checkpoint headers and
indexes, configs, presets): every way the text can be unusable becomes the reader's own error,
never a bare Python exception. A layer below all those readers."""

from __future__ import annotations

import json
import re
from typing import Any, Callable, Union

from .errors import HyperdexError

# A JSON string escape of a UTF-16 surrogate: only then can a parsed string hold a lone one.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def load_json(data: Union[bytes, str], fail: Callable[[str], Exception], **kwargs: Any) -> Any:
    """The JSON value of ``data`` (a file's bytes, UTF-8, or its text), for every file hyperdex
    reads that it did not just write. Every way the text can be unusable is the exception
    ``fail(reason)`` builds (the caller's FormatError / CheckpointError / ConfigError naming
    the file): not UTF-8, not JSON, nested past Python's recursion limit, an integer past
    Python's digit limit, a string holding a lone UTF-16 surrogate (no file name, message or
    C++ string can carry it). A hyperdex error an ``object_pairs_hook`` in ``kwargs`` raises
    passes through. Never any other exception."""
    try:
        text = data.decode("utf-8") if isinstance(data, (bytes, bytearray)) else data
        doc = json.loads(text, **kwargs)
    except HyperdexError:
        raise
    except RecursionError:  # the parser recurses once per level of nesting
        raise fail("not valid UTF-8 JSON (nested too deeply)") from None
    except UnicodeDecodeError as e:
        raise fail(f"not valid UTF-8 JSON ({e})") from None
    except ValueError as e:  # JSONDecodeError; an integer with too many digits
        why = str(e)
        if "integer string conversion" in why:
            why = "an integer has too many digits"
        raise fail(f"not valid UTF-8 JSON ({why})") from None
    if _SURROGATE_ESCAPE.search(text):
        _check_strings(doc, fail)
    return doc


def _check_strings(doc: Any, fail: Callable[[str], Exception]) -> None:
    todo = [doc]
    while todo:
        v = todo.pop()
        if isinstance(v, dict):
            todo.extend(v.keys())
            todo.extend(v.values())
        elif isinstance(v, list):
            todo.extend(v)
        elif isinstance(v, str):
            try:
                v.encode("utf-8")
            except UnicodeEncodeError:
                raise fail(
                    f"not valid UTF-8 JSON (the string {v[:40]!r} holds a lone UTF-16 surrogate)"
                ) from None
