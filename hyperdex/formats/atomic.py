"""Files written under a temporary name and renamed into place, and the clean-up of the
temporary files a killed process leaves.

A temporary file is named ``<name>.tmp.<pid>-<random>`` beside its destination: unique per
process (two writers never share one), and it says who wrote it, so a later run can tell a
leftover of a dead process from the file a live one is writing. The C++ core's atomic writes
(``csrc/common/file_io.cpp``) use ``<name>.tmp.<pid>``, which the same pattern matches.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import shutil
import zlib
from pathlib import Path
from typing import Any, Iterator, Optional

log = logging.getLogger("hyperdex")

# <name>.tmp.<pid>[-<random>]: the names temp_path() and the C++ core's AtomicFile give.
_TEMP = re.compile(r"\.tmp\.(?P<pid>\d+)(?:-[0-9a-f]+)?$")
# Names of hyperdex versions before the pid was part of every name (see stale_temps()).
_LEGACY_TEMP = re.compile(r"(\.tmp-[0-9a-f]{12}|\.tmp|\.partial)$")


def temp_path(path: Path) -> Path:
    """A temporary name for ``path``, in its folder (so that the rename is atomic)."""
    return path.with_name(f"{path.name}.tmp.{os.getpid()}-{secrets.token_hex(4)}")


def write_text_atomic(path: Path, text: str) -> None:
    """Writes ``text`` to ``path`` through a temporary file: ``path`` holds either the old
    content or the new one, never a part."""
    tmp = temp_path(path)
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2) + "\n")


def file_crc32(path: Path) -> tuple[int, int]:
    """(size in bytes, CRC-32 as zlib.crc32) of a file: the checksum every hyperdex file uses
    (the tensors of hyperdex_model.bin, the parameter files, the programs)."""
    crc = 0
    size = 0
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            crc = zlib.crc32(block, crc)
            size += len(block)
    return size, crc


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` of this host is alive. Where that cannot be told (not POSIX:
    ``os.kill(pid, 0)`` is no probe on Windows) the answer is True, so that nothing a live
    process may be writing is ever removed."""
    if os.name != "posix":
        return True
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, owned by someone else
    return True


def temp_owner(name: str) -> Optional[int]:
    """The pid in a temporary file's name, or None when ``name`` is not one."""
    m = _TEMP.search(name)
    return int(m.group("pid")) if m else None


def stale_temps(folder: Path, legacy: bool = False) -> Iterator[Path]:
    """Temporary files and folders under ``folder`` (at any depth) whose writer is dead. With
    ``legacy``, also those of older hyperdex versions, whose names carry no pid
    (``<name>.tmp``, ``<name>.partial``, ``<name>.tmp-<random>``): only a caller that knows no
    one else writes into ``folder`` (a compile holding the folder's lock) may pass it."""
    for root, dirs, files in os.walk(folder):
        for name in [*files, *dirs]:
            pid = temp_owner(name)
            if (pid is not None and pid != os.getpid() and not pid_alive(pid)) or (
                pid is None and legacy and _LEGACY_TEMP.search(name)
            ):
                if name in dirs:
                    dirs.remove(name)  # not walked into: it goes as a whole
                yield Path(root) / name


def remove_stale_temps(folder: Path, legacy: bool = False) -> list[Path]:
    """Removes what :func:`stale_temps` finds; returns the removed paths."""
    removed = []
    for path in list(stale_temps(folder, legacy)):
        try:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
        except FileNotFoundError:
            continue
        log.info("Removed %s, left by an interrupted compile", path)
        removed.append(path)
    return removed
