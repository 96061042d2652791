"""Every Python snippet in README.md and docs/*.md, and every notebook in examples/, runs as
written (in a fresh interpreter, offline), so none of them can rot."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def snippets():
    for doc in DOCS:
        for i, match in enumerate(FENCE.finditer(doc.read_text(encoding="utf-8"))):
            yield pytest.param(match.group(1), id=f"{doc.name}-{i}")


def test_the_readme_has_python_snippets():
    assert any(True for _ in snippets())


@pytest.mark.slow  # a fresh interpreter each, several compile a real model
@pytest.mark.parametrize("code", list(snippets()))
def test_snippet_runs(code, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HYPERDEX_PROGRESS": "0"}
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize(
    "notebook", sorted((ROOT / "examples").glob("*.ipynb")), ids=lambda p: p.name
)
def test_notebook_runs(notebook, tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HYPERDEX_PROGRESS", "0")
    nb = nbformat.read(notebook, as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()  # raises CellExecutionError on the first failing cell
    assert any(cell.get("outputs") for cell in nb.cells if cell.cell_type == "code")
