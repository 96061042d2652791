"""The C++ binding's type stubs (hyperdex/_core/*.pyi) match the built module."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytest.importorskip("pybind11_stubgen")


def test_the_stubs_are_current() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "stubs.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_stubs_type_the_binding() -> None:
    text = (ROOT / "hyperdex" / "_core" / "__init__.pyi").read_text()
    import hyperdex._core as core

    for name in ("Session", "SessionConfig", "generate_programs", "plan_memory", "ModelSpec"):
        assert hasattr(core, name) and f" {name}" in text, name
    assert "HAS_XRT: bool\n" in text  # build-dependent constants keep only their type


def test_a_stale_stub_is_caught(tmp_path, monkeypatch) -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("stubs", ROOT / "scripts" / "stubs.py")
    stubs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stubs)
    for p in (ROOT / "hyperdex" / "_core").glob("*.pyi"):
        (tmp_path / p.name).write_text(p.read_text())
    monkeypatch.setattr(stubs, "STUBS", tmp_path)
    assert stubs.main(["--check"]) == 0
    (tmp_path / "cost.pyi").write_text("# edited\n")
    assert stubs.main(["--check"]) == 1
