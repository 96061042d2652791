"""hyperdex.serving: the OpenAI-compatible server (``hdex-serve``) and what it shares with
the vLLM-style API (:mod:`hyperdex.vllm`): loading a model for serving, sampling options,
incremental detokenization, the one-sequence-at-a-time engine. docs/serving.md."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Optional, Union

from ..errors import ConfigError, FormatError
from .engine import (
    Engine,
    FairQueue,
    GenerationResult,
    IncrementalDetokenizer,
    Job,
    Sampling,
    run_generation,
)

__all__ = [
    "Engine",
    "FairQueue",
    "GenerationResult",
    "IncrementalDetokenizer",
    "Job",
    "Sampling",
    "device_map_from_env",
    "load_for_serving",
    "run_generation",
]

log = logging.getLogger("hyperdex.serve")
PathLike = Union[str, Path]


def _env_count(name: str) -> Optional[int]:
    text = os.environ.get(name)
    if text is None or text.strip() == "":
        return None
    try:
        value = int(text)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {text!r}") from None
    if value < 0:
        raise ConfigError(f"{name} must be >= 0, got {value}")
    return value


def device_map_from_env(
    num_lpu: Optional[int] = None, num_gpu: Optional[int] = None
) -> Optional[dict[str, int]]:
    """``{"lpu": N}`` or ``{"gpu": G, "lpu": N}`` from the arguments, else from the
    environment (``NUM_LPU_DEVICES``, ``NUM_GPU_DEVICES``); None when neither says anything
    (the compile's device count is used). A GPU count of 1 or more selects hybrid mode."""
    lpu = num_lpu if num_lpu is not None else _env_count("NUM_LPU_DEVICES")
    gpu = num_gpu if num_gpu is not None else _env_count("NUM_GPU_DEVICES")
    if lpu is None and not gpu:
        return None
    out: dict[str, int] = {}
    if gpu:
        out["gpu"] = gpu
    if lpu is not None:
        out["lpu"] = lpu
    return out


def load_for_serving(
    model: PathLike,
    prefix: Optional[PathLike] = None,
    device_map: Optional[dict[str, int]] = None,
    max_length: Optional[int] = None,
    compile_if_needed: bool = True,
    **load_kwargs: Any,
) -> tuple[Any, Any]:
    """(model, tokenizer) for a compiled folder, or for the model id / HF folder given to
    ``compile()``. A model not compiled yet is compiled first (``max_length``, default 2048)
    when ``compile_if_needed``."""
    from ..compiled.folder import resolve_compiled
    from ..transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        folder = resolve_compiled(model, prefix)
    except FormatError:
        if not compile_if_needed:
            raise
        from ..tools import AutoCompiler

        n = (device_map or {}).get("lpu", 1)
        log.info("hyperdex: %s is not compiled yet; compiling it", model)
        folder = Path(
            AutoCompiler().compile(
                model_id=model,
                num_device=n,
                max_length=max_length,
                prefix=prefix,
                fast_compile=True,
                progress=False,
            )
        )
    lpu_model = AutoModelForCausalLM.from_pretrained(folder, device_map=device_map, **load_kwargs)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    return lpu_model, tokenizer
