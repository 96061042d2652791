"""The converted model record: ``hyperdex_config.json`` (architecture, model dimensions,
quantization) beside ``hyperdex_model.bin`` (the tensors), as ``ckpt/`` of a compiled folder
holds them (docs/formats.md)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional, Union

from .. import __version__
from ..errors import CheckpointError, FormatError
from ..formats import ModelFile

PathLike = Union[str, Path]

HYPERDEX_CONFIG_NAME = "hyperdex_config.json"
HYPERDEX_MODEL_NAME = "hyperdex_model.bin"
CONFIG_FORMAT = "hyperdex-config"
CONFIG_FORMAT_VERSION = 1


def load_converted(folder: PathLike, verify: bool = True) -> tuple[dict[str, Any], ModelFile]:
    """Opens a converted checkpoint: (hyperdex_config.json content, the model file)."""
    folder = Path(folder)
    cfg_path = folder / HYPERDEX_CONFIG_NAME
    if not cfg_path.is_file():
        raise CheckpointError(f"{folder} has no {HYPERDEX_CONFIG_NAME}; run the conversion first")
    config = json.loads(cfg_path.read_text(encoding="utf-8"))
    check_config_version(config, cfg_path)
    return config, ModelFile.open(folder / HYPERDEX_MODEL_NAME, verify=verify)


def check_config_version(config: dict[str, Any], path: Path) -> None:
    version = config.get("format_version")
    if config.get("format") != CONFIG_FORMAT or version != CONFIG_FORMAT_VERSION:
        raise FormatError(
            f"{path} is format version {version!r}; this hyperdex ({__version__}) reads version "
            f"{CONFIG_FORMAT_VERSION}. Recompile the model with this version "
            "(AutoCompiler().compile(..., fast_compile=False))"
        )


def scheme_name(recorded: Optional[dict[str, Any]]) -> Optional[str]:
    """The short name of a recorded scheme (``hyperdex_config.json``'s ``quantization``)."""
    if not recorded:
        return None
    if recorded.get("scheme"):
        return str(recorded["scheme"])
    base = f"w{recorded.get('bits')}a16"
    method = recorded.get("method", "gptq")
    return base if method in ("gptq", "gptq-import") else f"{method}-{base}"
