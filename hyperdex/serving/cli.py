"""hdex-serve MODEL: serve a compiled model over an OpenAI-compatible HTTP API.

MODEL is a compiled folder, or the model id / Hugging Face folder given to ``compile()`` (it
is compiled first if it was not). The device count comes from ``--num-lpu`` /
``NUM_LPU_DEVICES`` (default: the compile's); ``--num-gpu`` / ``NUM_GPU_DEVICES`` >= 1
prefills in PyTorch (hybrid mode). The API key comes from ``--api-key`` or
``HDEX_API_KEY``; without one the server is open, so it listens on 127.0.0.1 by default.

It needs the ``serve`` extra (starlette, uvicorn, pydantic; ``pip install 'hyperdex[serve]'``),
and hybrid mode the ``torch`` extra too; what is missing is named before any work.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Optional

from .. import __version__
from ..errors import HyperdexError
from ..extras import MissingExtraError, require_extra

EXIT_CODES = """exit codes:
  0    the server stopped normally (Ctrl-C or SIGTERM)
  1    the model could not be loaded (the message says why)
  2    bad command line"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="hdex-serve",
        description=__doc__.splitlines()[0],
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", help="compiled folder, Hugging Face id or local HF folder")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (8000)")
    p.add_argument("--served-model-name", help="the model's name in the API (default: MODEL)")
    p.add_argument("--api-key", default=os.environ.get("HDEX_API_KEY"), help="require this key")
    p.add_argument("--prefix", help="compile prefix (as given to compile())")
    p.add_argument("--max-length", type=int, help="max_length when MODEL must be compiled")
    p.add_argument("--backend", choices=["emu", "xrt"], help="device backend (default: auto)")
    p.add_argument("--num-lpu", type=int, help="LPU devices (NUM_LPU_DEVICES)")
    p.add_argument("--num-gpu", type=int, help="GPUs for hybrid prefill (NUM_GPU_DEVICES)")
    p.add_argument("--num-threads", type=int, default=0, help="emulator threads (0: all)")
    p.add_argument(
        "--no-enable-prefix-caching",
        dest="prefix_caching",
        action="store_false",
        help="turn prefix caching off",
    )
    p.add_argument("--block-size", type=int, default=32, help="prefix cache block (32 tokens)")
    p.add_argument(
        "--prefix-cache-gib", type=float, default=1.0, help="host pool of KV blocks (1 GiB)"
    )
    p.add_argument("--max-queue", type=int, default=256, help="requests waiting at most (256)")
    p.add_argument(
        "--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"]
    )
    p.add_argument("--version", action="version", version=f"hdex-serve {__version__}")
    return p


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    if args.max_queue < 1 or args.port < 0 or args.prefix_cache_gib < 0:
        print("hdex-serve: --max-queue must be >= 1, --port and sizes >= 0", file=sys.stderr)
        return 2
    from . import device_map_from_env, load_for_serving

    try:  # before any work (a compile, a model load): name the extra that is missing
        device_map = device_map_from_env(args.num_lpu, args.num_gpu)
        require_extra("hdex-serve", "serve")
        if device_map and device_map.get("gpu"):
            require_extra("hdex-serve", "torch", why=" for hybrid mode (NUM_GPU_DEVICES)")
    except MissingExtraError as e:
        print(e, file=sys.stderr)
        return 1
    except HyperdexError as e:
        print(f"hdex-serve: {e}", file=sys.stderr)
        return 1
    import uvicorn

    from .openai_server import create_app

    try:
        model, tokenizer = load_for_serving(
            args.model,
            prefix=args.prefix,
            device_map=device_map,
            max_length=args.max_length,
            backend=args.backend,
            num_threads=args.num_threads,
            enable_prefix_caching=args.prefix_caching,
            prefix_cache_block_size=args.block_size,
            prefix_cache_bytes=int(args.prefix_cache_gib * (1 << 30)),
        )
    except (HyperdexError, OSError, ValueError, TypeError) as e:
        print(f"hdex-serve: {e}", file=sys.stderr)
        return 1
    name = args.served_model_name or str(args.model)
    app = create_app(model, tokenizer, name, api_key=args.api_key, max_queue=args.max_queue)
    print(
        f"hdex-serve: serving {name!r} on {model.device}; http://{args.host}:{args.port}/v1"
        + (" (API key required)" if args.api_key else ""),
        flush=True,
    )
    # on SIGTERM, streams still open after 10 s are cancelled (their generations stop)
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        timeout_graceful_shutdown=10,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
