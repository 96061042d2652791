"""``hdex-explore``: seed 004's command line.

hdex-explore -hw tpuv4 -m gpt3                  # presets by name, outputs under ./outputs/
hdex-explore -hw my_chip.yaml -m config.json -s my_system.yaml
hdex-explore --list                             # the shipped presets
hdex-explore --validate                         # predictions vs published measurements
hdex-explore -hw tpuv4 -m gpt3 --ray HOST:PORT  # the points as tasks on a Ray cluster

It needs the ``explore`` extra (``pip install 'hyperdex[explore]'``): PyYAML for its inputs and
matplotlib for its plots (not with ``--no-plots``). What is missing is named before any work.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from typing import Optional

from ..errors import HyperdexError
from ..extras import MissingExtraError, require_extra


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="hdex-explore",
        description="Design-space explorer for LLM inference hardware: latency, throughput and "
        "TCO per design (GPUs/TPUs on a per-operator roofline, LPUs on the cost model)",
        epilog="Exit codes: 0 ok, 1 rejected input, 2 usage. docs/explorer.md",
    )
    parser.add_argument("-hw", "--hardware", help="hardware preset name or YAML file")
    parser.add_argument(
        "-m",
        "--model",
        action="append",
        help="model preset, model YAML or HF config.json (repeatable)",
    )
    parser.add_argument(
        "-s", "--system", help="system preset or YAML (default: the hardware's own, else 'default')"
    )
    parser.add_argument(
        "-o",
        "--outputs",
        default="outputs",
        help="output folder (default ./outputs; results go to OUTPUTS/<hw>/)",
    )
    parser.add_argument(
        "--no-plots", action="store_true", help="skip the PNG plots (then matplotlib is not needed)"
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    parser.add_argument(
        "--ray",
        nargs="?",
        const="local",
        metavar="ADDRESS",
        help="evaluate the points as Ray tasks on the cluster at ADDRESS (host:port, auto), or "
        "alone on a local Ray instance; same outputs (needs the ray extra; docs/scale-out.md)",
    )
    parser.add_argument("--list", action="store_true", help="list the shipped presets")
    parser.add_argument(
        "--validate",
        action="store_true",
        help="print predictions against published measurements (MAPE)",
    )
    args = parser.parse_args(argv)
    running = not (args.list or args.validate)
    if running and (not args.hardware or not args.model):
        parser.error("give -hw HARDWARE and -m MODEL (or --list / --validate)")
    plots = running and not args.no_plots
    try:  # before any work: a missing package must not stop a run halfway (CSVs, no plots)
        require_extra("hdex-explore", "explore", ["yaml", "matplotlib"] if plots else ["yaml"])
        if running and args.ray is not None:
            require_extra("hdex-explore --ray", "ray", ["ray"])
    except MissingExtraError as err:
        hint = " (or --no-plots: no plots, no matplotlib)" if err.missing == ["matplotlib"] else ""
        print(f"{err}{hint}", file=sys.stderr)
        return 1
    if args.list:
        from .inputs.loader import KINDS, available

        for kind in KINDS:
            print(f"{kind:<11} {', '.join(available(kind))}")
        return 0
    if args.validate:
        from .validation import table, validate

        print(table(validate()))
        return 0
    from .core import explore

    try:
        with contextlib.ExitStack() as stack:
            ray = None  # one Ray connection for every model
            if args.ray is not None:
                from .ray_runner import RayRunner

                ray = stack.enter_context(RayRunner(args.ray))
            for model in args.model:
                start = time.perf_counter()
                result = explore(
                    args.hardware,
                    model,
                    args.system,
                    out_dir=args.outputs,
                    plots=not args.no_plots,
                    progress=not args.quiet,
                    ray=ray,
                )
                print(result.summary())
                print(f"  ({time.perf_counter() - start:.1f} s)")
    except HyperdexError as err:
        print(f"hdex-explore: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
