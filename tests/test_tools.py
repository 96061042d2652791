"""The command-line tools: hdex-compile (interactive through a pseudo-terminal, and scripted
without one) and hdex-objdump; resume after Ctrl-C; fast_compile's content hashes; the Hub
route, offline."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HYPERDEX_PROGRESS": "0"}


def run_tool(module: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        env=ENV,
        timeout=300,
    )


def compile_cli(model: Path, prefix: Path, *extra: str) -> subprocess.CompletedProcess:
    return run_tool(
        "hyperdex.tools.cli",
        "--model",
        str(model),
        "--prefix",
        str(prefix),
        "--max-length",
        "64",
        *extra,
    )


def param_crcs(folder: Path) -> dict[str, int]:
    return {p.name: zlib.crc32(p.read_bytes()) for p in sorted((folder / "param").iterdir())}


def test_scripted_compile_then_objdump(tiny_llama, tmp_path):
    done = compile_cli(tiny_llama, tmp_path, "--num-device", "1", "--yes")
    assert done.returncode == 0, done.stderr
    assert "hyperdex compiler" in done.stdout  # the banner, with the version
    for phase in ("Phase-0", "Phase-1", "Phase-2", "Phase-3", "Phase-4"):
        assert phase in done.stdout
    assert "Timings: check" in done.stdout
    folder = done.stdout.split("Compiled model at", 1)[1].split()[0]
    listing = run_tool("hyperdex.tools.objdump", folder)
    assert listing.returncode == 0, listing.stderr
    text = listing.stdout
    assert "prefill program" in text and "decode program" in text
    # Regions are named from the memory map, and every layer's weights appear.
    assert "blk.1.attn_qkv" in text and "tok_embd" in text
    assert text.count("ATTN ") == 4  # two layers, two programs
    single = run_tool("hyperdex.tools.objdump", os.path.join(folder, "inst", "decode.bin"))
    assert single.returncode == 0 and "decode program" in single.stdout


def test_without_terminal_a_missing_model_names_its_flag(tmp_path):
    no_model = run_tool("hyperdex.tools.cli", "--prefix", str(tmp_path), "--num-device", "1")
    assert no_model.returncode == 2 and "--model is required" in no_model.stderr
    assert "usage: hdex-compile" in no_model.stderr
    assert not any(tmp_path.iterdir())  # nothing written


def test_without_terminal_only_the_model_is_needed(tiny_llama, tmp_path):
    """A script (no terminal, no --yes) gives --model alone: 1 device, fp16, no questions."""
    done = compile_cli(tiny_llama, tmp_path)
    assert done.returncode == 0, done.stderr
    assert "[Option" not in done.stdout  # nothing was asked
    (record,) = tmp_path.glob("local/*/compile.json")
    compiled = json.loads(record.read_text())
    assert compiled["num_device"] == 1 and compiled["quantization"] is None
    assert not record.parent.name.endswith(("w4a16", "w8a16"))  # the fp16 variant's folder


def test_help_states_the_defaults():
    text = " ".join(run_tool("hyperdex.tools.cli", "--help").stdout.split())
    assert "a power of two (default 1)" in text
    assert "(default none: fp16 weights)" in text
    assert "(required; asked for on a terminal)" in text


def test_exit_codes(tiny_llama, tmp_path):
    bad_flag = compile_cli(tiny_llama, tmp_path, "--num-device", "3", "--yes")
    assert bad_flag.returncode == 2 and "power of two" in bad_flag.stderr
    bad_quant = compile_cli(tiny_llama, tmp_path, "--quantization", "w9a1", "--yes")
    assert bad_quant.returncode == 2 and "unknown quantization" in bad_quant.stderr
    rejected = run_tool(
        "hyperdex.tools.cli",
        "--model",
        str(tiny_llama),
        "--prefix",
        str(tmp_path),
        "--max-length",
        "100000",
        "--yes",
    )
    assert rejected.returncode == 1 and "max_length=100000 exceeds" in rejected.stderr


def test_help_lists_every_flag_and_the_exit_codes():
    done = run_tool("hyperdex.tools.cli", "--help")
    assert done.returncode == 0
    for flag in (
        "--model",
        "--num-device",
        "--max-length",
        "--quantization",
        "--type-device",
        "--fast-compile",
        "--low-memory-usage",
        "--yes",
        "--verbose",
        "--quiet",
        "--prefix",
        "--token",
    ):
        assert flag in done.stdout
    assert "exit codes" in done.stdout and "130" in done.stdout


def _spawn_cli(pexpect, prefix):
    """hdex-compile on a pseudo-terminal, asking for everything but the max length."""
    return pexpect.spawn(
        sys.executable,
        ["-m", "hyperdex.tools.cli", "--prefix", str(prefix), "--max-length", "64"],
        env=ENV,
        encoding="utf-8",
        timeout=120,
    )


def test_interactive_session_reasks_invalid_answers(tiny_llama, tmp_path):
    pexpect = pytest.importorskip("pexpect")
    child = _spawn_cli(pexpect, tmp_path)
    child.expect(r"hyperdex compiler \d+\.\d+\.\d+")
    child.expect("model id")
    child.sendline("not a valid id!")
    child.expect("try again")
    child.expect("model id")
    child.sendline(str(tiny_llama))
    child.expect("number of LPU devices")
    child.sendline("3")
    child.expect("power of two")
    child.expect("number of LPU devices")
    child.sendline("1")
    child.expect("quantization")
    child.sendline("w9")
    child.expect("unknown quantization")
    child.expect("quantization")
    child.sendline("")  # the default: none (fp16)
    child.expect(r"\[Y/n\]")
    child.sendline("y")
    for phase in ("Phase-1", "Phase-2", "Phase-3", "Phase-4", "Timings", "Compiled model at"):
        child.expect(phase)
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    assert list(tmp_path.glob("local/*/compile.json"))


def test_interactive_enter_takes_the_shown_defaults(tiny_llama, tmp_path):
    """The prompts show their defaults; Enter takes them (1 device, no quantization). The
    model has no default: Enter there asks again."""
    pexpect = pytest.importorskip("pexpect")
    child = _spawn_cli(pexpect, tmp_path)
    child.logfile_read = transcript = io.StringIO()
    child.expect("model id")
    child.sendline("")  # no default: re-asked
    child.expect("is required; please try again")
    child.expect(r"model id \(or a local folder\): ")
    child.sendline(str(tiny_llama))
    child.expect_exact("Please enter the number of LPU devices [1]: ")
    child.sendline("")
    child.expect_exact("(none/w4a16/w8a16/rtn-w4a16/rtn-w8a16) [none]: ")
    child.sendline("")
    child.expect(r"for 1 device\(s\) into \S+\? \[Y/n\]")
    child.sendline("")  # Enter confirms
    child.expect("Compiled model at")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    assert "not a number" not in transcript.getvalue()
    (record,) = tmp_path.glob("local/*/compile.json")
    compiled = json.loads(record.read_text())
    assert compiled["num_device"] == 1 and compiled["quantization"] is None


def test_objdump_on_a_corrupt_program(tmp_path):
    bad = tmp_path / "decode.bin"
    bad.write_bytes(b"HDXPROG\0" + bytes(100))
    done = run_tool("hyperdex.tools.objdump", str(bad))
    assert done.returncode == 1 and "recompile" in done.stderr


def test_ctrl_c_leaves_nothing_that_looks_complete(tiny_llama, tmp_path):
    from hyperdex.errors import FormatError
    from hyperdex.transformers import AutoModelForCausalLM

    reference = compile_cli(tiny_llama, tmp_path / "ref", "--num-device", "1", "--yes")
    assert reference.returncode == 0, reference.stderr
    want = param_crcs(next((tmp_path / "ref" / "local").iterdir()))
    # Interrupt compiles at several points; each leaves either a finished compile or a folder
    # that the runtime refuses, and a --fast-compile rerun finishes it with the same result.
    for delay in (0.5, 1.5, 2.5, 3.5):
        prefix = tmp_path / f"int{delay}"
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "hyperdex.tools.cli",
                "--model",
                str(tiny_llama),
                "--prefix",
                str(prefix),
                "--max-length",
                "64",
                "--yes",
                "--quiet",
            ],
            env=ENV,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=120)
        assert proc.returncode in (0, 130), proc.returncode
        folders = list((prefix / "local").glob("*")) if (prefix / "local").exists() else []
        for folder in folders:
            if not (folder / "compile.json").exists():
                with pytest.raises(FormatError, match="compile"):
                    AutoModelForCausalLM.from_pretrained(folder)
        rerun = compile_cli(tiny_llama, prefix, "--num-device", "1", "--yes", "--fast-compile")
        assert rerun.returncode == 0, rerun.stderr
        folder = next((prefix / "local").iterdir())
        assert param_crcs(folder) == want
        AutoModelForCausalLM.from_pretrained(folder)([1, 2, 3])


def test_fast_compile_follows_content_not_timestamps(tiny_llama, tmp_path):
    from hyperdex.tools import AutoCompiler

    src = tmp_path / "model"
    shutil.copytree(tiny_llama, src)
    compiler = AutoCompiler()
    folder = Path(compiler.compile(src, max_length=64, prefix=tmp_path, progress=False))
    converted = folder / "ckpt" / "hyperdex_model.bin"
    first = converted.stat().st_mtime_ns
    # Same bytes, new timestamps: nothing is redone.
    os.utime(src / "model.safetensors")
    compiler.compile(src, max_length=64, prefix=tmp_path, progress=False, fast_compile=True)
    assert converted.stat().st_mtime_ns == first
    # Same size and timestamps, different bytes: conversion and mapping are redone.
    weights = src / "model.safetensors"
    stat = weights.stat()
    data = bytearray(weights.read_bytes())
    data[-8:] = bytes(8)  # the last tensor's last values become 0.0
    weights.write_bytes(bytes(data))
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    before = param_crcs(folder)
    compiler.compile(src, max_length=64, prefix=tmp_path, progress=False, fast_compile=True)
    assert converted.stat().st_mtime_ns != first
    assert param_crcs(folder) != before
    # Another option (max_length) redoes the mapping and the programs.
    memory_map = json.loads((folder / "config" / "memory_map.json").read_text())
    compiler.compile(src, max_length=32, prefix=tmp_path, progress=False, fast_compile=True)
    again = json.loads((folder / "config" / "memory_map.json").read_text())
    assert memory_map["max_length"] == 64 and again["max_length"] == 32


def test_hub_offline_points_at_local_folders(tmp_path, monkeypatch):
    from hyperdex.errors import CheckpointError
    from hyperdex.tools import AutoCompiler

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointError, match="local folder"):
        AutoCompiler().compile("some-org/some-model", prefix=tmp_path)
    assert not (tmp_path / "some-org").exists()


def test_hub_download_route(tiny_llama, tmp_path, monkeypatch):
    """The online route, with huggingface_hub's two calls replaced by a local copy (no
    network in tests): the token reaches both, and the compile lands in <prefix>/org/name."""
    import huggingface_hub

    from hyperdex.tools import AutoCompiler

    calls = []

    def fake_file(repo_id, filename, token=None, **_):
        calls.append(("file", repo_id, token))
        return str(tiny_llama / filename)

    def fake_snapshot(repo_id, local_dir, token=None, allow_patterns=None, **_):
        calls.append(("snapshot", repo_id, token))
        shutil.copytree(tiny_llama, local_dir, dirs_exist_ok=True)
        return local_dir

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_file)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot)
    path = AutoCompiler().compile(
        "acme/tiny", prefix=tmp_path, token="secret", max_length=64, progress=False
    )
    assert Path(path) == tmp_path / "acme" / "tiny"
    assert calls == [("file", "acme/tiny", "secret"), ("snapshot", "acme/tiny", "secret")]
    assert (Path(path) / "compile.json").exists()


def test_fast_compile_redoes_files_of_another_format_version(tiny_llama, tmp_path, monkeypatch):
    """A stamp written by a hyperdex with another ISA (or file format) version is stale, so
    fast_compile never keeps programs the runtime would reject."""
    from hyperdex import _core
    from hyperdex.tools import AutoCompiler

    folder = Path(
        AutoCompiler().compile(tiny_llama, max_length=64, prefix=tmp_path, progress=False)
    )
    program = folder / "inst" / "decode.bin"
    first = program.stat().st_mtime_ns
    AutoCompiler().compile(
        tiny_llama, max_length=64, prefix=tmp_path, progress=False, fast_compile=True
    )
    assert program.stat().st_mtime_ns == first  # up to date: kept
    monkeypatch.setattr(_core, "ISA_VERSION", _core.ISA_VERSION + 1, raising=False)
    AutoCompiler().compile(
        tiny_llama, max_length=64, prefix=tmp_path, progress=False, fast_compile=True
    )
    assert program.stat().st_mtime_ns != first  # another ISA: regenerated
