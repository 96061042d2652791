"""Every entry point with only the base dependencies (``pip install hyperdex``).

A real minimal venv costs minutes, so this simulates one: a "site" folder that links only the
distributions ``pip install hyperdex`` would bring (hyperdex's unconditional requirements and,
recursively, theirs), and each entry point runs in ``python -I -S`` with that folder as its
only site-packages. Everything else (torch, matplotlib, starlette, uvicorn, gguf, pytest,
openai, ...) is then unimportable, and invisible to importlib.metadata too, as in a real
minimal install. Each entry point must either work, or stop before any work with one line
naming the extra to install (exit 1, no traceback, no files written).

PyYAML (and, with transformers 5, pydantic) come with transformers, so they are in the base
site. hyperdex declares PyYAML only in its ``explore`` extra, so a second site without it
checks that hdex-explore still names the extra rather than leaning on transformers' copy.
"""

from __future__ import annotations

import functools
import importlib.metadata as md
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Dict, Iterable, List, Set, Tuple

import numpy as np
import pytest

requirements = pytest.importorskip("packaging.requirements")

# Runs an entry point the way its console script does (or a Python snippet), with SITE as
# the only site-packages: argv = SITE ("script" NAME | "code" SOURCE) ARGS...
BOOT = """
import site, sys
site.addsitedir(sys.argv[1])
kind, target = sys.argv[2], sys.argv[3]
sys.argv = [target] + sys.argv[4:]
if kind == "script":
    from importlib.metadata import distribution
    (ep,) = [e for e in distribution("hyperdex").entry_points if e.name == target]
    sys.exit(ep.load()())
exec(compile(target, "<snippet>", "exec"), {"__name__": "__main__"})
"""

SCRIPTS = (
    "hdex-compile",
    "hdex-estimate",
    "hdex-objdump",
    "hdex-explore",
    "hdex-serve",
    "hdex-smi",
)

# Importable here (the test extra), not part of a base install.
NOT_BASE = ("torch", "matplotlib", "starlette", "uvicorn", "gguf", "openai", "pytest", "pexpect")


def _key(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _hyperdex() -> md.Distribution:
    try:
        return md.distribution("hyperdex")
    except md.PackageNotFoundError:
        pytest.skip("hyperdex is not installed (pip install -e .): no metadata to start from")


@functools.cache
def _base_closure(exclude: Tuple[str, ...] = ()) -> Dict[str, md.Distribution]:
    """hyperdex and what ``pip install hyperdex`` installs: its requirements without an extra
    marker, then theirs, recursively (markers evaluated for this interpreter)."""
    Requirement = requirements.Requirement
    skip = {_key(n) for n in exclude}
    found: Dict[str, md.Distribution] = {}
    seen: Set[Tuple[str, str]] = set()  # (distribution, extra) already expanded
    todo = [Requirement("hyperdex")]
    while todo:
        req = todo.pop()
        if _key(req.name) in skip:
            continue
        try:
            dist = md.distribution(req.name)
        except md.PackageNotFoundError:
            continue  # an optional platform dependency absent here
        key = _key(dist.metadata["Name"])
        found[key] = dist
        extras = {e for e in {"", *req.extras} if (key, e) not in seen}
        seen |= {(key, e) for e in extras}
        for line in dist.requires or [] if extras else []:
            sub = Requirement(line)
            if key == "hyperdex" and sub.marker is not None:
                continue  # hyperdex's own extras are what this test leaves out
            if sub.marker is None or any(sub.marker.evaluate({"extra": e}) for e in extras):
                todo.append(sub)
    return found


def _make_site(folder: Path, dists: Dict[str, md.Distribution]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for dist in dists.values():
        root = Path(str(dist.locate_file("")))
        tops = {Path(str(f)).parts[0] for f in dist.files or []}
        for top in sorted(tops):
            if top in ("..", "__pycache__") or top.endswith(".data"):
                continue
            src, dst = root / top, folder / top
            if src.exists() and not dst.exists():
                dst.symlink_to(src)
    return folder


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    _hyperdex()
    return _make_site(tmp_path_factory.mktemp("base-site"), _base_closure())


@pytest.fixture(scope="module")
def base_without_yaml(tmp_path_factory) -> Path:
    _hyperdex()
    return _make_site(tmp_path_factory.mktemp("no-yaml-site"), _base_closure(("PyYAML",)))


def run(site: Path, kind: str, target: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HYPERDEX_PROGRESS="0")
    cwd.mkdir(parents=True, exist_ok=True)
    return subprocess.run(
        [sys.executable, "-I", "-S", "-c", BOOT, str(site), kind, target, *args],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        env=env,
        cwd=cwd,
        timeout=300,
    )


def script(site: Path, name: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return run(site, "script", name, *args, cwd=cwd)


def ok(done: subprocess.CompletedProcess, code: int = 0) -> str:
    """stdout + stderr, after checking the exit code and that nothing crashed."""
    text = done.stdout + done.stderr
    assert done.returncode == code, text
    assert "Traceback" not in text, text
    return text


def refused(done: subprocess.CompletedProcess, who: str, extra: str, names: List[str]) -> str:
    """Exit 1 with one line: '<who> needs <names>...: pip install 'hyperdex[<extra>]''."""
    ok(done, 1)
    (line,) = [x for x in done.stderr.splitlines() if "pip install" in x]
    needs = " and ".join(names) if len(names) < 3 else f"{', '.join(names[:-1])} and {names[-1]}"
    assert f"{who} needs {needs}" in line, line
    assert f"pip install 'hyperdex[{extra}]'" in line, line
    return line


def absent(packages: Iterable[str]) -> List[str]:
    """The pip names among ``packages`` that a base install lacks."""
    closure = _base_closure()
    return [p for p in packages if _key(p) not in closure]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    """A tiny random Llama as a HF folder, written without torch (config.json + safetensors)."""
    from safetensors.numpy import save_file
    from transformers import LlamaConfig

    folder = tmp_path_factory.mktemp("hf") / "tiny-llama"
    config = LlamaConfig(
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=128,
        max_position_embeddings=64,
        architectures=["LlamaForCausalLM"],
    )
    config.save_pretrained(folder)
    rng = np.random.default_rng(0)
    h, f, kv, v = 64, 96, 2 * 16, 128

    def w(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.05).astype(np.float32)

    tensors = {"model.embed_tokens.weight": w(v, h), "model.norm.weight": np.ones(h, np.float32)}
    tensors["lm_head.weight"] = w(v, h)
    for i in range(2):
        p = f"model.layers.{i}."
        tensors.update(
            {
                p + "self_attn.q_proj.weight": w(h, h),
                p + "self_attn.k_proj.weight": w(kv, h),
                p + "self_attn.v_proj.weight": w(kv, h),
                p + "self_attn.o_proj.weight": w(h, h),
                p + "mlp.gate_proj.weight": w(f, h),
                p + "mlp.up_proj.weight": w(f, h),
                p + "mlp.down_proj.weight": w(h, f),
                p + "input_layernorm.weight": np.ones(h, np.float32),
                p + "post_attention_layernorm.weight": np.ones(h, np.float32),
            }
        )
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder


@pytest.fixture(scope="module")
def compiled(base, tiny_model, tmp_path_factory) -> Path:
    """The tiny model compiled by hdex-compile with base deps, no terminal, only --model."""
    prefix = tmp_path_factory.mktemp("prefix")
    done = script(
        base,
        "hdex-compile",
        "--model",
        str(tiny_model),
        "--prefix",
        str(prefix),
        "--max-length",
        "64",
        cwd=prefix.parent / "cwd-compile",
    )
    ok(done)
    (record,) = prefix.glob("local/*/compile.json")
    return record.parent


# -- the simulation itself ----------------------------------------------------------------------


def test_the_blocker_blocks(base, base_without_yaml, tmp_path):
    here = [m for m in NOT_BASE if importlib.util.find_spec(m) is not None]
    if not here:
        pytest.skip("none of the optional packages is installed here: nothing to block")
    probe = (
        "import importlib, importlib.metadata as md, sys\n"
        "for m in sys.argv[1:]:\n"
        "    try:\n"
        "        importlib.import_module(m)\n"
        "        print('IMPORTED', m)\n"
        "    except ImportError:\n"
        "        print('blocked', m)\n"
        "import numpy, tqdm, transformers, safetensors, hyperdex._core\n"
        "print('dists', sorted(d.metadata['Name'].lower() for d in md.distributions()))\n"
    )
    done = run(base, "code", probe, *here, "yaml", cwd=tmp_path)
    ok(done)
    for m in here:
        assert f"blocked {m}" in done.stdout
    dists = done.stdout.split("dists ", 1)[1]
    assert "'torch'" not in dists and "'matplotlib'" not in dists  # metadata hidden too
    assert "'transformers'" in dists and "'hyperdex'" in dists
    yaml_in_base = not absent(["PyYAML"])
    assert ("IMPORTED yaml" in done.stdout) == yaml_in_base  # only as transformers' dependency
    no_yaml = run(base_without_yaml, "code", "import yaml", cwd=tmp_path)
    assert no_yaml.returncode == 1 and "No module named 'yaml'" in no_yaml.stderr


def test_every_script_is_declared():
    names = {e.name for e in _hyperdex().entry_points if e.group == "console_scripts"}
    assert names == set(SCRIPTS)


# -- the entry points that work with the base dependencies ---------------------------------------


def test_compile_without_a_terminal_needs_only_the_model(compiled):
    record = json.loads((compiled / "compile.json").read_text())
    assert record["num_device"] == 1 and record["quantization"] is None  # fp16 on 1 device


def test_objdump(base, compiled, tmp_path):
    text = ok(script(base, "hdex-objdump", str(compiled), cwd=tmp_path))
    assert "prefill program" in text and "decode program" in text


def test_estimate(base, tiny_model, tmp_path):
    config = str(tiny_model / "config.json")
    args = ("--prompt-len", "8", "--new-tokens", "8", "--max-length", "64")
    text = ok(script(base, "hdex-estimate", config, *args, cwd=tmp_path))
    assert "decode" in text.lower()


def test_smi(base, tmp_path):
    text = ok(script(base, "hdex-smi", cwd=tmp_path))
    assert "u55c" in text


def test_python_api(base, compiled, tiny_model, tmp_path):
    snippet = (
        "import sys, numpy as np\n"
        "import hyperdex, hyperdex.tools, hyperdex.transformers, hyperdex.explore\n"
        "from hyperdex.tools import AutoCompiler\n"
        "from hyperdex.transformers import AutoModelForCausalLM\n"
        f"path = AutoCompiler().compile(model_id={str(tiny_model)!r}, prefix={str(tmp_path)!r},"
        " max_length=64, progress=False)\n"
        "model = AutoModelForCausalLM.from_pretrained(path)\n"
        "out = model.generate(np.array([[1, 2, 3]]), max_new_tokens=4)\n"
        "assert isinstance(out, np.ndarray) and out.shape == (1, 7), out\n"
        "logits = model(np.array([[1, 2, 3]])).logits\n"
        "assert isinstance(logits, np.ndarray) and logits.shape[-1] == 128, logits.shape\n"
        "assert 'torch' not in sys.modules\n"
        "print('API OK')\n"
    )
    assert "API OK" in ok(run(base, "code", snippet, cwd=tmp_path / "cwd"))


def test_explore_without_plots(base, tmp_path):
    done = script(
        base, "hdex-explore", "-hw", "tpuv4", "-m", "gpt3", "-q", "--no-plots", cwd=tmp_path
    )
    if absent(["PyYAML"]):  # a transformers without PyYAML: the extra is named
        refused(done, "hdex-explore", "explore", ["PyYAML"])
        return
    ok(done)
    written = sorted(p.name for p in (tmp_path / "outputs").rglob("*") if p.is_file())
    assert "gpt3.csv" in written and not [n for n in written if n.endswith(".png")]


# -- the entry points that need an extra: one line before any work -------------------------------


def test_explore_names_its_extra_before_writing(base, base_without_yaml, tmp_path):
    run_args = ("-hw", "tpuv4", "-m", "gpt3", "-q", "-o", str(tmp_path / "out"))
    line = refused(
        script(base, "hdex-explore", *run_args, cwd=tmp_path),
        "hdex-explore",
        "explore",
        absent(["PyYAML"]) + ["matplotlib"],
    )
    assert "--no-plots" in line or absent(["PyYAML"])
    refused(
        script(base_without_yaml, "hdex-explore", *run_args, cwd=tmp_path),
        "hdex-explore",
        "explore",
        ["PyYAML", "matplotlib"],
    )
    for args in (("--no-plots", *run_args), ("--list",), ("--validate",)):
        done = script(base_without_yaml, "hdex-explore", *args, cwd=tmp_path)
        refused(done, "hdex-explore", "explore", ["PyYAML"])
    assert not (tmp_path / "out").exists() and not (tmp_path / "outputs").exists()
    api = "from hyperdex.explore import explore"
    done = run(
        base_without_yaml,
        "code",
        f"try:\n {api}\nexcept ImportError as e:\n print(e)",
        cwd=tmp_path,
    )
    assert "hyperdex.explore needs PyYAML: pip install 'hyperdex[explore]'" in ok(done)


def test_serve_names_its_extra_before_loading(base, tiny_model, tmp_path):
    prefix = tmp_path / "prefix"
    done = script(base, "hdex-serve", str(tiny_model), "--prefix", str(prefix), cwd=tmp_path)
    refused(
        done,
        "hdex-serve",
        "serve",
        absent(["starlette", "uvicorn", "pydantic", "prometheus_client"]),
    )
    assert not prefix.exists()  # nothing compiled
    assert "usage: hdex-serve" in ok(script(base, "hdex-serve", "--help", cwd=tmp_path))


def test_compile_names_torch_for_a_bin_checkpoint(base, tiny_model, tmp_path):
    folder = tmp_path / "bin-model"
    folder.mkdir()
    (folder / "config.json").write_text((tiny_model / "config.json").read_text())
    (folder / "pytorch_model.bin").write_bytes(b"not read: torch is needed first")
    prefix = tmp_path / "prefix"
    done = script(
        base, "hdex-compile", "--model", str(folder), "--prefix", str(prefix), cwd=tmp_path
    )
    refused(done, "hdex-compile", "torch", ["torch"])
    assert not prefix.exists()


# -- the helper, in process ---------------------------------------------------------------------


def test_require_extra(monkeypatch):
    from hyperdex.errors import HyperdexError
    from hyperdex.extras import MissingExtraError, require_extra

    require_extra("x", "explore", ["json"])  # present: nothing happens
    for name in ("starlette", "uvicorn", "pydantic"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(MissingExtraError) as err:
        require_extra("hdex-serve", "serve")
    assert str(err.value) == (
        "hdex-serve needs starlette, uvicorn and pydantic: pip install 'hyperdex[serve]'"
    )
    assert isinstance(err.value, ImportError) and isinstance(err.value, HyperdexError)
    assert err.value.extra == "serve" and err.value.missing == ["starlette", "uvicorn", "pydantic"]
    with pytest.raises(ValueError, match="unknown extra"):
        require_extra("x", "nope")
