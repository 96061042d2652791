"""``hdex-compile``: compile a Hugging Face model for LPU devices from the command line.

Interactive on a terminal (prompts for what the flags did not give), scripted otherwise:
every prompt has a flag, and without a terminal a missing value is an error naming it.

Exit codes: 0 compiled; 1 the model or options were rejected (the message says why);
2 bad command line; 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Callable, Optional

from .. import __version__
from ..errors import HyperdexError

BANNER = (
    "*" * 70 + "\n"
    f"** hyperdex compiler {__version__}\n"
    "** Hugging Face checkpoints to LPU programs (Apache-2.0)\n" + "*" * 70
)


def _ask(prompt: str, parse: Callable[[str], object]) -> object:
    while True:
        answer = input(f"[Option\t] {prompt}: ").strip()
        try:
            return parse(answer)
        except ValueError as e:
            print(f"[Error\t] {e}; try again")


def _model_id(text: str) -> str:
    if not text:
        raise ValueError("a model id or folder is required")
    return text


def _device_count(text: str) -> int:
    n = int(text)
    if n < 1 or n & (n - 1):
        raise ValueError("the number of devices must be a power of two (1, 2, 4, 8)")
    return n


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="hdex-compile",
        description=__doc__.splitlines()[0],
        epilog="Exit codes: 0 ok, 1 rejected, 2 usage, 130 interrupted",
    )
    parser.add_argument("--prefix", help="where compiled models go (default ~/.cache/hyperdex/hub)")
    parser.add_argument("--model", help="Hugging Face id (org/name) or a local HF folder")
    parser.add_argument("--num-device", type=int, help="number of LPU devices (a power of two)")
    parser.add_argument("--max-length", type=int, help="longest sequence (prompt + output)")
    parser.add_argument("--type-device", default="u55c", help="device preset (u55c, vcu128, asic)")
    parser.add_argument("--fast-compile", action="store_true", help="redo only what is stale")
    parser.add_argument(
        "--low-memory-usage", action="store_true", help="delete the HF weights after conversion"
    )
    parser.add_argument("--token", help="Hugging Face token for private models")
    parser.add_argument("--quiet", action="store_true", help="only errors")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.ERROR if args.quiet else logging.INFO, format="[Info\t] %(message)s"
    )
    interactive = sys.stdin.isatty()
    if not args.quiet:
        print(BANNER)
    try:
        if args.model is None:
            if not interactive:
                parser.error("--model is required when stdin is not a terminal")
            args.model = _ask("Please enter the Hugging Face model id or a local folder", _model_id)
        if args.num_device is None:
            args.num_device = (
                _ask("Please enter the number of LPU devices", _device_count) if interactive else 1
            )
        from .compiler import AutoCompiler

        path = AutoCompiler().compile(
            model_id=args.model,
            num_device=args.num_device,
            max_length=args.max_length,
            low_memory_usage=args.low_memory_usage,
            fast_compile=args.fast_compile,
            token=args.token,
            type_device=args.type_device,
            prefix=args.prefix,
            progress=not args.quiet,
        )
    except KeyboardInterrupt:
        print("\n[Error\t] interrupted", file=sys.stderr)
        return 130
    except HyperdexError as e:
        print(f"[Error\t] {e}", file=sys.stderr)
        return 1
    print(f"[Info\t] Compiled model at {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
