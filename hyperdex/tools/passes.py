"""The switchable passes of phases 3-4 (map and instgen): what ``compile(passes=...)``,
``estimate(passes=...)`` and ``hdex-estimate --no-PASS`` take.

Every pass keeps outputs bit-identical (the ISA rounds after every epilogue stage, so a
fused instruction equals the unfused sequence; a PREFETCH moves bytes, not values); each one
only changes how long the device takes. docs/cost-model.md says what each buys and
docs/benchmarks.md has the measured table.
"""

from __future__ import annotations

import difflib
from typing import Any, Mapping, Optional, Union

from .. import _core
from ..errors import ConfigError

# name -> what it does (the order of docs/benchmarks.md's table)
PASSES = {
    "fuse_epilogue": "bias, activation and residual in the epilogue of the MATMUL making them",
    "fuse_qkv": "Q, K and V as one weight stream (one MATMUL)",
    "fuse_gate_up": "gate and up projections as one weight stream with the GLU epilogue",
    "reorder": "layer reordering: each weight stream starts (PREFETCH) during the vector work",
    "fuse_argmax": "the argmax of the logits in the LM head's epilogue",
    "chunk_ring": "all-reduces in chunks that overlap the MATMUL feeding them (several devices)",
}

PassesArg = Union[None, str, Mapping[str, bool]]


def pass_options(passes: PassesArg = None) -> dict[str, bool]:
    """Every pass with its setting. ``None`` or ``"all"``: all on; ``"none"``: all off; a
    mapping ``{"reorder": False, ...}`` turns the named ones on or off (the rest stay on)."""
    if passes is None or passes == "all":
        return {name: True for name in PASSES}
    if passes == "none":
        return {name: False for name in PASSES}
    if isinstance(passes, _core.PassOptions):
        return {name: bool(getattr(passes, name)) for name in PASSES}
    if not isinstance(passes, Mapping):
        raise ConfigError(
            f"passes must be None, 'all', 'none' or a dict like {{'reorder': False}}, "
            f"got {passes!r}"
        )
    out = {name: True for name in PASSES}
    for name, value in passes.items():
        if name not in PASSES:
            near = difflib.get_close_matches(str(name), PASSES, n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise ConfigError(f"unknown pass {name!r}{hint}; the passes are {', '.join(PASSES)}")
        if not isinstance(value, bool):
            raise ConfigError(f"pass {name!r} must be True or False, got {value!r}")
        out[name] = value
    return out


def core_passes(passes: PassesArg = None) -> Any:
    """The C++ core's PassOptions for these settings."""
    options = _core.PassOptions()
    for name, value in pass_options(passes).items():
        setattr(options, name, value)
    return options


def describe(passes: Optional[Mapping[str, bool]]) -> str:
    """'all passes on' or 'without reorder, fuse_qkv' (for tables and logs)."""
    settings = pass_options(passes)
    off = [name for name, on in settings.items() if not on]
    if not off:
        return "all passes on"
    if len(off) == len(settings):
        return "all passes off"
    return "without " + ", ".join(off)
