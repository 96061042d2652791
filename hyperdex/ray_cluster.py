"""Joining a Ray cluster, for ``hdex-serve --ray`` and ``hdex-explore --ray`` (the ``ray``
extra; docs/scale-out.md).

An address is ``host:port`` (what ``ray start --head`` prints), ``auto`` (the cluster that
``ray start`` made on this machine, or ``RAY_ADDRESS``) or ``local`` (a Ray instance of this
process's own, stopped when it ends). An address that does not answer is an error naming it
within seconds: Ray itself retries for minutes.

LPU boards are the custom resource ``lpu``: ``ray start --resources "$(python -m
hyperdex.ray_cluster)"`` gives a node the boards XRT sees there (``--lpus N`` says how many).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import socket
import sys
import threading
from typing import Any, Iterator, Optional

from .errors import HyperdexError

LPU = "lpu"  # the Ray resource an LPU board is
CONNECT_TIMEOUT_S = 3.0  # TCP: does anything listen at the address?
INIT_TIMEOUT_S = 60.0  # ray.init once the port answers


class RayClusterError(HyperdexError, ConnectionError):
    """No Ray cluster answers at the address, or it lacks what the work needs."""


def detect_lpus() -> int:
    """The LPU boards this machine has, through the device interface (XRT); 0 without any
    (the emulator needs no board: give the count you want it to stand for)."""
    from . import xrt

    if not xrt.has_xrt():
        return 0
    try:
        boards = xrt.list_boards()
    except HyperdexError:
        return 0
    return sum(1 for b in boards if not b["offline"] and not b["error"])


def _host_port(address: str) -> Optional[tuple[str, int]]:
    """(host, port) of a ``host:port`` or ``ray://host:port`` address; None for the words
    Ray resolves itself (``auto``)."""
    text = address.split("://", 1)[1] if "://" in address else address
    host, sep, port = text.rpartition(":")
    if not sep:
        return None
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise RayClusterError(f"the Ray address {address!r} has no valid port (host:port)")
    return host.strip("[]") or "127.0.0.1", int(port)


def check_address(address: str, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """Raises :class:`RayClusterError` unless something accepts TCP connections at the
    address (Ray's own client would retry for minutes)."""
    hp = _host_port(address)
    if hp is None:
        return
    try:
        with socket.create_connection(hp, timeout=timeout_s):
            pass
    except OSError as e:
        why = "timed out" if isinstance(e, socket.timeout) else (e.strerror or str(e))
        raise RayClusterError(
            f"no Ray cluster answers at {address} ({why}); start one with `ray start --head` "
            "and pass the address it prints (host:port), or --ray alone for a local one"
        ) from None


def connect(
    address: Optional[str],
    resources: Optional[dict[str, float]] = None,
    num_cpus: Optional[int] = None,
    timeout_s: float = INIT_TIMEOUT_S,
) -> bool:
    """Connects this process to Ray; True when it started a local instance (the caller stops
    it with ``ray.shutdown()``). ``address`` None or ``"local"`` starts one with
    ``resources`` and ``num_cpus``; a process already connected stays as it is."""
    import ray

    if ray.is_initialized():
        return False
    local = address in (None, "local")
    if not local:
        assert address is not None
        check_address(address)  # before Ray's client, which retries for minutes
    # the workers' logs stay in Ray's log files (ray logs): this terminal gets hyperdex's lines
    kwargs: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": False}
    if local:  # in this thread: a local start from another one never reaches its own GCS
        try:
            ray.init(
                address="local", resources=resources, num_cpus=num_cpus, include_dashboard=False,
                **kwargs,
            )  # fmt: skip
        except Exception as e:
            raise RayClusterError(f"cannot start a local Ray instance: {e}") from e
        return True
    failed: list[BaseException] = []

    def init() -> None:
        try:
            ray.init(address=address, **kwargs)
        except BaseException as e:  # reported below, in the caller's thread
            failed.append(e)

    # Ray waits for minutes on a port that answers but is no Ray cluster: bound it
    thread = threading.Thread(target=init, name="hyperdex-ray-init", daemon=True)
    thread.start()
    thread.join(timeout_s)
    where = f"the Ray cluster at {address}"
    if thread.is_alive():
        raise RayClusterError(
            f"{where} did not answer within {timeout_s:g} s (a cluster with token "
            "authentication needs RAY_AUTH_MODE=token and its token here: docs/scale-out.md)"
        )
    if failed:
        raise RayClusterError(f"cannot connect to {where}: {failed[0]}") from failed[0]
    return False


@contextlib.contextmanager
def session(
    address: Optional[str],
    resources: Optional[dict[str, float]] = None,
    num_cpus: Optional[int] = None,
) -> Iterator[bool]:
    """:func:`connect` for the duration of a ``with`` block; a local instance it started is
    stopped at the end. Yields whether it started one."""
    started = connect(address, resources, num_cpus)
    try:
        yield started
    finally:
        if started:
            import ray

            ray.shutdown()


def main(argv: Optional[list[str]] = None) -> int:
    """Prints this node's resources for ``ray start --resources``."""
    p = argparse.ArgumentParser(
        prog="python -m hyperdex.ray_cluster",
        description="This node's LPU boards as Ray resources, for ray start --resources",
    )
    p.add_argument("--lpus", type=int, help="the count to give (default: the boards XRT sees)")
    args = p.parse_args(argv)
    n = detect_lpus() if args.lpus is None else args.lpus
    if n < 0:
        p.error(f"--lpus must be >= 0, got {n}")
    print(json.dumps({LPU: n}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
