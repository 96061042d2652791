"""Boards through the Xilinx Runtime (XRT), from Python: the environment XRT needs, which
xclbin and kernel a compiled model runs with, whether a board is there, and a stub xclbin for
XRT's no-op device. The backend itself is C++ (``csrc/xrt/``); docs/xrt.md says what runs
where."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Optional, Union

from .errors import ConfigError, DeviceError

log = logging.getLogger("hyperdex")

DEFAULT_KERNEL = "lpu"
DEFAULT_TIMEOUT_S = 60.0  # a run of a board; generous, so only a hung kernel reaches it

PathLike = Union[str, "os.PathLike[str]"]


def has_xrt() -> bool:
    """Whether this build of hyperdex has the XRT backend."""
    from . import _core

    return bool(_core.HAS_XRT)


def missing_message() -> str:
    from . import _core

    return str(_core.xrt_missing_message())


def _cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "hyperdex"


def ensure_xilinx_xrt() -> Optional[str]:
    """Sets ``XILINX_XRT`` when it is unset, and returns the value in effect (None: XRT is
    not usable here).

    XRT loads its driver library as ``$XILINX_XRT/lib/libxrt_core.so.2`` (``libxrt_noop.so.2``
    with ``XCL_EMULATION_MODE=noop``) and stops with "XILINX_XRT not set" otherwise. AMD's
    packages live under /opt/xilinx/xrt; Debian's put the libraries in the multiarch folder,
    so there a folder whose ``lib`` links to it stands in for the root."""
    current = os.environ.get("XILINX_XRT")
    if current:
        return current
    if not has_xrt():
        return None
    from . import _core

    libdir = str(_core.xrt_library_dir())
    if not libdir:
        return None
    lib = Path(libdir)
    if lib.name == "lib" and (lib.parent / "include").is_dir():
        root = lib.parent  # an install root of its own (/opt/xilinx/xrt)
    else:
        root = _cache_dir() / "xrt-root"
        link = root / "lib"
        if not (link.is_symlink() and os.readlink(link) == libdir):
            root.mkdir(parents=True, exist_ok=True)
            tmp = root / f".lib-{os.getpid()}"
            if tmp.is_symlink():
                tmp.unlink()
            os.symlink(libdir, tmp)
            os.replace(tmp, link)  # atomic: another process may be doing the same
    os.environ["XILINX_XRT"] = str(root)
    log.debug("hyperdex: XILINX_XRT=%s (XRT's libraries are in %s)", root, libdir)
    return str(root)


def board_options(preset: dict[str, Any]) -> tuple[str, str, int]:
    """(xclbin, kernel, device index) for a compiled model's preset: ``HYPERDEX_XCLBIN`` or the
    preset's ``xclbin``; ``HYPERDEX_XRT_KERNEL`` or the preset's ``xrt_kernel`` or "lpu";
    ``HYPERDEX_XRT_DEVICE`` or 0. The xclbin may be empty (none configured)."""
    xclbin = os.environ.get("HYPERDEX_XCLBIN") or str(preset.get("xclbin") or "")
    if xclbin:
        xclbin = str(Path(xclbin).expanduser())
    kernel = os.environ.get("HYPERDEX_XRT_KERNEL") or str(
        preset.get("xrt_kernel") or DEFAULT_KERNEL
    )
    index_text = os.environ.get("HYPERDEX_XRT_DEVICE", "0")
    try:
        index = int(index_text)
    except ValueError:
        index = -1
    if index < 0:
        raise ConfigError(f"HYPERDEX_XRT_DEVICE must be a board index >= 0, got {index_text!r}")
    return xclbin, kernel, index


def list_boards() -> list[dict[str, Any]]:
    """The boards XRT enumerates, each {index, name, bdf, offline, memory, error}. Raises
    DeviceError when XRT cannot be used (this build has no XRT backend, XILINX_XRT unknown)."""
    from . import _core

    if not has_xrt():
        raise DeviceError(missing_message())
    if ensure_xilinx_xrt() is None:
        raise DeviceError("XRT's libraries were not found; set XILINX_XRT to the XRT install root")
    return list(_core.xrt_boards())


def choose_backend(preset: dict[str, Any]) -> tuple[str, str]:
    """The backend ``from_pretrained(backend=None)`` takes, and why in words: a board when
    XRT sees one and an xclbin is configured, else the emulator."""
    if not has_xrt():
        return "emu", "this build has no XRT board backend; running on the emulator"
    try:
        boards = list_boards()
    except DeviceError as e:
        return "emu", f"XRT cannot list boards ({e}); running on the emulator"
    if not boards:
        return "emu", "no LPU board found through XRT; running on the emulator"
    xclbin, _, index = board_options(preset)
    if not xclbin:
        return "emu", (
            f"{len(boards)} board(s) found through XRT, but no xclbin is configured (set "
            "HYPERDEX_XCLBIN); running on the emulator"
        )
    name = next((b["name"] for b in boards if b["index"] == index), "") or f"board {index}"
    return "xrt", f"taking the LPU board {name} through XRT"


def write_stub_xclbin(
    path: PathLike, preset: Union[str, dict[str, Any]] = "u55c", kernel: str = DEFAULT_KERNEL
) -> Path:
    """Writes an xclbin holding the LPU kernel's interface for ``preset`` (a name, a preset
    file, or a preset dict) and no bitstream: what XRT's no-op device needs. No board can run
    it."""
    from . import _core
    from .presets import device_preset, load_preset

    data = load_preset(preset) if isinstance(preset, (str, Path)) else preset
    out = Path(path)
    _core.write_stub_xclbin(str(out), device_preset(data), kernel)
    return out
