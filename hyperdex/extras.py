"""Optional dependencies: which pip extra of hyperdex brings which package, and the one check
that names the extra to install.

``pip install hyperdex`` (numpy, tqdm, transformers, safetensors) compiles, estimates,
disassembles and runs models on the emulator, with NumPy tensors in and out. The extras add:

* ``torch``: PyTorch tensors in and out, PyTorch ``.bin`` checkpoints, hybrid (GPU) prefill
* ``gguf``: GGUF checkpoints (gguf and torch)
* ``serve``: ``hdex-serve`` (starlette, uvicorn, pydantic, prometheus_client for ``/metrics``,
  llguidance for structured outputs and tool calls: needed by those requests only)
* ``explore``: ``hdex-explore`` (PyYAML for its inputs, matplotlib for its plots)
* ``ray``: ``hdex-serve --ray`` and ``hdex-explore --ray`` (``ray[serve]``; docs/scale-out.md)

A feature calls :func:`require_extra` before it does any work; a missing package is then one
line naming the extra (``hdex-explore needs matplotlib ...: pip install 'hyperdex[explore]'``)
instead of a traceback halfway through.
"""

from __future__ import annotations

import importlib.util
from typing import Optional, Sequence

from .errors import HyperdexError

# extra -> the top-level modules it provides (import names)
EXTRAS = {
    "torch": ("torch",),
    "gguf": ("gguf", "torch"),
    "serve": ("starlette", "uvicorn", "pydantic", "prometheus_client"),
    "explore": ("yaml", "matplotlib"),
    "ray": ("ray", "fastapi", "aiohttp"),  # ray[serve]; hdex-explore --ray needs ray alone
}

# import name -> the name pip knows it by, where the two differ
_PIP_NAMES = {"yaml": "PyYAML"}


class MissingExtraError(HyperdexError, ImportError):
    """A feature needs packages of an extra that is not installed. ``extra`` names it,
    ``missing`` lists the packages (pip names) that are absent."""

    def __init__(self, message: str, extra: str, missing: Sequence[str]) -> None:
        super().__init__(message)
        self.extra = extra
        self.missing = list(missing)


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a broken or half-removed install
        return False


def _join(names: Sequence[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def require_extra(
    who: str, extra: str, modules: Optional[Sequence[str]] = None, why: str = ""
) -> None:
    """Raises :class:`MissingExtraError` unless every module of ``modules`` (default: all of
    the extra's) can be imported. Only looks the modules up, imports none of them.

    ``who`` starts the message (``hdex-explore``, ``generate()``); ``why``, when given, follows
    the package names (``" for its plots (--no-plots skips them)"``)."""
    if extra not in EXTRAS:
        raise ValueError(f"unknown extra {extra!r}; known: {', '.join(EXTRAS)}")
    wanted = EXTRAS[extra] if modules is None else modules
    missing = [_PIP_NAMES.get(m, m) for m in wanted if not _installed(m)]
    if missing:
        raise MissingExtraError(
            f"{who} needs {_join(missing)}{why}: pip install 'hyperdex[{extra}]'", extra, missing
        )
