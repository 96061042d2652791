"""One compile at a time per compiled folder.

``compile()`` holds ``<folder>/.lock`` (an OS file lock through ``filelock``: the kernel drops
it when its process dies, however it dies) from its first write into the folder to its last.
The holder writes who it is into ``<folder>/.lock.holder.json`` (pid, host, since when, the
model). A second compile of the same folder logs once "waiting for the compile of <folder> by
process <pid> on <host> ..." and blocks until the first is done, then proceeds on the folder
the first one left (``fast_compile=True`` finds its work done; otherwise the work is redone).
With a ``timeout`` (seconds) it gives up with a :class:`CompileLockTimeout` instead.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any, Iterator, Optional

from filelock import FileLock, Timeout

from ..errors import HyperdexError
from ..formats.atomic import pid_alive, write_json_atomic

log = logging.getLogger("hyperdex")

LOCK_NAME = ".lock"
HOLDER_NAME = ".lock.holder.json"


class CompileLockTimeout(HyperdexError, TimeoutError):
    """Another process held a compiled folder's lock for longer than the caller would wait."""


def read_holder(folder: Path) -> Optional[dict[str, Any]]:
    """Who holds the folder's lock, as its side file says; None if unknown."""
    try:
        data = json.loads((folder / HOLDER_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    pid = data.get("pid")
    if data.get("host") == socket.gethostname() and isinstance(pid, int) and not pid_alive(pid):
        return None  # left by a compile that was killed: not the holder
    return data


def describe_holder(holder: Optional[dict[str, Any]]) -> str:
    if not holder:
        return "another process"
    text = f"process {holder.get('pid', '?')} on {holder.get('host', '?')}"
    if holder.get("since"):
        text += f" (since {holder['since']})"
    return text


@contextlib.contextmanager
def compile_lock(
    folder: Path, model_id: Any = None, timeout: Optional[float] = None
) -> Iterator[None]:
    """Holds ``folder``'s compile lock for the ``with`` block (see the module docstring)."""
    lock = FileLock(str(folder / LOCK_NAME))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        holder = read_holder(folder)
        log.warning(
            "waiting for the compile of %s by %s to finish ...", folder, describe_holder(holder)
        )
        try:
            lock.acquire(timeout=-1 if timeout is None else max(0.0, float(timeout)))
        except Timeout:
            raise CompileLockTimeout(
                f"{folder} is being compiled by {describe_holder(read_holder(folder) or holder)}"
                f"; gave up after waiting {timeout} s. Wait for that compile to finish, or stop "
                "it (a compile that is killed releases the lock at once), then compile again"
            ) from None
        log.info("%s is free: compiling", folder)
    me = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "since": time.strftime("%Y-%m-%d %H:%M:%S"),
        "model_id": None if model_id is None else str(model_id),
    }
    try:
        write_json_atomic(folder / HOLDER_NAME, me)
        yield
    finally:
        try:
            if read_holder(folder) == me:
                (folder / HOLDER_NAME).unlink(missing_ok=True)
        finally:
            lock.release()
