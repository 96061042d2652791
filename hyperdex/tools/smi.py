"""``hdex-smi``: the LPU devices this machine has. Boards found through XRT (with their memory
and state), and the emulator's device presets, which are always there. ``--json`` prints the
same as one JSON document for scripts."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Optional

from .. import __version__


def _board_memory_bytes(memory_json: str) -> Optional[int]:
    """Total size of the enabled banks in XRT's memory report (JSON whose layout varies
    between XRT versions, so any object with ``size_bytes`` counts)."""
    if not memory_json:
        return None
    try:
        data = json.loads(memory_json)
    except json.JSONDecodeError:
        return None
    total = 0
    found = False

    def walk(node: Any) -> None:
        nonlocal total, found
        if isinstance(node, dict):
            size = node.get("size_bytes")
            enabled = str(node.get("enabled", node.get("used", "true"))).lower() in ("true", "1")
            if size is not None and enabled:
                try:
                    total += int(str(size), 0)
                    found = True
                except ValueError:
                    pass
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(data)
    return total if found else None


def collect() -> dict[str, Any]:
    """Everything hdex-smi reports, as a dict (the ``--json`` document)."""
    from .. import _core
    from .. import xrt as xrt_env
    from ..errors import HyperdexError
    from ..presets import available_presets, load_preset

    xrt: dict[str, Any] = {
        "built": bool(_core.HAS_XRT),
        "version": str(_core.xrt_version()) or None,
        "library_dir": str(_core.xrt_library_dir()) or None,
        "xilinx_xrt": None,
        "xclbin": os.environ.get("HYPERDEX_XCLBIN") or None,
        "boards": [],
        "error": None,
    }
    if not xrt["built"]:
        xrt["error"] = xrt_env.missing_message()
    else:
        try:
            for b in xrt_env.list_boards():
                state = "offline" if b["offline"] else "ready"
                if b["error"]:
                    state = f"unreadable ({b['error']})"
                xrt["boards"].append(
                    {
                        "index": b["index"],
                        "name": b["name"],
                        "bdf": b["bdf"],
                        "memory_bytes": _board_memory_bytes(b["memory"]),
                        "state": state,
                    }
                )
        except HyperdexError as e:
            xrt["error"] = str(e)
        xrt["xilinx_xrt"] = os.environ.get("XILINX_XRT")
    presets = []
    for name in available_presets():
        try:
            p = load_preset(name)
        except HyperdexError as e:  # one bad file must not hide the rest
            presets.append({"name": name, "state": f"invalid ({e})"})
            continue
        presets.append(
            {
                "name": name,
                "description": p.get("description", ""),
                "hbm_bytes": int(p["hbm_channels"]) * int(p["hbm_channel_bytes"]),
                "hbm_channels": int(p["hbm_channels"]),
                "hbm_bandwidth_gbps": float(p["hbm_bandwidth_gbps"]),
                "clock_mhz": float(p["clock_mhz"]),
                "lmem_bytes": int(p["lmem_bytes"]),
                "state": "available (emulator)",
                "xclbin": p.get("xclbin"),
            }
        )
    return {"hyperdex": __version__, "xrt": xrt, "presets": presets}


def _gib(n: Optional[int]) -> str:
    return "?" if n is None else f"{n / 2**30:.1f} GiB"


def render(info: dict[str, Any]) -> str:
    xrt = info["xrt"]
    lines = [f"hyperdex {info['hyperdex']}: LPU devices", ""]
    if not xrt["built"]:
        lines += ["Boards (XRT): not available in this build", f"  {xrt['error']}"]
    else:
        where = f", libraries in {xrt['library_dir']}" if xrt["library_dir"] else ""
        lines.append(f"Boards (XRT {xrt['version'] or '?'}{where}):")
        if xrt["error"]:
            lines.append(f"  cannot list boards: {xrt['error']}")
        elif not xrt["boards"]:
            lines.append("  none found (xbutil examine shows what the driver sees)")
        for b in xrt["boards"]:
            lines.append(
                f"  [{b['index']}] {b['name'] or '?'}  {b['bdf'] or '?'}  "
                f"memory {_gib(b['memory_bytes'])}  {b['state']}"
            )
        lines.append(f"  xclbin: {xrt['xclbin'] or 'not set (HYPERDEX_XCLBIN)'}")
    lines += ["", "Emulator presets (backend='emu' runs any of them):"]
    width = max((len(p["name"]) for p in info["presets"]), default=4)
    for p in info["presets"]:
        if "hbm_bytes" not in p:
            lines.append(f"  {p['name']:<{width}}  {p['state']}")
            continue
        lines.append(
            f"  {p['name']:<{width}}  HBM {_gib(p['hbm_bytes'])} in {p['hbm_channels']} "
            f"pseudo-channels, {p['hbm_bandwidth_gbps']:g} GB/s, {p['clock_mhz']:g} MHz, "
            f"on-chip {_gib(p['lmem_bytes'])}  {p['state']}"
        )
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="hdex-smi",
        description="List LPU boards found through XRT and the emulator's device presets.",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    args = parser.parse_args(argv)
    info = collect()
    if args.json:
        json.dump(info, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(render(info))
    return 0


if __name__ == "__main__":
    sys.exit(main())
