"""The lock (constraints.txt) and the tested-range warning: fresh, enforced, one clear line."""

from __future__ import annotations

import importlib.util
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hyperdex import _tested, versions

ROOT = Path(__file__).resolve().parent.parent


def _load_deps():
    spec = importlib.util.spec_from_file_location("deps", ROOT / "scripts" / "deps.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


deps = _load_deps()


def _copy_tree(tmp_path: Path) -> Path:
    """The files the lock check reads, in a scratch tree of their own."""
    for rel in ("scripts/deps.py", "pyproject.toml", "constraints.txt", "hyperdex/_tested.py"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / rel, tmp_path / rel)
    return tmp_path


def _check(tree: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(tree / "scripts" / "deps.py"), "check"],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_lock_is_fresh_and_pins_everything_it_was_made_from() -> None:
    assert deps.stale_reason() is None
    _, pins = deps.read_lock()
    for requirement in deps.lock_inputs():
        assert deps._name(requirement) in pins, requirement
    # the versions the runtime warns against are the lock's
    for name, version in _tested.TESTED.items():
        assert pins[name] == version


@pytest.mark.skipif(
    Path(sys.prefix).resolve() != (ROOT / ".venv").resolve(),
    reason="the lock is enforced in the set-up's .venv (make test-latest runs other versions)",
)
def test_the_tests_run_on_the_locked_versions() -> None:
    from importlib import metadata

    _, pins = deps.read_lock()
    installed = {deps._name(d.metadata["Name"]): d.version for d in metadata.distributions()}
    differ = {n: (v, installed[n]) for n, v in pins.items() if n in installed and installed[n] != v}
    assert not differ, f"installed versions differ from constraints.txt: {differ}"


def test_a_fresh_copy_passes_the_check(tmp_path: Path) -> None:
    done = _check(_copy_tree(tmp_path))
    assert done.returncode == 0 and done.stderr == "", done.stderr


@pytest.mark.parametrize(
    "edit",
    [
        ('"numpy>=1.24"', '"numpy>=1.26"'),  # a floor moved
        ('"tqdm>=4.60",', '"tqdm>=4.60",\n  "filelock>=3",'),  # a dependency added
    ],
)
def test_a_stale_lock_is_one_line_and_exit_1(tmp_path: Path, edit: tuple[str, str]) -> None:
    tree = _copy_tree(tmp_path)
    pyproject = tree / "pyproject.toml"
    text = pyproject.read_text()
    assert edit[0] in text
    pyproject.write_text(text.replace(edit[0], edit[1]))
    done = _check(tree)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "constraints.txt is stale" in lines[0] and "make lock" in lines[0]
    assert "Traceback" not in done.stderr


def test_an_edited_tested_module_is_caught(tmp_path: Path) -> None:
    tree = _copy_tree(tmp_path)
    tested = tree / "hyperdex" / "_tested.py"
    tested.write_text(tested.read_text().replace(_tested.TESTED["numpy"], "0.0.1"))
    done = _check(tree)
    assert done.returncode == 1 and "does not match constraints.txt" in done.stderr


def test_floor_of_a_requirement() -> None:
    assert deps._floor("numpy>=1.24") == "numpy==1.24"
    assert deps._floor("PyYAML>=5.4") == "pyyaml==5.4"
    assert deps._floor("transformers>=4.45,<6") == "transformers==4.45"


def _fake(**found: str):
    return lambda name: found.get(name)


def test_versions_inside_the_tested_range_say_nothing(caplog) -> None:
    tested = _tested.TESTED["transformers"]
    major, minor = tested.split(".")[:2]
    with caplog.at_level(logging.WARNING, logger="hyperdex"):
        assert versions.check_versions(_fake(transformers=tested)) == []
        # a later patch release of the tested minor counts as tested
        assert versions.check_versions(_fake(transformers=f"{major}.{minor}.99")) == []
    assert caplog.records == []


def test_a_newer_release_gets_one_line_naming_it_and_the_range(caplog) -> None:
    tested = _tested.TESTED["transformers"]
    major, minor = (int(p) for p in tested.split(".")[:2])
    newer = f"{major}.{minor + 1}.0"
    with caplog.at_level(logging.WARNING, logger="hyperdex"):
        messages = versions.check_versions(_fake(transformers=newer, numpy=_tested.TESTED["numpy"]))
    assert len(messages) == 1 and len(caplog.records) == 1
    line = caplog.records[0].getMessage()
    assert "\n" not in line
    assert f"transformers {newer}" in line and f"tested up to {tested}" in line
    assert ">=" in line  # the floor from hyperdex's requirements


def test_a_release_below_the_floor_is_named(caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="hyperdex"):
        messages = versions.check_versions(_fake(numpy="1.20.0"))
    assert len(messages) == 1 and "numpy 1.20.0" in messages[0] and ">=1.24" in messages[0]


def test_importing_hyperdex_here_warns_about_nothing() -> None:
    done = subprocess.run(
        [sys.executable, "-c", "import hyperdex"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0
    if Path(sys.prefix).resolve() == (ROOT / ".venv").resolve():
        assert done.stderr == ""


def test_the_readme_names_the_locked_versions() -> None:
    import re

    named = re.findall(r"`([A-Za-z0-9_.-]+)==([^`]+)`", (ROOT / "README.md").read_text())
    assert len(named) >= 3
    _, pins = deps.read_lock()
    for name, version in named:
        assert pins.get(deps._name(name)) == version, f"README says {name}=={version}"
