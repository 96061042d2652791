"""The emulator hooks calibration drives a model with: partial runs, on-chip and HBM
memory access, and the program listing as data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers import compile_model

from hyperdex import _core
from hyperdex.compiled.folder import read_memory_map
from hyperdex.compiled.session import open_session
from hyperdex.errors import ConfigError, DeviceError


@pytest.fixture(scope="module")
def compiled(tiny_llama, tmp_path_factory):
    return Path(compile_model(tiny_llama, tmp_path_factory.mktemp("hooks"), max_length=64))


@pytest.fixture()
def session(compiled):
    mm = read_memory_map(compiled)
    sess, backend = open_session(compiled, mm, "emu", num_threads=2)
    assert backend == "emu"
    return sess, mm


def _write_ids(sess, mm, ids):
    io = mm["segments"]["io"]
    sess.write_hbm(0, int(io["offset"]) + int(io["ids_offset"]), np.asarray(ids, np.int32))


def _read_logits(sess, mm, rows, vocab):
    io = mm["segments"]["io"]
    raw = sess.read_hbm(0, int(io["offset"]) + int(io["logits_offset"]), rows * vocab * 4)
    return raw.view(np.float32).reshape(rows, vocab)


def test_instructions_describe_the_program(compiled):
    prog = _core.load_program(str(compiled / "inst" / "decode.bin"))
    insts = prog.instructions()
    assert len(insts) == len(prog)
    assert [d["op"] for d in insts] == prog.opcodes()
    mm = next(d for d in insts if d["op"] == "MATMUL")
    assert set(mm) >= {"op", "flags", "sub", "n", "k", "i0", "i1", "dst", "a", "b", "w0", "w1"}
    assert mm["a"][0] in ("lmem", "io") and len(mm["a"]) == 3
    assert len(mm["w0"]) == 3 and mm["w0"][1] > 0 and mm["w0"][2] >= mm["n"]
    head = insts[-1]
    assert head["op"] == "MATMUL" and head["dst"][0] == "io"


@pytest.mark.parametrize("slot", ["prefill", "decode"])
def test_run_range_in_two_parts_equals_a_whole_run(session, slot):
    sess, mm = session
    vocab = sess.vocab_size
    ids = [3, 17, 99, 5, 42, 7] if slot == "prefill" else [42]
    _, whole = sess.prefill(np.asarray(ids, np.int32), logits_all=True)
    if slot == "decode":
        sess.reset()
        _, whole = sess.decode(ids[0])
        whole = whole[None, :]
    position = sess.position
    length = len(sess.program(slot))
    for cut in (0, 1, length // 2, length - 1, length):
        # A different state first, so stale activations cannot pass for computed ones.
        _write_ids(sess, mm, [1] * len(ids))
        sess.run_range(slot, 0, len(ids), 0, length, want_logits=True, logits_all=True)
        _write_ids(sess, mm, ids)
        sess.run_range(slot, 0, len(ids), 0, cut, want_logits=True, logits_all=True)
        sess.run_range(slot, 0, len(ids), cut, length, want_logits=True, logits_all=True)
        got = _read_logits(sess, mm, len(ids), vocab)
        np.testing.assert_array_equal(got, whole)
    assert sess.position == position  # partial runs never move the sequence


def test_run_range_default_skips_the_lm_head(session):
    sess, mm = session
    ids = [3, 17, 99]
    _, whole = sess.prefill(np.asarray(ids, np.int32), logits_all=True)
    length = len(sess.program("prefill"))
    # Poison the logits, run without want_logits: the head is skipped, the poison stays.
    io = mm["segments"]["io"]
    poison = np.full(len(ids) * sess.vocab_size, 7.0, np.float32)
    sess.write_hbm(0, int(io["offset"]) + int(io["logits_offset"]), poison)
    _write_ids(sess, mm, ids)
    sess.run_range("prefill", 0, len(ids), 0, length)
    got = _read_logits(sess, mm, len(ids), sess.vocab_size)
    assert np.all(got == 7.0)


def test_lmem_and_hbm_round_trip(session):
    sess, _ = session
    prog = sess.program("prefill")
    data = (np.arange(256) * 7 % 251).astype(np.uint8)
    sess.write_lmem(128, data)
    np.testing.assert_array_equal(sess.read_lmem(128, 256), data)
    halves = np.linspace(-2, 2, 64).astype(np.float16)
    sess.write_lmem(0, halves)
    np.testing.assert_array_equal(sess.read_lmem(0, 128).view(np.float16), halves)
    sess.write_hbm(3, 64, data)
    np.testing.assert_array_equal(sess.read_hbm(3, 64, 256), data)
    with pytest.raises(DeviceError):
        sess.read_lmem(prog.lmem_bytes - 16, 32)
    with pytest.raises(DeviceError):
        sess.write_lmem(prog.lmem_bytes, data)
    with pytest.raises(DeviceError):
        sess.read_hbm(10_000, 0, 4)


def test_run_range_checks_its_arguments(session):
    sess, _ = session
    length = len(sess.program("decode"))
    with pytest.raises(ConfigError):
        sess.run_range("generate", 0, 1, 0, 1)
    with pytest.raises(DeviceError):
        sess.run_range("decode", 0, 1, 0, length + 1)
    with pytest.raises(DeviceError):
        sess.run_range("decode", 0, 1, 2, 1)
    with pytest.raises(DeviceError):
        sess.run_range("decode", 0, 2, 0, length)  # decode carries one token row
    with pytest.raises(ConfigError):
        sess.run_range("decode", sess.max_length, 1, 0, length)


def test_hooks_need_a_one_device_emulator(compiled, tmp_path):
    from hyperdex import xrt as xrt_env
    from hyperdex.compiled.session import session_config
    from hyperdex.presets import device_preset

    mm = read_memory_map(compiled)
    stub = xrt_env.write_stub_xclbin(tmp_path / "lpu.xclbin", mm["device_preset"])
    config = session_config(compiled, mm, mm["param_files"])
    preset = device_preset(mm["device_preset"])
    board = _core.Session.simulated_board(preset, config, str(stub), "lpu", 0.0)
    for call in (
        lambda: board.run_range("decode", 0, 1, 0, 1),
        lambda: board.read_lmem(0, 4),
        lambda: board.write_lmem(0, np.zeros(4, np.uint8)),
        lambda: board.program("decode"),
    ):
        with pytest.raises(DeviceError, match="emulator session"):
            call()
    # HBM access is the Device interface: any backend has it.
    data = np.arange(64, dtype=np.uint8)
    board.write_hbm(1, 0, data)
    np.testing.assert_array_equal(board.read_hbm(1, 0, 64), data)
