"""A compiled folder: where it is, and its JSON records (compile record, memory map)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional, Union

from .. import __version__
from ..errors import FormatError
from ..paths import compiled_dir

PathLike = Union[str, Path]

COMPILE_INFO_NAME = "compile.json"  # written last: a folder without it is unfinished
MEMORY_MAP_NAME = "memory_map.json"  # under config/
MEMORY_MAP_FORMAT = "hyperdex-memory-map"
# Any of these marks a folder holding a Hugging Face tokenizer (ckpt/, or an HF folder).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")


def resolve_compiled(model_id: PathLike, prefix: Optional[PathLike] = None) -> Path:
    """The compiled folder for a path (the folder compile() returned) or for the model id and
    prefix given to compile()."""
    path = Path(model_id).expanduser()
    if (path / "config" / MEMORY_MAP_NAME).is_file() or (path / COMPILE_INFO_NAME).is_file():
        folder = path
    else:
        folder = compiled_dir(model_id, prefix)
    if not (folder / COMPILE_INFO_NAME).is_file():
        if folder == path:  # given a compiled folder: we cannot know the source's name
            hint = "compile the source model again (AutoCompiler().compile(model_id=...))"
        else:
            hint = (
                f"compile it first: AutoCompiler().compile(model_id={str(model_id)!r}"
                + (f", prefix={str(prefix)!r}" if prefix is not None else "")
                + ")"
            )
        if folder.is_dir():
            raise FormatError(
                f"{folder} is not a finished compile ({COMPILE_INFO_NAME} is missing: the "
                f"compile was interrupted or failed); {hint}"
            )
        raise FormatError(f"no compiled model at {folder}; {hint}")
    return folder


def read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise FormatError(f"{path} is missing; recompile the model") from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise FormatError(f"{path} ({what}) is corrupt: {e}; recompile the model") from e
    if not isinstance(data, dict):
        raise FormatError(f"{path} ({what}) is corrupt; recompile the model")
    return data


def read_memory_map(folder: Path) -> dict[str, Any]:
    from .. import _core

    path = folder / "config" / MEMORY_MAP_NAME
    mm = read_json(path, "memory map")
    if (
        mm.get("format") != MEMORY_MAP_FORMAT
        or mm.get("format_version") != _core.PLAN_FORMAT_VERSION
        or mm.get("isa_version") != _core.ISA_VERSION
    ):
        raise FormatError(
            f"{path} is memory-map format {mm.get('format_version')!r} / ISA "
            f"{mm.get('isa_version')!r}; this hyperdex ({__version__}) reads format "
            f"{_core.PLAN_FORMAT_VERSION} / ISA {_core.ISA_VERSION}. Recompile the model "
            "(AutoCompiler().compile(..., fast_compile=False))"
        )
    return mm


def kv_regions(memory_map: dict[str, Any]) -> list[dict[str, Any]]:
    """The KV cache regions of the memory map in plan order (per layer: K, then V)."""
    return [r for r in memory_map["regions"] if r.get("kind") == "KvCache"]
