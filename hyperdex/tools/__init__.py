"""hyperdex.tools: the compiler (AutoCompiler, AutoModelConverter, hdex-compile) and the
estimator (estimate, hdex-estimate).

The names load lazily, so ``hyperdex.tools.real_weights`` and other helpers import without
the C++ core."""

from __future__ import annotations

from typing import Any

__all__ = [
    "AutoCompiler",
    "AutoModelConverter",
    "CompileLockTimeout",
    "QuantizationConfig",
    "estimate",
]


def __getattr__(name: str) -> Any:
    if name == "AutoCompiler":
        from .compiler import AutoCompiler

        return AutoCompiler
    if name == "AutoModelConverter":
        from .converter import AutoModelConverter

        return AutoModelConverter
    if name == "CompileLockTimeout":
        from .locking import CompileLockTimeout

        return CompileLockTimeout
    if name == "QuantizationConfig":
        from .quantization import QuantizationConfig

        return QuantizationConfig
    if name == "estimate":
        from .estimator import estimate

        return estimate
    raise AttributeError(f"module 'hyperdex.tools' has no attribute {name!r}")
