"""hyperdex: compile Hugging Face causal LMs for LPU accelerators and run them on a board or
on the bundled C++ emulator."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]

# One warning line per dependency outside the tested range (hyperdex/versions.py).
from .versions import check_versions  # noqa: E402

check_versions()
