"""Progress bars for long phases (tqdm), quiet when asked or when nothing watches."""

from __future__ import annotations

import contextlib
import os
from typing import Any, Iterator


@contextlib.contextmanager
def progress_bar(total: int, desc: str, unit: str = "it", enabled: bool = True) -> Iterator[Any]:
    """A tqdm bar; ``HYPERDEX_PROGRESS=0`` or ``enabled=False`` turns it off."""
    from tqdm.auto import tqdm

    disable = not enabled or os.environ.get("HYPERDEX_PROGRESS", "1") == "0"
    bar = tqdm(total=total, desc=desc, unit=unit, disable=disable, leave=False)
    try:
        yield bar
    finally:
        bar.close()
