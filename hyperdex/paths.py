"""Where compiled models live: ``<prefix>/<org>/<model>/`` for a Hub id, and
``<prefix>/local/<folder name>-<hash>/`` for a local folder (the hash of its absolute path
keeps two folders of the same name apart). Compiler and runtime share this mapping, so
``from_pretrained(model_id, prefix=...)`` finds what ``compile(model_id, prefix=...)`` made."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Optional, Union

from .errors import ConfigError

PathLike = Union[str, "os.PathLike[str]"]
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


def default_prefix() -> Path:
    """``$HYPERDEX_HOME`` or ``~/.cache/hyperdex/hub``."""
    return Path(os.environ.get("HYPERDEX_HOME", "~/.cache/hyperdex/hub")).expanduser()


def is_local_model(model_id: PathLike) -> bool:
    """Whether ``model_id`` names an existing folder (a name no file system can hold, too
    long or with a NUL, or ``~user`` of no user, names none)."""
    try:
        return Path(model_id).expanduser().is_dir()
    except (OSError, RuntimeError, ValueError):
        return False


def compiled_dir(
    model_id: PathLike, prefix: Optional[PathLike] = None, variant: Optional[str] = None
) -> Path:
    """Where ``compile()`` puts ``model_id``: ``<prefix>/<org>/<name>``, or
    ``<prefix>/local/<folder>-<hash>`` for a local folder; a ``variant`` (a quantization
    scheme such as ``w4a16``) is appended as ``-<variant>``, so each scheme of a model keeps a
    folder of its own."""
    root = Path(prefix).expanduser() if prefix is not None else default_prefix()
    suffix = f"-{variant}" if variant else ""
    if is_local_model(model_id):
        src = Path(model_id).expanduser().resolve()
        digest = hashlib.sha256(str(src).encode()).hexdigest()[:8]
        return root / "local" / f"{src.name}-{digest}{suffix}"
    text = str(model_id)
    if not _HUB_ID.match(text) or ".." in text:
        raise ConfigError(
            f"model_id {text!r} is neither an existing local folder nor a Hugging Face id of the "
            "form 'org/name'"
        )
    return root / (text + suffix)
