"""Upstream vLLM for ``hyperdex.vllm``: the module, when it and this plugin are installed, and
the arguments its ``LLM`` needs for a model hyperdex compiled.

``hyperdex.vllm`` is a thin shim over these (docs/serving.md, "vLLM"): where vLLM is installed
(``pip install 'hyperdex[vllm]'``), ``from hyperdex.vllm import LLM, SamplingParams`` gives
vLLM's own classes running on the LPU through the plugin; elsewhere, hyperdex's own engine with
vLLM's names. ``HYPERDEX_VLLM_ENGINE=hyperdex`` keeps hyperdex's engine where vLLM is installed.
Plain Python: nothing here imports vLLM until :func:`upstream_vllm` is called.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from pathlib import Path
from types import ModuleType
from typing import Any, Optional

from ..compiled.folder import COMPILE_INFO_NAME
from . import register

__all__ = ["ENGINE_ENV", "hf_folder_of_compiled", "upstream_llm_args", "upstream_vllm"]

ENGINE_ENV = "HYPERDEX_VLLM_ENGINE"  # "hyperdex": hyperdex's own engine even with vLLM here


def upstream_vllm() -> Optional[ModuleType]:
    """The ``vllm`` module when vLLM and this plugin are installed here (and ``ENGINE_ENV`` is
    not ``hyperdex``); None otherwise: then hyperdex's own engine serves ``hyperdex.vllm``."""
    if os.environ.get(ENGINE_ENV, "").strip().lower() == "hyperdex":
        return None
    try:
        found = importlib.util.find_spec("vllm") is not None
    except (ImportError, ValueError):
        found = False
    if not found or register() is None:
        return None
    return importlib.import_module("vllm")


def hf_folder_of_compiled(model: Any) -> Optional[Path]:
    """``<compiled folder>/ckpt`` when ``model`` names a finished compiled folder whose
    ``ckpt/`` holds the Hugging Face config vLLM reads; None otherwise."""
    if not isinstance(model, (str, Path)):
        return None
    folder = Path(model).expanduser()
    ckpt = folder / "ckpt"
    if (folder / COMPILE_INFO_NAME).is_file() and (ckpt / "config.json").is_file():
        return ckpt
    return None


def upstream_llm_args(model: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
    """vLLM ``LLM(...)`` keyword arguments for ``model``: a compiled folder stays the model
    (what the plugin loads) and its ``ckpt/`` becomes vLLM's ``hf_config_path``, ``tokenizer``
    and ``generation_config`` unless given, as ``vllm serve <compiled folder>`` does."""
    out = dict(kwargs, model=str(model) if isinstance(model, Path) else model)
    ckpt = hf_folder_of_compiled(model)
    if ckpt is not None:
        for name, unset in (("hf_config_path", None), ("tokenizer", None)):
            if out.get(name, unset) is unset:
                out[name] = str(ckpt)
        if out.get("generation_config", "auto") == "auto":
            out["generation_config"] = str(ckpt)
    return out
