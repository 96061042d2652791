"""The Cartesian product of every listed value, addressed by index without building it.

A sweep of 10 x 10 x 10 x 10 values is 10,000 design points; ``columns(indices)`` returns the
values of any slice of them as numpy arrays (mixed-radix digits of the index), so a chunk of
points is made in one vectorised step and the whole product never sits in memory as dicts.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

import numpy as np

from ...errors import ConfigError


def _array(values: list[Any]) -> np.ndarray:
    if all(isinstance(v, bool) for v in values):
        return np.array(values, dtype=bool)
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return np.array(values, dtype=float)
    return np.array(values, dtype=object)


class Sweep:
    """Fields (dotted name -> list of values) and their product."""

    def __init__(self, fields: Mapping[str, list[Any]]):
        self.fields = dict(fields)
        for name, values in self.fields.items():
            if not values:
                raise ConfigError(f"empty sweep: {name!r} has no value")
        self._values = {k: _array(v) for k, v in self.fields.items()}
        self.swept = [k for k, v in self.fields.items() if len(v) > 1]
        size = 1
        for v in self.fields.values():
            size *= len(v)
        self.size = size

    def __len__(self) -> int:
        return self.size

    def columns(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        """Each field's value at each of ``indices`` (0 <= index < size)."""
        out: dict[str, np.ndarray] = {}
        rest = np.asarray(indices, dtype=np.int64)
        # Last field varies fastest, like itertools.product.
        for name in reversed(list(self.fields)):
            values = self._values[name]
            n = len(values)
            out[name] = values[rest % n] if n > 1 else np.repeat(values, len(rest))
            rest = rest // n
        return {k: out[k] for k in self.fields}

    def all_columns(self) -> dict[str, np.ndarray]:
        return self.columns(np.arange(self.size))

    def point(self, index: int) -> dict[str, Any]:
        return {
            k: v[0].item() if hasattr(v[0], "item") else v[0]
            for k, v in self.columns(np.array([index])).items()
        }


def concat(parts: Iterable[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Row-wise concatenation of column dicts with the same keys (object where types mix)."""
    parts = [p for p in parts if p]
    if not parts:
        return {}
    keys = list(parts[0])
    out = {}
    for k in keys:
        arrays = [p[k] for p in parts]
        try:
            out[k] = np.concatenate(arrays)
        except (TypeError, ValueError):
            out[k] = np.concatenate([a.astype(object) for a in arrays])
        if out[k].dtype == object:
            # None and numbers mixed: keep object; all numbers: make float.
            if all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in out[k]):
                out[k] = out[k].astype(float)
    return out
