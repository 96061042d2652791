"""A dependency outside the range the tests ran on gets one warning line, once.

The line goes to the ``hyperdex`` logger when ``hyperdex`` is first imported (with no logging
set up, Python prints it to stderr as it is: one line, no traceback and no source line, which
``warnings`` would add).

The range of a dependency is its floor in hyperdex's requirements (pyproject.toml) up to the
release the test suite ran on (:data:`hyperdex._tested.TESTED`, written with the lock by
``scripts/deps.py lock``). A newer patch release of a tested minor release counts as tested.
"""

from __future__ import annotations

import logging
from importlib import metadata

from packaging.requirements import InvalidRequirement, Requirement
from packaging.version import InvalidVersion, Version

from ._tested import TESTED

__all__ = ["check_versions"]

_log = logging.getLogger("hyperdex")


def _floors() -> dict[str, str]:
    """{distribution: its specifier in hyperdex's requirements}; empty when not installed."""
    try:
        requires = metadata.requires("hyperdex") or []
    except metadata.PackageNotFoundError:
        return {}
    floors = {}
    for line in requires:
        try:
            req = Requirement(line)
        except InvalidRequirement:
            continue
        floors.setdefault(req.name.lower().replace("_", "-"), str(req.specifier))
    return floors


def _installed(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def check_versions(installed=_installed) -> list[str]:
    """Log a warning for every installed dependency outside its tested range, and return the
    messages. ``installed(name)`` gives an installed version or None (tests replace it)."""
    floors = _floors()
    messages = []
    for name, tested in TESTED.items():
        found = installed(name)
        if found is None:
            continue
        try:
            have, top = Version(found), Version(tested)
        except InvalidVersion:
            continue
        spec = floors.get(name, "")
        too_new = have.release[:2] > top.release[:2]
        too_old = bool(spec) and not Requirement(f"{name}{spec}").specifier.contains(
            have, prereleases=True
        )
        if too_new or too_old:
            messages.append(
                f"hyperdex: {name} {found} is outside the tested range "
                f"({spec or 'any'}, tested up to {top.base_version}); if something breaks, "
                f"pip install '{name}=={top.base_version}'"
            )
    for message in messages:
        _log.warning(message)
    return messages
