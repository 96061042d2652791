"""Hostile compiled artifacts: a compiled folder whose memory map or programs were edited so
that offsets and sizes wrap round 2^64 (or just point past the device's memory). Loading and
generating must end in a hyperdex error naming what is wrong, never in a crash: each load
runs in a subprocess, so a segfault or an abort shows as a negative return code instead of
taking pytest down.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, Callable, Dict, Tuple

import helpers as H
import pytest

U64_MAX = 2**64 - 1

# Loads the compiled folder argv[1] and generates two tokens. Prints one line
# "RESULT <kind> <class> <message>" and exits 0 for success or a hyperdex error, 3 for any
# other exception; a crash exits with a signal (negative return code).
_RUNNER = textwrap.dedent(
    """
    import sys, traceback
    try:
        import torch
        from hyperdex.errors import HyperdexError
        from hyperdex.transformers import AutoModelForCausalLM
        model = AutoModelForCausalLM.from_pretrained(sys.argv[1], device_map={"lpu": 1})
        out = model.generate(torch.tensor([[1, 2, 3, 4]]), max_new_tokens=2, do_sample=False)
        print("RESULT ok", tuple(out.shape))
    except HyperdexError as e:
        print("RESULT hyperdex", type(e).__name__, str(e).replace("\\n", " "))
    except BaseException as e:
        traceback.print_exc()
        print("RESULT other", type(e).__name__, str(e).replace("\\n", " "))
        sys.exit(3)
    """
)


@pytest.fixture(scope="module")
def compiled_tiny(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Llama compiled once (max_length 64); tests copy it before editing."""
    return Path(H.compile_model(tiny_llama, tmp_path_factory.mktemp("hostile"), max_length=64))


@pytest.fixture
def folder(compiled_tiny: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "model"
    shutil.copytree(compiled_tiny, dst)
    return dst


def _run(folder: Path) -> Tuple[int, str, str, str]:
    """(return code, result kind, error class, message) of loading and generating."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HYPERDEX_PROGRESS="0")
    p = subprocess.run(
        [sys.executable, "-c", _RUNNER, str(folder)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert p.returncode >= 0, (
        f"the load crashed with signal {-p.returncode}\nstdout:\n{p.stdout}\nstderr:\n{p.stderr}"
    )
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
    assert lines, f"no result (rc {p.returncode})\nstdout:\n{p.stdout}\nstderr:\n{p.stderr}"
    kind, _, rest = lines[-1][len("RESULT ") :].partition(" ")
    cls, _, msg = rest.partition(" ")
    return p.returncode, kind, cls, msg


def _expect_format_error(folder: Path, *parts: str) -> str:
    rc, kind, cls, msg = _run(folder)
    assert (rc, kind, cls) == (0, "hyperdex", "FormatError"), (rc, kind, cls, msg)
    assert "memory_map.json" in msg or "program" in msg or "instruction" in msg, msg
    for part in parts:
        assert part in msg, msg
    return msg


def _edit_memory_map(folder: Path, edit: Callable[[Dict[str, Any]], None]) -> None:
    path = folder / "config" / "memory_map.json"
    mm = json.loads(path.read_text())
    edit(mm)
    path.write_text(json.dumps(mm))
    # compile.json records the memory map's checksum: record the edited one, so that the load
    # gets past the checksum to the checks of the core under test.
    H.reseal(folder)


def _kv_regions(mm: Dict[str, Any]) -> list:
    return [r for r in mm["regions"] if r.get("kind") == "KvCache"]


# -- the program file (docs/isa.md "Binary encoding") ------------------------------------------

_HEADER = 64
_INSTRUCTION = 96
_OPCODES = {"ROPE": 4, "KVSTORE": 5}


def _edit_program(path: Path, opcode: str, edit: Callable[[bytearray], None]) -> int:
    """Applies `edit` to the first instruction with `opcode` and rewrites both checksums, so
    the file is CRC-valid; returns the instruction's index."""
    from hyperdex import _core

    data = bytearray(path.read_bytes())
    count = struct.unpack_from("<I", data, 32)[0]
    for i in range(count):
        at = _HEADER + i * _INSTRUCTION
        if data[at] == _OPCODES[opcode]:
            inst = data[at : at + _INSTRUCTION]
            edit(inst)
            data[at : at + _INSTRUCTION] = inst
            break
    else:
        raise AssertionError(f"{path} has no {opcode} instruction")
    body = bytes(data[_HEADER:])
    struct.pack_into("<I", data, 36, _core.crc32(body))
    struct.pack_into("<I", data, 60, _core.crc32(bytes(data[:60])))
    path.write_bytes(bytes(data))
    _core.program_from_bytes(bytes(data))  # still a valid program file
    return i


# -- baseline -----------------------------------------------------------------------------------


def test_unedited_copy_generates(folder: Path) -> None:
    rc, kind, cls, msg = _run(folder)
    assert (rc, kind) == (0, "ok"), (rc, kind, cls, msg)


# -- the memory map -----------------------------------------------------------------------------


def test_io_offset_near_2_to_64(folder: Path) -> None:
    """segments.io.offset = 2^64 - 8: io_base + io_bytes wrapped and passed the layout check;
    the run then corrupted the heap."""
    _edit_memory_map(folder, lambda mm: mm["segments"]["io"].update(offset=2**64 - 8))
    _expect_format_error(folder, "segments.io", "pseudo-channel 0")


def test_io_segment_past_channel_0(folder: Path) -> None:
    def edit(mm: Dict[str, Any]) -> None:
        mm["segments"]["io"]["offset"] = int(mm["channel_bytes"][0]) - 64

    _edit_memory_map(folder, edit)
    _expect_format_error(folder, "segments.io")


def test_io_logits_offset_past_the_io_segment(folder: Path) -> None:
    _edit_memory_map(folder, lambda mm: mm["segments"]["io"].update(logits_offset=2**32 - 1))
    _expect_format_error(folder, "segments.io.logits_offset")


def test_weight_segment_larger_than_a_channel(folder: Path) -> None:
    _edit_memory_map(folder, lambda mm: mm["segments"]["weights"].update(bytes_per_channel=U64_MAX))
    _expect_format_error(folder)


def test_kv_region_near_2_to_64(folder: Path) -> None:
    """A KV cache region whose offset is near 2^64: the prefix cache's save/restore used it
    unchecked and segfaulted."""
    _edit_memory_map(folder, lambda mm: _kv_regions(mm)[1].update(offset=2**64 - 64))
    _expect_format_error(folder, "KV cache region", str(2**64 - 64))


def test_kv_region_past_its_channel(folder: Path) -> None:
    def edit(mm: Dict[str, Any]) -> None:
        _kv_regions(mm)[-1]["offset"] = int(mm["channel_bytes"][1]) - 64

    _edit_memory_map(folder, edit)
    name = _kv_regions(json.loads((folder / "config" / "memory_map.json").read_text()))[-1]["name"]
    _expect_format_error(folder, "KV cache region", name)  # named, not numbered


# -- the programs -------------------------------------------------------------------------------


def test_decode_program_with_a_wrapping_kv_region(folder: Path) -> None:
    """A CRC-valid decode program whose KVSTORE region is 8 rows of 2 GiB per channel from
    2^64 - 16 GiB: base + 16 GiB wraps to 0, passed the region check, and KVSTORE wrote
    16 GiB before the buffer."""

    def edit(inst: bytearray) -> None:
        struct.pack_into("<QII", inst, 64, 2**64 - (16 << 30), 1 << 31, 32 * 8)

    i = _edit_program(folder / "inst" / "decode.bin", "KVSTORE", edit)
    _expect_format_error(folder, f"instruction {i} (KVSTORE)", "w0", "past the allocation")


def test_rope_with_a_width_that_wraps(folder: Path) -> None:
    """n * k * 2 bytes = 2^64 + 1900334: wrapped, a width that fits the on-chip memory."""

    def edit(inst: bytearray) -> None:
        struct.pack_into("<II", inst, 4, 2147516409, 4294901775)

    i = _edit_program(folder / "inst" / "decode.bin", "ROPE", edit)
    _expect_format_error(folder, f"instruction {i} (ROPE)", "operand dst")
