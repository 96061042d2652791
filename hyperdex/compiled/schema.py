"""Structural checks of the JSON records of a compiled folder: every field the runtime reads
is present and of its type, else a FormatError names the file and the field (instead of a bare
KeyError or TypeError later)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from ..errors import FormatError

_MISSING = object()


# The C++ core holds these numbers in uint64_t / uint32_t fields: a larger one would not
# convert (a bare TypeError from the bindings), so the record is corrupt.
U64_MAX = 2**64 - 1
U32_MAX = 2**32 - 1


def is_uint(v: Any) -> bool:
    """An integer that fits a uint64_t."""
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= U64_MAX


def is_u32(v: Any) -> bool:
    """An integer that fits a uint32_t (a CRC-32, a count or size the core holds in 32 bits)."""
    return is_uint(v) and v <= U32_MAX


def is_pos(v: Any) -> bool:
    return is_uint(v) and v > 0


def is_pos32(v: Any) -> bool:
    return is_u32(v) and v > 0


def is_str(v: Any) -> bool:
    return isinstance(v, str)


def is_dict(v: Any) -> bool:
    return isinstance(v, dict)


def is_list(v: Any) -> bool:
    return isinstance(v, list)


def is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def is_dict_or_none(v: Any) -> bool:
    return v is None or isinstance(v, dict)


def is_bool(v: Any) -> bool:
    return isinstance(v, bool)


_KINDS: dict[Callable[[Any], bool], str] = {
    is_uint: "an integer from 0 to 2^64 - 1",
    is_u32: "an integer from 0 to 2^32 - 1",
    is_pos: "an integer from 1 to 2^64 - 1",
    is_pos32: "an integer from 1 to 2^32 - 1",
    is_str: "a string",
    is_dict: "an object",
    is_list: "a list",
    is_number: "a number",
    is_dict_or_none: "an object or null",
    is_bool: "true or false",
}
# A schema: dotted field -> kind (one of the functions above); "<field>[]" -> the kind of each
# item of the list <field>, or the schema of each item (a dict) when the items are objects.
Schema = dict[str, Any]


def check_fields(doc: dict[str, Any], schema: Schema, path: Path, hint: str, at: str = "") -> None:
    """Raises a FormatError naming ``path`` and the first field of ``schema`` that ``doc``
    lacks or holds with the wrong type."""

    def bad(field: str, what: str) -> FormatError:
        return FormatError(
            f"{path}: field {field!r} {what}; the file was edited or damaged after the "
            f"compile: {hint}"
        )

    for dotted, kind in schema.items():
        of_items = dotted.endswith("[]")
        keys = (dotted[:-2] if of_items else dotted).split(".")
        value: Any = doc
        for depth, key in enumerate(keys):
            if not isinstance(value, dict):
                field = at + ".".join(keys[:depth])
                raise bad(field, f"must be an object, got {_short(value)}")
            value = value.get(key, _MISSING)
            if value is _MISSING:
                raise bad(at + ".".join(keys[: depth + 1]), "is missing")
        field = at + ".".join(keys)
        if of_items:
            if not isinstance(value, list):
                raise bad(field, f"must be a list, got {_short(value)}")
            for i, item in enumerate(value):
                if isinstance(kind, dict):
                    if not isinstance(item, dict):
                        raise bad(f"{field}[{i}]", f"must be an object, got {_short(item)}")
                    check_fields(item, kind, path, hint, f"{field}[{i}].")
                elif not kind(item):
                    raise bad(f"{field}[{i}]", f"must be {_KINDS[kind]}, got {_short(item)}")
        elif not kind(value):
            raise bad(field, f"must be {_KINDS[kind]}, got {_short(value)}")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
