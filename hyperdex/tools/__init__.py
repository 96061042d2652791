"""hyperdex.tools: the compiler (AutoCompiler, AutoModelConverter, hdex-compile)."""

from __future__ import annotations

from .compiler import AutoCompiler
from .converter import AutoModelConverter

__all__ = ["AutoCompiler", "AutoModelConverter"]
