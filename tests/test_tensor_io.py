"""tensor_io: user token ids <-> 2-D int64 numpy, round trips and clear errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from hyperdex.transformers.tensor_io import IdsKind, from_numpy_ids, to_numpy_ids

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("ids", "kind"),
    [
        ([5, 6, 7], IdsKind("list", 1)),
        ((5, 6, 7), IdsKind("list", 1)),
        ([[5, 6, 7]], IdsKind("list", 2)),
        ([[5, 6, 7], [1, 2, 3]], IdsKind("list", 2)),
        ([np.int32(5), 6, np.uint8(7)], IdsKind("list", 1)),
        (np.array([5, 6, 7], dtype=np.int32), IdsKind("numpy", 1)),
        (np.array([[5, 6, 7]], dtype=np.uint16), IdsKind("numpy", 2)),
        (torch.tensor([5, 6, 7]), IdsKind("torch", 1, torch.device("cpu"))),
        (torch.tensor([[5, 6, 7]], dtype=torch.int32), IdsKind("torch", 2, torch.device("cpu"))),
    ],
)
def test_to_numpy_ids(ids, kind: IdsKind) -> None:
    array, got = to_numpy_ids(ids)
    assert got == kind
    assert array.dtype == np.int64 and array.ndim == 2 and array.flags.c_contiguous
    assert array[0].tolist() == [5, 6, 7]


def test_round_trip_keeps_kind_and_ndim() -> None:
    out = np.array([[5, 6, 7, 8]], dtype=np.int64)

    back = from_numpy_ids(out, to_numpy_ids([5, 6, 7])[1])
    assert back == [5, 6, 7, 8] and all(type(v) is int for v in back)
    assert from_numpy_ids(out, to_numpy_ids([[5, 6, 7]])[1]) == [[5, 6, 7, 8]]

    back = from_numpy_ids(out, to_numpy_ids(np.array([5, 6, 7], dtype=np.int32))[1])
    assert isinstance(back, np.ndarray) and back.dtype == np.int64 and back.shape == (4,)
    back = from_numpy_ids(out, to_numpy_ids(np.array([[5, 6, 7]]))[1])
    assert back.shape == (1, 4)

    back = from_numpy_ids(out, to_numpy_ids(torch.tensor([5, 6, 7], dtype=torch.int32))[1])
    assert isinstance(back, torch.Tensor) and back.dtype == torch.long and back.shape == (4,)
    back = from_numpy_ids(out, to_numpy_ids(torch.tensor([[5, 6, 7]]))[1])
    assert back.shape == (1, 4) and back.tolist() == [[5, 6, 7, 8]]


def test_output_1d_from_batched_result_raises() -> None:
    kind = to_numpy_ids([1, 2])[1]
    with pytest.raises(ValueError, match="1-D"):
        from_numpy_ids(np.zeros((2, 3), dtype=np.int64), kind)


def test_numpy_input_is_not_aliased_for_lists() -> None:
    src = [[1, 2, 3]]
    array, _ = to_numpy_ids(src)
    array[0, 0] = 9
    assert src == [[1, 2, 3]]


@pytest.mark.parametrize(
    ("ids", "exc", "match"),
    [
        ([1.0, 2.0], TypeError, r"input_ids\[0\] must be an int"),
        ([1, 2.5], TypeError, r"input_ids\[1\] must be an int token id, got 2.5"),
        ([True, 2], TypeError, "must be an int"),
        (["a"], TypeError, "must be an int"),
        (np.array([1.0, 2.0]), TypeError, "dtype float64"),
        (np.array([True]), TypeError, "dtype bool"),
        (torch.tensor([1.0]), TypeError, "dtype torch.float32"),
        (torch.tensor([True]), TypeError, "dtype torch.bool"),
        ("hello", TypeError, "got str"),
        (7, TypeError, "got int"),
        ({"input_ids": [1]}, TypeError, r"inputs\['input_ids'\]"),
        ([1, -2], ValueError, r"input_ids\[1\] is -2"),
        (np.array([[3, -1]]), ValueError, "negative id -1"),
        (torch.tensor([0, -5]), ValueError, "negative id -5"),
        ([[1, 2], [3]], ValueError, "ragged: row 0 has 2 ids but row 1 has 1"),
        ([1, [2]], ValueError, "mixes ids and lists"),
        ([[[1]]], ValueError, "nested too deeply"),
        (np.zeros((1, 1, 2), dtype=np.int64), ValueError, r"got shape \(1, 1, 2\)"),
        (torch.zeros((1, 1, 2), dtype=torch.long), ValueError, "2-D"),
        (np.array(3), ValueError, "1-D"),
        ([], ValueError, "empty"),
        ([[]], ValueError, "empty"),
        (np.zeros((0,), dtype=np.int64), ValueError, "empty"),
        (torch.zeros((1, 0), dtype=torch.long), ValueError, "empty"),
        (np.array([2**63 + 5], dtype=np.uint64), ValueError, "too large"),
    ],
)
def test_bad_ids_raise(ids, exc: type[Exception], match: str) -> None:
    with pytest.raises(exc, match=match):
        to_numpy_ids(ids)


def test_vocab_size_bound_and_argument_name() -> None:
    with pytest.raises(ValueError, match=r"prompt holds id 10, outside the vocabulary \[0, 10\)"):
        to_numpy_ids([1, 10], name="prompt", vocab_size=10)
    array, _ = to_numpy_ids([1, 9], vocab_size=10)
    assert array.tolist() == [[1, 9]]


def test_torch_is_not_imported_for_numpy_and_lists() -> None:
    code = (
        "import sys, numpy as np\n"
        "from hyperdex.transformers.tensor_io import to_numpy_ids, from_numpy_ids\n"
        "a, k = to_numpy_ids([[1, 2]]); from_numpy_ids(a, k)\n"
        "a, k = to_numpy_ids(np.array([1, 2])); from_numpy_ids(a, k)\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=60)
