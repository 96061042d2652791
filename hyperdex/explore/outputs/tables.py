"""Result tables: named numpy columns, written as CSV and as a pickle of those columns
(``pandas.DataFrame(pickle.load(f))`` reads it back as a data frame)."""

from __future__ import annotations

import csv
import pickle
from pathlib import Path
from typing import Any, Iterator, Union

import numpy as np


class Table:
    """Columns of equal length."""

    def __init__(self, columns: dict[str, np.ndarray]):
        self.columns = {k: np.asarray(v) for k, v in columns.items()}
        lengths = {len(v) for v in self.columns.values()}
        assert len(lengths) <= 1, f"columns of different lengths: {lengths}"

    def __len__(self) -> int:
        return len(next(iter(self.columns.values()))) if self.columns else 0

    def __getitem__(self, name: str) -> np.ndarray:
        return self.columns[name]

    def __contains__(self, name: str) -> bool:
        return name in self.columns

    def row(self, i: int) -> dict[str, Any]:
        return {k: _plain(v[i]) for k, v in self.columns.items()}

    def rows(self) -> Iterator[dict[str, Any]]:
        for i in range(len(self)):
            yield self.row(i)

    def select(self, mask: np.ndarray) -> Table:
        return Table({k: v[mask] for k, v in self.columns.items()})

    def to_pandas(self) -> Any:
        import pandas as pd  # optional

        return pd.DataFrame(self.columns)

    def write(self, stem: Union[str, Path]) -> list[str]:
        """``stem``.csv and ``stem``.pkl; returns the paths."""
        stem = Path(stem)
        stem.parent.mkdir(parents=True, exist_ok=True)
        # Names like "opt-1.3b" hold dots: append, never replace, a suffix.
        csv_path, pkl_path = Path(f"{stem}.csv"), Path(f"{stem}.pkl")
        tmp = Path(f"{stem}.csv.partial")
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(list(self.columns))
            cols = [[_fmt(x) for x in v] for v in self.columns.values()]
            w.writerows(zip(*cols))
        tmp.replace(csv_path)
        tmp = Path(f"{stem}.pkl.partial")
        with open(tmp, "wb") as f:
            pickle.dump(self.columns, f, protocol=pickle.HIGHEST_PROTOCOL)
        tmp.replace(pkl_path)
        return [str(csv_path), str(pkl_path)]


def _plain(x: Any) -> Any:
    return x.item() if isinstance(x, np.generic) else x


def _fmt(x: Any) -> str:
    x = _plain(x)
    if x is None:
        return ""
    if isinstance(x, float):
        return "" if np.isnan(x) else f"{x:.6g}"
    return str(x)
