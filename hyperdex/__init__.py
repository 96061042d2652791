"""hyperdex: compile Hugging Face causal LMs for LPU accelerators and run them on a board or
on the bundled C++ emulator."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
