"""What the vLLM plugin runs and the limits it gives vLLM, from vLLM's configuration and the
environment: the compiled folder (or the model to compile), the device count, ``max_length``
and the KV block size. Plain Python (no vLLM, no torch), so the main venv tests it too.

The platform resolves a :class:`LPUTarget` once, in the process that builds vLLM's config, and
passes it to the worker inside that config (``additional_config["hyperdex_target"]``), so
both see the same decision. The user's options go in the same place:
``vllm serve M --additional-config '{"hyperdex": {"prefix": "/models", "backend": "emu"}}'``.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping, Optional

from ..compiled.folder import COMPILE_INFO_NAME
from ..serving import device_map_from_env
from ..transformers.prefix_cache import DEFAULT_BLOCK_SIZE, DEFAULT_CAPACITY_BYTES

__all__ = [
    "OPTIONS_KEY",
    "RESOLVED_KEY",
    "LPUTarget",
    "compiled_folder_of",
    "kv_blocks",
    "resolve_target",
]

OPTIONS_KEY = "hyperdex"
RESOLVED_KEY = "hyperdex_target"  # the platform's decision, for the worker
# hyperdex's own default context for a model compiled on the fly (hdex-serve's too).
DEFAULT_MAX_LENGTH = 2048
# The user's options (--additional-config '{"hyperdex": {...}}') and their types.
USER_OPTIONS: dict[str, type] = {
    "prefix": str,  # where compiled models live (AutoCompiler's prefix)
    "backend": str,  # "emu" or "xrt"; default: a board when XRT sees one, else the emulator
    "num_threads": int,  # emulator threads (0: all cores)
    "quantization": str,  # compile an HF model with "w4a16", "w8a16", ... (default fp16)
    "prefix_cache_bytes": int,  # hyperdex's host pool of KV blocks (default 1 GiB)
}


@dataclass(frozen=True)
class LPUTarget:
    """The resolved decision. ``model`` is a finished compiled folder when ``compiled``, else
    the model id or Hugging Face folder the worker compiles (``AutoCompiler.compile`` with
    ``num_lpu`` devices and ``max_length``; an unchanged compile is reused)."""

    model: str
    compiled: bool
    num_lpu: int
    num_gpu: int  # hybrid mode (NUM_GPU_DEVICES): PyTorch prefills, the LPU decodes
    max_length: int
    block_size: int
    prefix: Optional[str] = None
    backend: Optional[str] = None
    num_threads: int = 0
    quantization: Optional[str] = None
    prefix_cache_bytes: int = DEFAULT_CAPACITY_BYTES

    @property
    def device_map(self) -> dict[str, int]:
        return {"gpu": self.num_gpu, "lpu": self.num_lpu} if self.num_gpu else {"lpu": self.num_lpu}

    def to_options(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> LPUTarget:
        return cls(**dict(options))


def compiled_folder_of(model: str) -> Optional[Path]:
    """The finished compiled folder ``model`` names: the folder itself, or its ``ckpt/`` (the
    Hugging Face folder inside it, which vLLM can read); None for anything else."""
    path = Path(model).expanduser()
    for folder in (path, path.parent if path.name == "ckpt" else None):
        if folder is not None and (folder / COMPILE_INFO_NAME).is_file():
            return folder.resolve()
    return None


def kv_blocks(max_length: int, block_size: int) -> int:
    """KV blocks of ``block_size`` positions the device's KV regions hold: one sequence of
    ``max_length`` rows per layer."""
    return math.ceil(max_length / block_size)


def _user_options(additional: Optional[Mapping[str, Any]]) -> dict[str, Any]:
    raw = (additional or {}).get(OPTIONS_KEY, {})
    if not isinstance(raw, Mapping):
        raise ValueError(f"additional_config[{OPTIONS_KEY!r}] must be an object, got {raw!r}")
    unknown = sorted(set(raw) - set(USER_OPTIONS))
    if unknown:
        raise ValueError(
            f"unknown hyperdex option(s) {unknown} in additional_config[{OPTIONS_KEY!r}]; "
            f"known: {sorted(USER_OPTIONS)}"
        )
    for name, value in raw.items():
        kind = USER_OPTIONS[name]
        if value is not None and (isinstance(value, bool) or not isinstance(value, kind)):
            raise ValueError(f"hyperdex option {name!r} must be a {kind.__name__}, got {value!r}")
    return {k: v for k, v in raw.items() if v is not None}


def resolve_target(
    model: str,
    max_model_len: int,
    user_max_model_len: Optional[int],
    tensor_parallel_size: int,
    block_size: Optional[int],
    additional: Optional[Mapping[str, Any]] = None,
) -> tuple[LPUTarget, int]:
    """The target for vLLM's ``model`` and the ``max_model_len`` vLLM must use.

    ``max_model_len`` is vLLM's value (the user's, else derived from the model's config) and
    ``user_max_model_len`` the user's alone (None or -1 when not given). The device count is
    ``tensor_parallel_size`` when above 1, else ``NUM_LPU_DEVICES`` (and ``NUM_GPU_DEVICES``
    for hybrid mode), as HyperDex's vLLM fork reads them, else the compile's (1 for a model
    compiled here). ``block_size`` is the user's ``--block-size`` (None: hyperdex's 32).

    A compiled folder sets the context: vLLM's ``max_model_len`` is capped at its
    ``max_length`` and a larger one the user asked for is refused. A model to compile gets
    ``max_length`` = the user's ``max_model_len``, else the model's own up to 2048.
    """
    options = _user_options(additional)
    given = user_max_model_len if user_max_model_len and user_max_model_len > 0 else None
    device_map = device_map_from_env(
        num_lpu=tensor_parallel_size if tensor_parallel_size > 1 else None
    )
    num_gpu = int((device_map or {}).get("gpu", 0))
    if block_size is None:
        block_size = DEFAULT_BLOCK_SIZE
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"block_size must be a positive integer, got {block_size!r}")
    folder = compiled_folder_of(model)
    if folder is not None:
        record = json.loads((folder / COMPILE_INFO_NAME).read_text(encoding="utf-8"))
        compiled_devices = int(record["num_device"])
        max_length = int(record["max_length"])
        num_lpu = int((device_map or {}).get("lpu", compiled_devices))
        if num_lpu != compiled_devices:
            raise ValueError(
                f"{folder} was compiled for {compiled_devices} LPU device(s) but "
                f"{num_lpu} were asked for (tensor_parallel_size or NUM_LPU_DEVICES); "
                f"serve it with {compiled_devices} or recompile it with num_device={num_lpu}"
            )
        if given is not None and given > max_length:
            raise ValueError(
                f"max_model_len={given} exceeds the max_length={max_length} that {folder} was "
                f"compiled for; ask for at most {max_length} or recompile with a larger max_length"
            )
        target = LPUTarget(
            model=str(folder),
            compiled=True,
            num_lpu=num_lpu,
            num_gpu=num_gpu,
            max_length=max_length,
            block_size=block_size,
            **options,
        )
        return target, min(max_model_len, max_length)
    max_length = given if given is not None else min(max_model_len, DEFAULT_MAX_LENGTH)
    target = LPUTarget(
        model=model,
        compiled=False,
        num_lpu=int((device_map or {}).get("lpu", 1)),
        num_gpu=num_gpu,
        max_length=max_length,
        block_size=block_size,
        **options,
    )
    return target, max_length
