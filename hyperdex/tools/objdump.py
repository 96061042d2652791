"""``hdex-objdump PATH``: a readable listing of compiled LPU programs.

PATH is a compiled model folder (both programs are listed, with HBM regions named from its
memory map) or a single program file (``inst/prefill.bin``)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional

from .. import _core
from ..errors import HyperdexError


def listing(path: Path) -> str:
    if path.is_dir():
        mm = path / "config" / "memory_map.json"
        names = {}
        if mm.is_file():
            names = {int(r["offset"]): r["name"] for r in json.loads(mm.read_text())["regions"]}
        parts = []
        for name in ("prefill.bin", "decode.bin"):
            program = _core.load_program(str(path / "inst" / name))
            parts.append(f"; {path / 'inst' / name}\n" + program.disassemble(names))
        return "\n".join(parts)
    return _core.load_program(str(path)).disassemble()


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="hdex-objdump", description=__doc__.splitlines()[0])
    parser.add_argument("path", type=Path, help="a compiled model folder or a program file")
    args = parser.parse_args(argv)
    try:
        sys.stdout.write(listing(args.path))
    except (HyperdexError, OSError) as e:
        print(f"hdex-objdump: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
