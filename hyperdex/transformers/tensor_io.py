"""Token-id input and output in the caller's own type.

``generate(input_ids)`` takes a torch tensor, a numpy array or Python lists, 1-D ([n]) or 2-D
([batch, n]). :func:`to_numpy_ids` turns any of them into a 2-D int64 numpy array plus an
:class:`IdsKind` record; :func:`from_numpy_ids` turns results back into the same kind and
dimensionality (torch LongTensor on the input's device / numpy int64 / nested lists).

torch stays optional: it is never imported here unless the caller passed a torch tensor
(detected through ``sys.modules``, so a program that never imported torch cannot hold one).
"""

from __future__ import annotations

import numbers
import sys
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

__all__ = ["IdsKind", "from_numpy_ids", "to_numpy_ids"]

_INT64_MAX = np.iinfo(np.int64).max


@dataclass(frozen=True)
class IdsKind:
    """What the caller passed: ``kind`` is ``"torch"``, ``"numpy"`` or ``"list"``; ``ndim``
    is 1 or 2; ``device`` is the torch device of a tensor input (else None)."""

    kind: str
    ndim: int
    device: Any = None


def _torch_tensor_type() -> Any:
    torch = sys.modules.get("torch")
    return getattr(torch, "Tensor", None) if torch is not None else None


def to_numpy_ids(
    ids: Any, name: str = "input_ids", vocab_size: int | None = None
) -> tuple[np.ndarray, IdsKind]:
    """Convert token ids to a C-contiguous 2-D int64 numpy array (a copy for list input).

    Args:
        ids: torch integer tensor, numpy integer array, or a list/tuple of ints (1-D) or of
            equal-length lists of ints (2-D).
        name: the argument's name, for error messages.
        vocab_size: if given, ids must be < vocab_size.

    Raises TypeError for floats, bools, strings and other non-integer input, ValueError for
    negative (or >= vocab_size) ids, ragged lists, 0-D or 3-D input and empty input.
    """
    tensor_type = _torch_tensor_type()
    if tensor_type is not None and isinstance(ids, tensor_type):
        kind = IdsKind("torch", ids.dim(), ids.device)
        if ids.is_floating_point() or ids.is_complex() or ids.dtype == sys.modules["torch"].bool:
            raise TypeError(
                f"{name} must hold integer token ids, got a torch tensor of dtype {ids.dtype}; "
                "use the tokenizer's output or .long()"
            )
        array = ids.detach().cpu().numpy()
    elif isinstance(ids, np.ndarray):
        kind = IdsKind("numpy", ids.ndim)
        if ids.dtype.kind not in "iu":
            raise TypeError(
                f"{name} must hold integer token ids, got a numpy array of dtype {ids.dtype}; "
                "use .astype(np.int64) on token ids"
            )
        array = ids
    elif isinstance(ids, (list, tuple)):
        array = _list_to_array(ids, name)
        kind = IdsKind("list", array.ndim)
    elif isinstance(ids, Mapping) and "input_ids" in ids:
        raise TypeError(
            f"{name} got the whole tokenizer output (a dict); pass inputs['input_ids'], or "
            "call generate(**inputs)"
        )
    else:
        raise TypeError(
            f"{name} must be a torch tensor, a numpy array or a list of token ids, "
            f"got {type(ids).__name__}"
        )

    if kind.ndim not in (1, 2):
        raise ValueError(
            f"{name} must be 1-D [seq_len] or 2-D [batch, seq_len], got shape {array.shape}"
        )
    if array.size == 0:
        raise ValueError(f"{name} is empty (shape {array.shape}); give at least one token id")
    if array.dtype == np.uint64 and int(array.max()) > _INT64_MAX:
        raise ValueError(f"{name} holds id {int(array.max())}, too large for a token id")
    lowest = int(array.min())
    if lowest < 0:
        raise ValueError(f"{name} holds negative id {lowest}; token ids must be >= 0")
    if vocab_size is not None:
        highest = int(array.max())
        if highest >= vocab_size:
            raise ValueError(
                f"{name} holds id {highest}, outside the vocabulary [0, {vocab_size}); "
                "was it tokenized with this model's tokenizer?"
            )
    out = np.ascontiguousarray(array, dtype=np.int64)
    if out.ndim == 1:
        out = out[None, :]
    return out, kind


def _list_to_array(ids: list[Any] | tuple[Any, ...], name: str) -> np.ndarray:
    if len(ids) == 0:
        raise ValueError(f"{name} is empty; give at least one token id")
    if all(isinstance(row, (list, tuple)) for row in ids):
        width = len(ids[0])
        for i, row in enumerate(ids):
            if len(row) != width:
                raise ValueError(
                    f"{name} is ragged: row 0 has {width} ids but row {i} has {len(row)}; "
                    "pad the rows to one length or generate them one at a time"
                )
            _check_int_items(row, f"{name}[{i}]")
        return np.array(ids, dtype=np.int64).reshape(len(ids), width)
    if any(isinstance(row, (list, tuple)) for row in ids):
        raise ValueError(f"{name} mixes ids and lists of ids; give [ids...] or [[ids...], ...]")
    _check_int_items(ids, name)
    return np.array(ids, dtype=np.int64)


def _check_int_items(items: list[Any] | tuple[Any, ...], name: str) -> None:
    for i, v in enumerate(items):
        if isinstance(v, (list, tuple)):
            raise ValueError(f"{name} is nested too deeply: ids must be 1-D or 2-D")
        if not isinstance(v, numbers.Integral) or isinstance(v, (bool, np.bool_)):
            raise TypeError(f"{name}[{i}] must be an int token id, got {v!r}")
        if v < 0:
            raise ValueError(f"{name}[{i}] is {v}; token ids must be >= 0")
        if v > _INT64_MAX:
            raise ValueError(f"{name}[{i}] is {v}, too large for a token id")


def from_numpy_ids(ids: np.ndarray, kind: IdsKind) -> Any:
    """Convert a 2-D [batch, n] (or 1-D [n]) int array back to the caller's kind: a torch
    LongTensor on the input's device, a numpy int64 array or nested lists, 1-D when the
    input was 1-D (the batch must then be 1)."""
    array = np.asarray(ids, dtype=np.int64)
    if array.ndim == 1:
        array = array[None, :]
    if array.ndim != 2:
        raise ValueError(f"ids must be 1-D or 2-D, got shape {array.shape}")
    if kind.ndim == 1:
        if array.shape[0] != 1:
            raise ValueError(
                f"the input was 1-D but the output has {array.shape[0]} sequences; "
                "a 1-D input gives one sequence"
            )
        array = array[0]
    if kind.kind == "torch":
        import torch  # the caller passed a tensor, so torch is already loaded

        tensor = torch.from_numpy(np.ascontiguousarray(array))
        return tensor.to(kind.device) if kind.device is not None else tensor
    if kind.kind == "numpy":
        return np.ascontiguousarray(array)
    if kind.kind == "list":
        return array.tolist()
    raise ValueError(f"unknown ids kind {kind.kind!r}; expected 'torch', 'numpy' or 'list'")
