"""hdex-serve MODEL: serve a compiled model over an OpenAI-compatible HTTP API.

MODEL is a compiled folder, or the model id / Hugging Face folder given to ``compile()`` (it
is compiled first if it was not). The device count comes from ``--num-lpu`` /
``NUM_LPU_DEVICES`` (default: the compile's); ``--num-gpu`` / ``NUM_GPU_DEVICES`` >= 1
prefills in PyTorch (hybrid mode). The API key comes from ``--api-key`` or
``HDEX_API_KEY``; without one the server is open, so it listens on 127.0.0.1 by default.

It needs the ``serve`` extra (starlette, uvicorn, pydantic, prometheus_client;
``pip install 'hyperdex[serve]'``), and hybrid mode the ``torch`` extra too; what is missing is
named before any work. Flags, the TLS files and the address are checked before the model loads
too. The server listens while the model loads: ``/health`` answers 503 until it is ready.

``--ray [ADDRESS] --replicas N`` serves the same API from N replicas on Ray Serve, each on its
own LPUs (the ``ray`` extra; hyperdex/serving/ray_serve.py, docs/scale-out.md).
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import re
import signal
import socket
import ssl
import sys
from typing import Any, Callable, Optional

from .. import __version__
from ..errors import HyperdexError
from ..extras import MissingExtraError, require_extra

EXIT_CODES = """exit codes:
  0    the server stopped normally (Ctrl-C or SIGTERM: requests in flight get 7 s to finish)
  1    the address could not be bound or the model could not be loaded (the message says why)
  2    bad command line (including unreadable TLS files)"""

GRACE_S = 10  # on SIGTERM, uvicorn kills the handlers still running after this
CANCEL_AFTER_S = 7  # so the server cancels their generations first, and they still answer


def _int_at_least(low: int, high: Optional[int] = None) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:  # also a number past Python's digit limit
            raise argparse.ArgumentTypeError(f"not an integer: {text[:40]!r}") from None
        if value < low or (high is not None and value > high):
            span = f"from {low} to {high}" if high is not None else f">= {low}"
            raise argparse.ArgumentTypeError(f"must be {span}, got {value}")
        return value

    return parse


def _size_gib(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text[:40]!r}") from None
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text[:40]!r}")
    return value


_UNITS = {
    "": 1,
    "k": 1 << 10,
    "kib": 1 << 10,
    "m": 1 << 20,
    "mib": 1 << 20,
    "g": 1 << 30,
    "gib": 1 << 30,
}


def _byte_size(text: str) -> int:
    """Bytes: a plain count or with a binary unit (``4MiB``, ``512k``)."""
    match = re.fullmatch(r"\s*(\d{1,15})\s*([a-zA-Z]*)\s*", text)
    unit = _UNITS.get(match.group(2).lower()) if match else None
    if match is None or unit is None or int(match.group(1)) * unit < 1:
        raise argparse.ArgumentTypeError(
            f"must be a size >= 1 byte such as 4194304, 4MiB or 512KiB, got {text[:40]!r}"
        )
    return int(match.group(1)) * unit


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="hdex-serve",
        description=__doc__.splitlines()[0],
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", help="compiled folder, Hugging Face id or local HF folder")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    p.add_argument("--port", type=_int_at_least(0, 65535), default=8000, help="port (8000)")
    p.add_argument("--served-model-name", help="the model's name in the API (default: MODEL)")
    p.add_argument("--api-key", default=os.environ.get("HDEX_API_KEY"), help="require this key")
    p.add_argument("--prefix", help="compile prefix (as given to compile())")
    p.add_argument(
        "--max-length", type=_int_at_least(1), help="max_length when MODEL must be compiled"
    )
    p.add_argument("--backend", choices=["emu", "xrt"], help="device backend (default: auto)")
    p.add_argument("--num-lpu", type=_int_at_least(1), help="LPU devices (NUM_LPU_DEVICES)")
    p.add_argument(
        "--num-gpu", type=_int_at_least(0), help="GPUs for hybrid prefill (NUM_GPU_DEVICES)"
    )
    p.add_argument(
        "--num-threads", type=_int_at_least(0), default=0, help="emulator threads (0: all)"
    )
    p.add_argument(
        "--no-enable-prefix-caching",
        dest="prefix_caching",
        action="store_false",
        help="turn prefix caching off",
    )
    p.add_argument(
        "--block-size", type=_int_at_least(1), default=32, help="prefix cache block (32 tokens)"
    )
    p.add_argument(
        "--prefix-cache-gib", type=_size_gib, default=1.0, help="host pool of KV blocks (1 GiB)"
    )
    p.add_argument(
        "--max-queue", type=_int_at_least(1), default=256, help="requests waiting at most (256)"
    )
    p.add_argument(
        "--max-request-bytes",
        type=_byte_size,
        default=4 << 20,
        help="larger request bodies get 413 (4MiB; units k/KiB, M/MiB, G/GiB)",
    )
    p.add_argument("--ssl-keyfile", help="TLS private key (PEM); serve HTTPS with --ssl-certfile")
    p.add_argument("--ssl-certfile", help="TLS certificate chain (PEM)")
    p.add_argument(
        "--ssl-keyfile-password",
        default=os.environ.get("HDEX_SSL_KEYFILE_PASSWORD"),
        help="password of an encrypted --ssl-keyfile (HDEX_SSL_KEYFILE_PASSWORD)",
    )
    p.add_argument(
        "--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"]
    )
    p.add_argument("--version", action="version", version=f"hdex-serve {__version__}")
    # -- scale-out on Ray Serve (docs/scale-out.md): the same API from N replicas --
    p.add_argument(
        "--ray",
        nargs="?",
        const="local",
        metavar="ADDRESS",
        help="serve from replicas on Ray Serve: the cluster at ADDRESS (host:port, auto), "
        "or alone a local Ray instance; put it after MODEL (needs the ray extra)",
    )
    p.add_argument(
        "--replicas", type=_int_at_least(1), help="with --ray: replicas, each on its own LPUs (1)"
    )
    return p


def _check_tls(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if bool(args.ssl_keyfile) != bool(args.ssl_certfile):
        parser.error("--ssl-keyfile and --ssl-certfile go together")
    if not args.ssl_certfile:
        return

    def no_password() -> str:  # never OpenSSL's prompt on the terminal
        raise ValueError("the key file is encrypted; pass --ssl-keyfile-password")

    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(
            args.ssl_certfile, args.ssl_keyfile, args.ssl_keyfile_password or no_password
        )
    except (OSError, ssl.SSLError, ValueError) as e:
        parser.error(f"cannot use --ssl-certfile/--ssl-keyfile: {e}")


def _bind(host: str, port: int) -> list[socket.socket]:
    """Sockets bound (not listening yet: connections are refused until the model is loaded)
    to every address of ``host``, as asyncio's create_server binds them; OSError if one fails."""
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((address[0], port, *address[2:]))
            port = port or sock.getsockname()[1]  # port 0: the others take the one it got
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def main(argv: Optional[list[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _check_tls(parser, args)
    if args.replicas is not None and args.ray is None:
        parser.error("--replicas needs --ray")
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    from . import device_map_from_env

    try:  # before any work (a compile, a model load): name the extra that is missing
        device_map = device_map_from_env(args.num_lpu, args.num_gpu)
        require_extra("hdex-serve", "serve")
        if device_map and device_map.get("gpu"):
            require_extra("hdex-serve", "torch", why=" for hybrid mode (NUM_GPU_DEVICES)")
        if args.ray is not None:
            require_extra("hdex-serve --ray", "ray")
    except MissingExtraError as e:
        print(e, file=sys.stderr)
        return 1
    except HyperdexError as e:
        print(f"hdex-serve: {e}", file=sys.stderr)
        return 1
    if args.ray is not None:  # replicas on Ray Serve: hyperdex/serving/ray_serve.py
        from .ray_serve import serve_on_ray

        return serve_on_ray(args, device_map)
    try:  # a busy port is found before the model loads, not minutes after
        sockets = _bind(args.host, args.port)
    except OSError as e:
        print(f"hdex-serve: cannot listen on {args.host}:{args.port}: {e}", file=sys.stderr)
        return 1
    port = sockets[0].getsockname()[1]
    try:
        return _load_and_serve(args, device_map, sockets, port)
    finally:
        for sock in sockets:
            sock.close()


def _load_and_serve(
    args: argparse.Namespace,
    device_map: Any,
    sockets: list[socket.socket],
    port: int,
) -> int:
    """Serves at once and loads the model on a thread meanwhile (``/health`` answers 503 until
    it is loaded); exit 1 if loading fails."""
    import uvicorn

    from . import load_for_serving
    from .openai_server import create_app

    name = args.served_model_name or str(args.model)
    scheme = "https" if args.ssl_certfile else "http"
    failed: list[BaseException] = []
    server: Optional[uvicorn.Server] = None

    def load() -> tuple[Any, Any]:
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
        print(
            f"hdex-serve: serving {name!r} on {model.device_description}; "
            f"{scheme}://{args.host}:{port}/v1" + (" (API key required)" if args.api_key else ""),
            flush=True,
        )
        return model, tokenizer

    def load_failed(e: BaseException) -> None:
        failed.append(e)
        if server is not None:
            server.should_exit = True  # uvicorn's main loop polls it

    app = create_app(
        None,
        None,
        name,
        api_key=args.api_key,
        max_queue=args.max_queue,
        max_request_bytes=args.max_request_bytes,
        loader=load,
        on_load_failed=load_failed,
    )
    print(f"hdex-serve: loading {str(args.model)!r}; /health answers 503 until then", flush=True)
    config = uvicorn.Config(
        app,
        log_level=args.log_level,
        timeout_graceful_shutdown=GRACE_S,
        ssl_keyfile=args.ssl_keyfile,
        ssl_certfile=args.ssl_certfile,
        ssl_keyfile_password=args.ssl_keyfile_password,
    )
    state = app.state.server

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:  # uvicorn's signal handler
            super().handle_exit(sig, frame)
            state.begin_shutdown(CANCEL_AFTER_S)

    server = Server(config)

    def stop(signum: int, frame: Any) -> None:
        server.should_exit = True

    # uvicorn drains on SIGINT/SIGTERM, then re-raises the signal to the handler it found
    # (the default one kills the process: exit -15); ours makes that a normal exit
    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        server.run(sockets=sockets)
    except OSError as e:  # listen() failed: another process took the port meanwhile
        print(f"hdex-serve: cannot listen on {args.host}:{port}: {e}", file=sys.stderr)
        return 1
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if failed:
        e = failed[0]
        if isinstance(e, (HyperdexError, OSError, ValueError, TypeError)):
            print(f"hdex-serve: {e}", file=sys.stderr)
        else:  # a bug: its traceback helps
            import traceback

            traceback.print_exception(type(e), e, e.__traceback__)
        return 1
    if not server.started:
        print("hdex-serve: the server failed to start (see the log above)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
