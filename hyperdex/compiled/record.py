"""The converted model record: ``hyperdex_config.json`` (architecture, model dimensions,
quantization) beside ``hyperdex_model.bin`` (the tensors), as ``ckpt/`` of a compiled folder
holds them (docs/formats.md)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional, Union

from .. import __version__
from ..arch.record import ModelRecord
from ..errors import CheckpointError, ConfigError, FormatError
from ..formats import ModelFile
from .schema import Schema, check_fields, is_dict, is_dict_or_none, is_str

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
    try:
        config = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise FormatError(f"{cfg_path} is corrupt: {e}; run the conversion again") from e
    if not isinstance(config, dict):
        raise FormatError(f"{cfg_path} is corrupt (not a JSON object); run the conversion again")
    check_converted_config(config, cfg_path, "run the conversion again")
    return config, ModelFile.open(folder / HYPERDEX_MODEL_NAME, verify=verify)


def check_config_version(config: dict[str, Any], path: Path) -> None:
    version = config.get("format_version")
    if config.get("format") != CONFIG_FORMAT or version != CONFIG_FORMAT_VERSION:
        raise FormatError(
            f"{path} is format version {version!r}; this hyperdex ({__version__}) reads version "
            f"{CONFIG_FORMAT_VERSION}. Recompile the model with this version "
            "(AutoCompiler().compile(..., fast_compile=False))"
        )


# The fields of hyperdex_config.json that the compiler and the runtime read unconditionally.
_CONFIG_FIELDS: Schema = {
    "architecture": is_str,
    "family": is_str,
    "dtype": is_str,
    "quantization": is_dict_or_none,
    "tokens": is_dict,
    "model": is_dict,  # its fields: hyperdex.arch.record.ModelRecord checks them
}


def check_converted_config(
    config: dict[str, Any], path: Path, hint: str = "recompile the model"
) -> None:
    """hyperdex_config.json's format version, then the structure of the fields every reader
    needs: a FormatError names the file and the field (ending with ``hint``)."""
    check_config_version(config, path)
    check_fields(config, _CONFIG_FIELDS, path, hint)
    try:
        ModelRecord.from_dict(config["model"], str(path), prefix="model.")
    except ConfigError as e:
        raise FormatError(f"{e}; the file was edited or damaged: {hint}") from e


def scheme_name(recorded: Optional[dict[str, Any]]) -> Optional[str]:
    """The short name of a recorded scheme (``hyperdex_config.json``'s ``quantization``)."""
    if not recorded:
        return None
    if recorded.get("scheme"):
        return str(recorded["scheme"])
    base = f"w{recorded.get('bits')}a16"
    method = recorded.get("method", "gptq")
    return base if method in ("gptq", "gptq-import") else f"{method}-{base}"
