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
