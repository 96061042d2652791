#!/usr/bin/env python3
"""Type stubs of the C++ binding, hyperdex/_core/*.pyi, written by pybind11-stubgen.

  python scripts/stubs.py           rewrite the stubs from the built module (make stubs)
  python scripts/stubs.py --check   exit 1 when the committed stubs differ (tests/test_stubs.py)

Constants keep their type, not their value: HAS_XRT depends on the build.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STUBS = ROOT / "hyperdex" / "_core"
_CONSTANT = re.compile(r"^(\w+): (bool|int|str|float) = .*$", re.M)


def generate() -> dict[str, str]:
    """{relative path: text} of the stubs of the installed hyperdex._core."""
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pybind11_stubgen", "hyperdex._core", "-o", tmp, "--exit-code"],
            check=True,
            capture_output=True,
            text=True,
        )
        out = Path(tmp) / "hyperdex" / "_core"
        return {
            str(p.relative_to(out)): _CONSTANT.sub(r"\1: \2", p.read_text())
            for p in sorted(out.rglob("*.pyi"))
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="stubs.py", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare, do not write")
    args = parser.parse_args(argv)
    stubs = generate()
    if args.check:
        have = {str(p.relative_to(STUBS)): p.read_text() for p in sorted(STUBS.rglob("*.pyi"))}
        stale = sorted(n for n in stubs.keys() | have.keys() if stubs.get(n) != have.get(n))
        if stale:
            print(f"stubs.py: hyperdex/_core/ stubs are stale ({', '.join(stale)}): run make stubs")
            return 1
        return 0
    for name, text in stubs.items():
        (STUBS / name).parent.mkdir(parents=True, exist_ok=True)
        (STUBS / name).write_text(text)
    print(f"stubs.py: wrote {len(stubs)} stub files under {STUBS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
