"""The XRT board backend from Python: a compiled model through the backend's logic on the
simulated board (same tokens and logits as the emulator), through the real libxrt on XRT's
no-op device (in a subprocess: XRT reads XCL_EMULATION_MODE once per process), and every
error: no board, no XRT build, wrong or missing xclbin, a run past its timeout. Then
hdex-smi."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from hyperdex import _core
from hyperdex import xrt as xrt_env
from hyperdex.errors import ConfigError, DeviceError, FormatError

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

needs_xrt = pytest.mark.skipif(not _core.HAS_XRT, reason="hyperdex was built without XRT")


@pytest.fixture(scope="module")
def compiled(tiny_llama, tmp_path_factory) -> Path:
    from hyperdex.tools import AutoCompiler

    prefix = tmp_path_factory.mktemp("prefix")
    return Path(AutoCompiler().compile(str(tiny_llama), max_length=64, prefix=str(prefix)))


@pytest.fixture(scope="module")
def stub(compiled, tmp_path_factory) -> Path:
    """A stub xclbin for the compiled model's preset."""
    preset = json.loads((compiled / "config" / "memory_map.json").read_text())["device_preset"]
    return xrt_env.write_stub_xclbin(tmp_path_factory.mktemp("xclbin") / "lpu.xclbin", preset)


def run_python(code: str, extra_env: dict[str, str], timeout: float = 240):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HYPERDEX_PROGRESS": "0", **extra_env}
    for key in ("XCL_EMULATION_MODE", "XRT_INI_PATH"):
        if key not in extra_env:
            env.pop(key, None)
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=timeout
    )


def test_simulated_board_matches_the_emulator(compiled, stub, monkeypatch):
    """backend="xrt" end to end (options, xclbin check, BoardDevice, syncs, kernel arguments),
    with the board simulated by the emulator: the same tokens and bit-equal logits."""
    from hyperdex.transformers import AutoModelForCausalLM

    def simulated(preset, config, xclbin, kernel, index, timeout_s):
        assert (xclbin, kernel, index) == (str(stub), "lpu", 0)
        return _core.Session.simulated_board(preset, config, xclbin, kernel, timeout_s)

    monkeypatch.setattr(_core.Session, "xrt", staticmethod(simulated))
    monkeypatch.setattr(xrt_env, "has_xrt", lambda: True)
    monkeypatch.setenv("HYPERDEX_XCLBIN", str(stub))
    board = AutoModelForCausalLM.from_pretrained(
        compiled, backend="xrt", enable_prefix_caching=False
    )
    emu = AutoModelForCausalLM.from_pretrained(compiled, backend="emu", enable_prefix_caching=False)
    assert board.backend == "xrt" and "simulated board" in board.device_description
    ids = np.array([[5, 17, 3, 99, 42, 7, 1]])
    assert np.array_equal(board(ids).logits, emu(ids).logits)
    a = board.generate(ids, max_new_tokens=8, do_sample=False)
    b = emu.generate(ids, max_new_tokens=8, do_sample=False)
    assert a.tolist() == b.tolist()


@needs_xrt
def test_noop_device_through_the_real_libxrt(compiled, stub):
    code = f"""
from hyperdex.transformers import AutoModelForCausalLM
m = AutoModelForCausalLM.from_pretrained({str(compiled)!r}, backend="xrt")
print("DEVICE", m.device_description)
# Nothing computes on the no-op device, so the "tokens" are whatever its memory holds (an
# end-of-sequence id included): min_new_tokens keeps the run count fixed.
out = m.generate([[5, 17, 3]], max_new_tokens=3, min_new_tokens=3, do_sample=False)
print("LEN", len(out[0]))
"""
    r = run_python(code, {"XCL_EMULATION_MODE": "noop", "HYPERDEX_XCLBIN": str(stub)})
    assert r.returncode == 0, r.stderr
    assert "XRT no-op device" in r.stdout
    assert "LEN 6" in r.stdout  # prompt + 3: every run started, waited for and read back


@needs_xrt
def test_a_run_past_the_timeout_is_aborted_with_a_message(compiled, stub, tmp_path):
    ini = tmp_path / "xrt.ini"
    ini.write_text("[Runtime]\nnoop_completion_delay_us=2000000\n")  # each run takes 2 s
    code = f"""
from hyperdex.errors import DeviceError
from hyperdex.transformers import AutoModelForCausalLM
m = AutoModelForCausalLM.from_pretrained({str(compiled)!r}, backend="xrt", timeout=0.2)
try:
    m.generate([[5, 17, 3]], max_new_tokens=2)
except DeviceError as e:
    print("ERROR", e)
"""
    t0 = time.monotonic()
    r = run_python(
        code,
        {"XCL_EMULATION_MODE": "noop", "HYPERDEX_XCLBIN": str(stub), "XRT_INI_PATH": str(ini)},
    )
    assert r.returncode == 0, r.stderr
    assert "did not finish within the run timeout of 200 ms and was aborted" in r.stdout
    assert time.monotonic() - t0 < 120


@needs_xrt
def test_without_a_board_the_error_says_so(compiled, stub):
    code = f"""
from hyperdex.errors import DeviceError
from hyperdex.transformers import AutoModelForCausalLM
try:
    AutoModelForCausalLM.from_pretrained({str(compiled)!r}, backend="xrt")
except DeviceError as e:
    print("ERROR", e)
"""
    r = run_python(code, {"HYPERDEX_XCLBIN": str(stub)})
    assert r.returncode == 0, r.stderr
    assert "no LPU board found through XRT" in r.stdout
    assert "backend='emu'" in r.stdout


def test_a_build_without_xrt_says_how_to_get_one(compiled, monkeypatch):
    from hyperdex.transformers import AutoModelForCausalLM

    monkeypatch.setattr(xrt_env, "has_xrt", lambda: False)
    with pytest.raises(DeviceError, match="apt-get install libxrt-dev"):
        AutoModelForCausalLM.from_pretrained(compiled, backend="xrt")
    _, why = xrt_env.choose_backend({"name": "u55c"})
    assert "no XRT board backend" in why


def test_xclbin_mismatches_and_absence(compiled, tmp_path, monkeypatch):
    from hyperdex.presets import device_preset
    from hyperdex.transformers import AutoModelForCausalLM

    monkeypatch.setattr(xrt_env, "has_xrt", lambda: True)
    monkeypatch.delenv("HYPERDEX_XCLBIN", raising=False)
    with pytest.raises(DeviceError, match="HYPERDEX_XCLBIN"):
        AutoModelForCausalLM.from_pretrained(compiled, backend="xrt")
    other = xrt_env.write_stub_xclbin(tmp_path / "vcu128.xclbin", "vcu128")
    monkeypatch.setenv("HYPERDEX_XCLBIN", str(other))
    with pytest.raises(FormatError, match="built for device preset vcu128"):
        AutoModelForCausalLM.from_pretrained(compiled, backend="xrt")
    preset = json.loads((compiled / "config" / "memory_map.json").read_text())["device_preset"]
    old = tmp_path / "old.xclbin"
    _core.write_stub_xclbin(
        str(old), device_preset(preset), "lpu", {"hyperdex.program_format_version": "9"}
    )
    monkeypatch.setenv("HYPERDEX_XCLBIN", str(old))
    with pytest.raises(FormatError, match="program format version 9"):
        AutoModelForCausalLM.from_pretrained(compiled, backend="xrt")
    (tmp_path / "junk.xclbin").write_bytes(b"not an xclbin" * 50)
    monkeypatch.setenv("HYPERDEX_XCLBIN", str(tmp_path / "junk.xclbin"))
    with pytest.raises(FormatError, match="no xclbin2 magic"):
        AutoModelForCausalLM.from_pretrained(compiled, backend="xrt")


def test_stub_xclbin_content(stub):
    info = _core.xclbin_info(str(stub))
    (kernel,) = info["kernels"]
    assert kernel["name"] == "lpu" and kernel["instances"] == ["lpu_1"]
    names = [a[0] for a in kernel["args"]]
    assert names[:2] == ["hbm00", "hbm01"] and names[-3:] == ["io_base", "io_bytes", "ring"]
    banks = [a[2] for a in kernel["args"] if a[0].startswith("hbm")]
    assert banks == list(range(len(info["banks"])))
    assert info["metadata"]["hyperdex.kernel_abi"] == str(_core.XRT_KERNEL_ABI_VERSION)


def test_default_backend_says_which_it_took(compiled, caplog, monkeypatch):
    import logging

    from hyperdex.transformers import AutoModelForCausalLM

    monkeypatch.setattr(xrt_env, "list_boards", lambda: [])
    monkeypatch.setattr(xrt_env, "has_xrt", lambda: True)
    with caplog.at_level(logging.INFO, logger="hyperdex"):
        m = AutoModelForCausalLM.from_pretrained(compiled)
    assert m.backend == "emu"
    assert "no LPU board found through XRT; running on the emulator" in caplog.text
    # A board present and an xclbin configured: the board is taken.
    board = {
        "index": 0,
        "name": "xilinx_u55c",
        "bdf": "",
        "offline": False,
        "memory": "",
        "error": "",
    }
    monkeypatch.setattr(xrt_env, "list_boards", lambda: [board])
    monkeypatch.setenv("HYPERDEX_XCLBIN", "/some/lpu.xclbin")
    assert xrt_env.choose_backend({"name": "u55c"})[0] == "xrt"
    monkeypatch.delenv("HYPERDEX_XCLBIN")
    backend, why = xrt_env.choose_backend({"name": "u55c"})
    assert backend == "emu" and "no xclbin is configured" in why


def test_timeout_is_validated_and_honoured_on_the_emulator(compiled):
    from hyperdex.transformers import AutoModelForCausalLM

    with pytest.raises(ConfigError, match="timeout"):
        AutoModelForCausalLM.from_pretrained(compiled, backend="emu", timeout=-1)
    m = AutoModelForCausalLM.from_pretrained(compiled, backend="emu", timeout=30)
    assert len(m.generate([[1, 2, 3]], max_new_tokens=2)[0]) == 5


def test_ensure_xilinx_xrt_makes_a_root_for_debian_layouts(tmp_path, monkeypatch):
    if not _core.HAS_XRT:
        pytest.skip("built without XRT")
    monkeypatch.delenv("XILINX_XRT", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    root = xrt_env.ensure_xilinx_xrt()
    assert root is not None and os.environ["XILINX_XRT"] == root
    lib = Path(root) / "lib"
    assert (lib / "libxrt_coreutil.so.2").exists()
    assert (lib / "libxrt_noop.so.2").exists()  # what XCL_EMULATION_MODE=noop loads


def test_hdex_smi():
    env = {**os.environ, "HYPERDEX_PROGRESS": "0"}
    env.pop("XCL_EMULATION_MODE", None)
    r = subprocess.run(
        [sys.executable, "-m", "hyperdex.tools.smi", "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["xrt"]["built"] == bool(_core.HAS_XRT)
    assert info["xrt"]["boards"] == []  # no board on this machine
    names = {p["name"]: p for p in info["presets"]}
    assert {"u55c", "vcu128", "asic"} <= set(names)
    if "hbm_bytes" in names["u55c"]:
        assert names["u55c"]["hbm_bytes"] == 16 * 2**30
        assert names["u55c"]["state"] == "available (emulator)"
    text = subprocess.run(
        [sys.executable, "-m", "hyperdex.tools.smi"], capture_output=True, text=True, env=env
    )
    assert text.returncode == 0
    assert "Emulator presets" in text.stdout and "Boards" in text.stdout
