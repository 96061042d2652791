"""The layer rule (docs/architecture.md, "Layers"): a module imports its own unit and the
layers below it, never a layer above it or a unit beside it. Every import under hyperdex/ is
read with ``ast`` (function-local and relative imports too) and resolved to an absolute module
name; imports made from strings (``importlib.import_module``) are not seen."""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "hyperdex"

# Lowest first. A unit is a module or a package with everything under it; it may import
# itself and the units of lower layers. Units of one layer are siblings: neither imports the
# other. A new module outside every unit fails test_every_module_has_a_layer.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("hyperdex._core", "hyperdex._tested", "hyperdex.errors"),
    ("hyperdex.extras", "hyperdex.jsonfile", "hyperdex.paths", "hyperdex.versions"),
    ("hyperdex",),  # the root package alone (__version__), not what lies under it
    ("hyperdex.arch", "hyperdex.data", "hyperdex.formats", "hyperdex.presets"),
    ("hyperdex.xrt",),
    ("hyperdex.compiled",),  # what the compiler writes and the runtime reads
    # the compiler, the runtime, joining a Ray cluster (serving's and the explorer's)
    ("hyperdex.tools", "hyperdex.transformers", "hyperdex.ray_cluster"),
    ("hyperdex.explore", "hyperdex.serving"),
    ("hyperdex.vllm_plugin",),  # upstream vLLM's platform plugin
    ("hyperdex.vllm",),  # its own engine, or upstream vLLM with the plugin
)
RANK = {unit: rank for rank, units in enumerate(LAYERS) for unit in units}


@dataclass(frozen=True)
class Import:
    module: str  # the importing module
    target: str  # the imported module, absolute
    line: int


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def sources() -> Iterator[tuple[str, bool, Path]]:
    """(module name, is a package, file) of every module under hyperdex/."""
    for path in sorted(PACKAGE.rglob("*.py")):
        yield module_name(path), path.name == "__init__.py", path


def known_modules() -> set[str]:
    """Module names, so that ``from hyperdex import _core`` resolves to the module
    ``hyperdex._core`` and ``from hyperdex import __version__`` to ``hyperdex``."""
    return {name for name, _, _ in sources()} | set(RANK)


def imports_of(module: str, source: str, is_package: bool, known: set[str]) -> list[Import]:
    """Every import of hyperdex in ``source`` (the text of ``module``), at any depth."""
    package = module if is_package else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [Import(module, alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                if node.level - 1 >= len(parts):
                    raise ValueError(f"{module}:{node.lineno}: relative import beyond hyperdex")
                base = parts[: len(parts) - (node.level - 1)]
                origin = ".".join(base + ([node.module] if node.module else []))
            else:
                origin = node.module or ""
            for alias in node.names:
                sub = f"{origin}.{alias.name}"
                found.append(Import(module, sub if sub in known else origin, node.lineno))
    return [i for i in found if i.target == "hyperdex" or i.target.startswith("hyperdex.")]


def unit_of(module: str) -> Optional[str]:
    """The longest unit that holds ``module``; the root unit holds only ``hyperdex`` itself."""
    holders = [u for u in RANK if module == u or (u != "hyperdex" and module.startswith(u + "."))]
    return max(holders, key=len, default=None)


def violations(imports: list[Import]) -> list[str]:
    out = []
    for i in imports:
        have, want = unit_of(i.module), unit_of(i.target)
        if have is None or want is None or have == want or RANK[want] < RANK[have]:
            continue  # modules outside the table fail test_every_module_has_a_layer
        way = "sideways" if RANK[want] == RANK[have] else "upward"
        out.append(
            f"{i.module}:{i.line} imports {i.target} ({way}: {have} is layer {RANK[have]}, "
            f"{want} is layer {RANK[want]})"
        )
    return out


def all_imports() -> list[Import]:
    known = known_modules()
    return [
        i
        for name, is_package, path in sources()
        for i in imports_of(name, path.read_text(encoding="utf-8"), is_package, known)
    ]


def test_no_import_runs_upward_or_sideways() -> None:
    assert violations(all_imports()) == []


def test_every_module_has_a_layer() -> None:
    imports = all_imports()
    modules = {name for name, _, _ in sources()} | {i.target for i in imports}
    assert sorted(m for m in modules if unit_of(m) is None) == []


def test_every_unit_exists() -> None:
    """A unit renamed or removed leaves no stale row behind (``_core`` is the C++ module)."""
    names = {name for name, _, _ in sources()}
    stale = [u for u in RANK if u != "hyperdex._core" and u not in names]
    assert stale == []


def test_the_documented_table_is_this_one() -> None:
    """docs/architecture.md, "Layers", shows the table: one row per layer, its units in
    backquotes, named under hyperdex."""
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    section = text.split("## Layers", 1)[1].split("\n## ", 1)[0]
    documented = {
        int(rank): {n if n == "hyperdex" else f"hyperdex.{n}" for n in re.findall(r"`(\w+)`", row)}
        for rank, row in re.findall(r"^\| (\d+) \| (.*) \|$", section, re.M)
    }
    assert documented == {rank: set(units) for rank, units in enumerate(LAYERS)}


FORBIDDEN = """
from __future__ import annotations

from ..compiled.folder import read_json  # down: allowed
from . import modeling  # its own unit: allowed
from .. import _core  # down: allowed


def load(name):
    from ..tools.lowering import model_spec  # sideways, in a function
    import hyperdex.serving  # upward

    return model_spec, hyperdex.serving
"""


def test_a_forbidden_import_is_reported() -> None:
    found = imports_of("hyperdex.transformers.fake", FORBIDDEN, False, known_modules())
    assert {i.target for i in found} == {
        "hyperdex.compiled.folder",
        "hyperdex.transformers.modeling",
        "hyperdex._core",
        "hyperdex.tools.lowering",
        "hyperdex.serving",
    }
    assert violations(found) == [
        "hyperdex.transformers.fake:10 imports hyperdex.tools.lowering (sideways: "
        "hyperdex.transformers is layer 6, hyperdex.tools is layer 6)",
        "hyperdex.transformers.fake:11 imports hyperdex.serving (upward: "
        "hyperdex.transformers is layer 6, hyperdex.serving is layer 7)",
    ]


@pytest.mark.parametrize(
    ("module", "is_package", "source", "allowed"),
    [
        ("hyperdex.tools.calibration", False, "from hyperdex.transformers import X", False),
        ("hyperdex.formats", True, "from ..tools import estimate", False),
        ("hyperdex.compiled.session", False, "from ..transformers import device_map", False),
        ("hyperdex.arch.registry", False, "from ..formats import ModelFile", False),
        ("hyperdex", True, "from .tools import AutoCompiler", False),
        ("hyperdex.serving", True, "from ..tools import AutoCompiler", True),
        ("hyperdex.tools.compiler", False, "from .. import __version__", True),
    ],
)
def test_layer_rule_cases(module: str, is_package: bool, source: str, allowed: bool) -> None:
    found = imports_of(module, source, is_package, known_modules())
    assert len(found) == 1
    assert (violations(found) == []) == allowed, violations(found)
