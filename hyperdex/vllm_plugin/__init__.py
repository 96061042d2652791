"""hyperdex as a platform plugin of upstream vLLM: ``vllm serve`` and ``vllm.LLM`` on the LPU.

``pip install 'hyperdex[vllm]'`` registers :func:`register` under vLLM's
``vllm.platform_plugins`` entry point, as the Gaudi, Neuron, Ascend and Spyre plugins do. vLLM
then runs its own API server, engine and scheduler, and hands each step to hyperdex's worker
(:mod:`.worker`), whose model runner (:mod:`.model_runner`) executes it on a hyperdex device:
the C++ emulator, or a board through XRT where one is present. docs/serving.md ("vLLM") says
what runs and what the device refuses.

Only this module is imported when vLLM loads its plugins (in every vLLM process), so it
imports neither vLLM nor torch; :mod:`.platform` does, when vLLM picks the platform.
"""

from __future__ import annotations

import importlib.util
from typing import Optional

__all__ = ["PLATFORM", "register"]

PLATFORM = "hyperdex.vllm_plugin.platform.LPUPlatform"


def register() -> Optional[str]:
    """vLLM's platform-plugin hook: the platform's qualified name, or None (the plugin stays
    inactive) when hyperdex's C++ core is not importable here. With hyperdex installed, vLLM
    activates this platform in place of its built-in ones; ``VLLM_TARGET_DEVICE=cpu`` (vLLM's
    own CPU platform) or ``VLLM_PLUGINS`` without ``hyperdex`` (the plugins vLLM may load)
    turns it off."""
    try:
        found = importlib.util.find_spec("hyperdex._core") is not None
    except (ImportError, ValueError):
        found = False
    return PLATFORM if found else None
