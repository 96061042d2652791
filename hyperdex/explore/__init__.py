"""hyperdex.explore: a design-space explorer for LLM inference hardware (seed 004, after
ReaLLM / Chiplet Cloud), on the same cost model as the compiler.

    >>> from hyperdex.explore import explore
    >>> r = explore("tpuv4", "gpt3")            # presets, or YAML files, or a HF config.json
    >>> print(r.summary())                       # tables and plots under ./outputs/tpuv4/

Hardware, technology constants, system and model are YAML (every field may be a list: the
explorer sweeps the product). GPUs and TPUs go through a per-operator roofline; LPU designs
through the instruction-level cost model (``hyperdex.tools.estimate``). docs/explorer.md.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .core import ExploreResult, explore
    from .inputs.loader import (
        available,
        load_hardware,
        load_model,
        load_system,
        load_technology,
    )
    from .outputs.pareto import pareto_front

__all__ = [
    "ExploreResult",
    "available",
    "explore",
    "load_hardware",
    "load_model",
    "load_system",
    "load_technology",
    "pareto_front",
]

# The names load lazily: ``hdex-explore`` (hyperdex.explore.cli) starts without PyYAML, so that
# it can say which extra to install instead of failing on this package's import.
_MODULES = {
    "ExploreResult": ".core",
    "explore": ".core",
    "available": ".inputs.loader",
    "load_hardware": ".inputs.loader",
    "load_model": ".inputs.loader",
    "load_system": ".inputs.loader",
    "load_technology": ".inputs.loader",
    "pareto_front": ".outputs.pareto",
}


def __getattr__(name: str) -> Any:
    if name not in _MODULES:
        raise AttributeError(f"module 'hyperdex.explore' has no attribute {name!r}")
    if _MODULES[name] != ".outputs.pareto":  # the inputs are YAML
        from ..extras import require_extra

        require_extra("hyperdex.explore", "explore", ["yaml"])
    return getattr(importlib.import_module(_MODULES[name], __name__), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
