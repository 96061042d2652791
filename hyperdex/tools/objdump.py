"""``hdex-objdump PATH``: a readable listing of compiled LPU programs.

PATH is a compiled model folder (both programs are listed, with HBM regions named from its
memory map and each instruction's estimated cycles on the folder's device preset) or a single
program file (``inst/prefill.bin``; cycles with ``--type-device``)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Optional

from .. import _core
from ..errors import HyperdexError
from ..presets import device_preset, load_preset


def annotate(program: Any, text: str, preset: Any, position: int = 0) -> str:
    """The listing with each instruction's estimated cycles and what bounds it (the cost
    model, docs/cost-model.md): a prefill run of the full chunk from position 0, or a decode
    run at ``position``."""
    decode = program.kind == _core.ProgramKind.Decode
    start, rows = (position, 1) if decode else (0, program.max_tokens)
    run = _core.cost.CostModel(program, preset).run(start, rows)
    cycle_ns = 1000.0 / preset.clock_mhz
    costs = {c.index: c for c in run.instructions}
    lines = text.splitlines()
    what = f"decode at position {start}" if decode else f"prefill of {rows} token rows"
    out = [
        lines[0],
        f"; estimated on {preset.name} (docs/cost-model.md), {what}: "
        f"{run.time_ns / 1e3:.2f} us, {run.time_ns / cycle_ns:.0f} cycles, "
        f"{run.bandwidth_gbps():.1f} GB/s of HBM",
    ]
    for i, line in enumerate(lines[1:]):
        c = costs.get(i)
        if c is None:
            out.append(line)
            continue
        cycles = c.duration_ns / cycle_ns
        out.append(f"{line}  ; {cycles:.0f} cycles, {c.bound}")
    return "\n".join(out) + "\n"


def listing(
    path: Path, type_device: Optional[str] = None, position: int = 0, cycles: bool = True
) -> str:
    """Both programs of a compiled folder (HBM regions named, estimated cycles on the folder's
    preset), or one program file (cycles when ``type_device`` names a preset)."""
    if path.is_dir():
        mm = path / "config" / "memory_map.json"
        names = {}
        preset = None
        if mm.is_file():
            memory_map = json.loads(mm.read_text())
            names = {int(r["offset"]): r["name"] for r in memory_map["regions"]}
            preset_data = (
                load_preset(type_device) if type_device else memory_map.get("device_preset")
            )
            if preset_data and cycles:
                preset = device_preset(preset_data)
        parts = []
        for name in ("prefill.bin", "decode.bin"):
            program = _core.load_program(str(path / "inst" / name))
            text = program.disassemble(names)
            if preset is not None:
                text = annotate(program, text, preset, position)
            parts.append(f"; {path / 'inst' / name}\n" + text)
        return "\n".join(parts)
    program = _core.load_program(str(path))
    text = program.disassemble()
    if type_device and cycles:
        text = annotate(program, text, device_preset(load_preset(type_device)), position)
    return text


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="hdex-objdump", description=__doc__.splitlines()[0])
    parser.add_argument("path", type=Path, help="a compiled model folder or a program file")
    parser.add_argument(
        "--type-device",
        help="preset for the estimated cycles (default: the compiled folder's; a lone program "
        "file shows cycles only with this)",
    )
    parser.add_argument(
        "--position", type=int, default=0, help="sequence position of the decode run priced"
    )
    parser.add_argument("--no-cycles", action="store_true", help="the listing alone")
    args = parser.parse_args(argv)
    try:
        sys.stdout.write(listing(args.path, args.type_device, args.position, not args.no_cycles))
    except (HyperdexError, OSError) as e:
        print(f"hdex-objdump: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
