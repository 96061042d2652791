"""hyperdex_model.bin: exact layout, round trips, zero-copy reads, corruption, atomic writes."""

from __future__ import annotations

import json
import os
import struct
import weakref
import zlib
from pathlib import Path
from typing import Iterator, List, Tuple

import numpy as np
import pytest

from hyperdex.errors import FormatError
from hyperdex.formats import (
    MODEL_FILE_MAGIC,
    MODEL_FILE_VERSION,
    ModelFile,
    write_model_file,
)
from hyperdex.formats import model_file as mf_mod


def _tensors() -> List[Tuple[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    out = [
        ("f32", rng.standard_normal((5, 13)).astype(np.float32)),
        ("f16", rng.standard_normal((3, 7, 2)).astype(np.float16)),
        ("i32", rng.integers(-(2**31), 2**31, (17,), dtype=np.int32)),
        ("u8", rng.integers(0, 256, (1, 65), dtype=np.uint8)),
        ("i8", rng.integers(-128, 128, (2, 3, 4, 5), dtype=np.int8)),
        ("scalar", np.array(3.5, dtype=np.float32)),  # 0-d tensors are supported
        ("empty", np.zeros((0,), dtype=np.float16)),
        ("empty_2d", np.zeros((4, 0), dtype=np.int32)),
        ("one", np.array([7], dtype=np.int8)),
        ("f32_special", np.array([np.inf, -np.inf, np.nan, -0.0, 1e-45], dtype=np.float32)),
        ("big_endian", np.arange(6, dtype=">f4").reshape(2, 3)),
        ("strided", np.arange(40, dtype=np.int32).reshape(5, 8)[::2, 1::3].T),
        ("naïve ✓", np.ones((2, 2), dtype=np.float32)),
    ]
    return out


META = {"arch": "llama", "config": {"hidden_size": 32, "rope_theta": 10000.0}, "note": "Grüße"}


def _write(path: Path, tensors=None, **kw) -> Path:
    return write_model_file(path, _tensors() if tensors is None else tensors, META, **kw)


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and a.tobytes() == np.asarray(b, a.dtype, order="C").tobytes()


@pytest.mark.parametrize("lazy", [False, True], ids=["list", "generator"])
def test_round_trip(tmp_path, lazy: bool) -> None:
    src = _tensors()
    path = tmp_path / "hyperdex_model.bin"
    write_model_file(path, iter(src) if lazy else src, META)
    assert os.listdir(tmp_path) == ["hyperdex_model.bin"]
    with ModelFile.open(path) as mf:
        assert mf.names == [n for n, _ in src]
        assert len(mf) == len(src) and "f32" in mf and "nope" not in mf
        assert mf.metadata == META
        for name, ref in src:
            got = mf[name]
            assert got.dtype == ref.dtype.newbyteorder("<") and got.shape == ref.shape
            assert _same(got, ref), name
            info = mf.info(name)
            assert info.nbytes == ref.nbytes and info.shape == ref.shape
        assert mf["scalar"].ndim == 0 and float(mf["scalar"]) == 3.5
        assert mf.info("f16").dtype == "f16" and mf.info("big_endian").dtype == "f32"


def test_exact_layout(tmp_path) -> None:
    """Parse the file by the documented layout alone."""
    path = _write(tmp_path / "m.bin")
    raw = path.read_bytes()
    magic, version, hcrc, hlen, data_offset = struct.unpack_from("<8sIIQQ", raw, 0)
    assert magic == b"HDXMODEL" == MODEL_FILE_MAGIC and version == 1 == MODEL_FILE_VERSION
    header = raw[32 : 32 + hlen]
    assert zlib.crc32(header) == hcrc
    doc = json.loads(header.decode("utf-8"))
    assert set(doc) == {"tensors", "metadata"} and doc["metadata"] == META
    assert data_offset % 64 == 0 and data_offset >= 32 + hlen
    assert raw[32 + hlen : data_offset] == bytes(data_offset - 32 - hlen)
    end = 0
    src = dict(_tensors())
    for e in doc["tensors"]:
        assert set(e) == {"name", "dtype", "shape", "offset", "nbytes", "crc32"}
        assert e["offset"] % 64 == 0 and e["offset"] >= end
        assert raw[data_offset + end : data_offset + e["offset"]] == bytes(e["offset"] - end)
        blob = raw[data_offset + e["offset"] : data_offset + e["offset"] + e["nbytes"]]
        assert zlib.crc32(blob) == e["crc32"]
        want = np.asarray(src[e["name"]], mf_mod.MODEL_FILE_DTYPES[e["dtype"]], order="C")
        assert blob == want.tobytes() and e["shape"] == list(want.shape)
        end = e["offset"] + e["nbytes"]


def test_views_are_zero_copy_aligned_and_read_only(tmp_path) -> None:
    path = _write(tmp_path / "m.bin")
    with ModelFile.open(path) as mf:
        base = None
        for name in mf.names:
            info, arr = mf.info(name), mf[name]
            assert info.offset % 64 == 0
            assert not arr.flags.writeable
            if info.nbytes == 0:
                continue
            assert not arr.flags.owndata and arr.flags.c_contiguous
            addr = arr.__array_interface__["data"][0]
            assert addr % 64 == 0  # the mapping is page-aligned, data_offset and offsets 64
            if base is None:
                base = addr - info.offset
            assert addr - base == info.offset  # one mapping, no copies
            assert np.shares_memory(arr, mf[name])
            with pytest.raises(ValueError):
                arr[...] = 0


def test_views_outlive_close(tmp_path) -> None:
    mf = ModelFile.open(_write(tmp_path / "m.bin"))
    arr = mf["f32"]
    mf.close()
    assert _same(arr, dict(_tensors())["f32"])
    with pytest.raises(ValueError, match="closed"):
        mf["f32"]


def test_writer_streams_one_tensor_at_a_time(tmp_path) -> None:
    def gen() -> Iterator[Tuple[str, np.ndarray]]:
        prev = None
        for i in range(6):
            # The writer must have let go of the last array before asking for the next.
            assert prev is None or prev() is None
            a = np.full((100, 10), i, dtype=np.float32)
            prev = weakref.ref(a)
            yield f"t{i}", a
            del a

    write_model_file(tmp_path / "m.bin", gen(), {})
    with ModelFile.open(tmp_path / "m.bin") as mf:
        assert [float(mf[n][0, 0]) for n in mf.names] == [0, 1, 2, 3, 4, 5]


def test_header_outgrowing_its_reserve(tmp_path) -> None:
    """A generator whose header needs more than the reserve: data is shifted, still exact."""
    src = [
        (f"layer.{i}.weight_with_a_long_name", np.full((i + 1,), i, np.int32)) for i in range(200)
    ]
    path = write_model_file(tmp_path / "m.bin", iter(src), {"k": "v"}, header_reserve=0)
    with ModelFile.open(path) as mf:
        assert mf.data_offset > 4096
        for name, ref in src:
            assert _same(mf[name], ref) and mf.info(name).offset % 64 == 0
    assert os.listdir(tmp_path) == ["m.bin"]


def test_parallel_crc_path(tmp_path, monkeypatch) -> None:
    path = _write(tmp_path / "m.bin")
    monkeypatch.setattr(mf_mod, "_PARALLEL_CRC_BYTES", 0)
    monkeypatch.setattr(mf_mod, "_CHUNK", 16)  # many chunks per tensor
    ModelFile.open(path).close()
    _flip(path, _data_pos(path, "i8") + 100)
    with pytest.raises(FormatError, match="'i8'"):
        ModelFile.open(path)


# -- corruption ----------------------------------------------------------------------------


def _flip(path: Path, pos: int) -> None:
    raw = bytearray(path.read_bytes())
    raw[pos] ^= 0x01
    path.write_bytes(bytes(raw))


def _data_pos(path: Path, name: str) -> int:
    with ModelFile.open(path, verify=False) as mf:
        return mf.data_offset + mf.info(name).offset


def test_flipped_tensor_byte(tmp_path) -> None:
    path = _write(tmp_path / "m.bin")
    _flip(path, _data_pos(path, "f16") + 5)
    with pytest.raises(FormatError, match=r"tensor 'f16' in .*m\.bin is corrupt: CRC-32"):
        ModelFile.open(path)
    with ModelFile.open(path, verify=False) as mf:  # skips the check: data is served as-is
        assert not _same(mf["f16"], dict(_tensors())["f16"])
        assert _same(mf["f32"], dict(_tensors())["f32"])
        with pytest.raises(FormatError, match="'f16'"):
            mf.verify()


def test_flipped_header_byte(tmp_path) -> None:
    path = _write(tmp_path / "m.bin")
    _flip(path, 40)
    with pytest.raises(FormatError, match="corrupt: the CRC-32 of its JSON header"):
        ModelFile.open(path, verify=False)


def test_wrong_magic(tmp_path) -> None:
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00" + b"{}" + bytes(100))
    with pytest.raises(FormatError, match="is not a hyperdex model file"):
        ModelFile.open(path)
    path.write_bytes(b"HDX")  # short, but not a prefix of a model file either
    with pytest.raises(FormatError, match="truncated"):
        ModelFile.open(path)
    path.write_bytes(b"XYZ")
    with pytest.raises(FormatError, match="not a hyperdex model file"):
        ModelFile.open(path)


def test_other_version(tmp_path) -> None:
    path = _write(tmp_path / "m.bin")
    raw = bytearray(path.read_bytes())
    raw[8:12] = struct.pack("<I", 2)
    path.write_bytes(bytes(raw))
    with pytest.raises(
        FormatError, match="format version 2; this hyperdex reads version 1: re-run the conversion"
    ):
        ModelFile.open(path)


def test_truncated(tmp_path) -> None:
    path = _write(tmp_path / "m.bin")
    size = path.stat().st_size
    os.truncate(path, size - 1)
    with pytest.raises(
        FormatError,
        match=rf"truncated: it is {size - 1} bytes but its tensor "
        rf"data \(up to the end of 'naïve ✓'\) needs {size}",
    ):
        ModelFile.open(path)
    os.truncate(path, 100)
    with pytest.raises(FormatError, match=r"truncated: it is 100 bytes but its header needs"):
        ModelFile.open(path)
    os.truncate(path, 20)
    with pytest.raises(
        FormatError, match="truncated: it is 20 bytes but the fixed header needs 32"
    ):
        ModelFile.open(path)
    os.truncate(path, 0)
    with pytest.raises(FormatError, match="truncated: it is 0 bytes"):
        ModelFile.open(path)


def test_missing_file_and_tensor(tmp_path) -> None:
    with pytest.raises(FormatError, match="no hyperdex model file at"):
        ModelFile.open(tmp_path / "nope.bin")
    with ModelFile.open(_write(tmp_path / "m.bin")) as mf:
        with pytest.raises(FormatError, match="has no tensor 'nope'"):
            mf["nope"]


def _rewrite_header(path: Path, edit) -> None:
    """Change the JSON header and re-stamp its CRC, as a buggy writer would."""
    raw = path.read_bytes()
    _, _, _, hlen, data_offset = struct.unpack_from("<8sIIQQ", raw)
    doc = json.loads(raw[32 : 32 + hlen])
    edit(doc)
    new = json.dumps(doc).encode()
    new_offset = -(-(32 + len(new)) // 64) * 64  # tensor offsets are relative: data moves
    head = struct.pack("<8sIIQQ", MODEL_FILE_MAGIC, 1, zlib.crc32(new), len(new), new_offset)
    path.write_bytes(head + new + bytes(new_offset - 32 - len(new)) + raw[data_offset:])


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda d: d["tensors"][1].update(offset=65), "offset 65 is not a multiple of 64"),
        (lambda d: d["tensors"][1].update(offset=0), "'f16'.*'f32'.*overlap"),
        (lambda d: d["tensors"][0].update(nbytes=8), r"nbytes 8, but shape \[5, 13\]"),
        (lambda d: d["tensors"][0].update(dtype="bf16"), "dtype 'bf16'"),
        (lambda d: d["tensors"][2].update(name="f32"), "repeated"),
        (lambda d: d.pop("metadata"), "'metadata' object"),
        (lambda d: d["tensors"][0].update(offset=1 << 40), "truncated"),
    ],
    ids=["misaligned", "overlap", "nbytes", "dtype", "duplicate", "no_metadata", "past_eof"],
)
def test_malformed_header(tmp_path, edit, match) -> None:
    path = _write(tmp_path / "m.bin")
    _rewrite_header(path, edit)
    with pytest.raises(FormatError, match=match):
        ModelFile.open(path, verify=False)


# -- atomic writes -------------------------------------------------------------------------


def _failing(exc: BaseException) -> Iterator[Tuple[str, np.ndarray]]:
    for i, (name, arr) in enumerate(_tensors()):
        if i == 4:
            raise exc
        yield name, arr


@pytest.mark.parametrize("exc", [RuntimeError("producer failed"), KeyboardInterrupt()])
def test_interrupted_write_leaves_nothing(tmp_path, exc) -> None:
    path = tmp_path / "hyperdex_model.bin"
    with pytest.raises(type(exc)):
        write_model_file(path, _failing(exc), META)
    assert os.listdir(tmp_path) == []


def test_failed_write_keeps_the_old_file(tmp_path) -> None:
    path = _write(tmp_path / "hyperdex_model.bin")
    before = path.read_bytes()
    with pytest.raises(KeyboardInterrupt):
        write_model_file(path, _failing(KeyboardInterrupt()), {"other": 1})
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["hyperdex_model.bin"]
    _write(path, [("x", np.zeros(3, np.float32))])  # a later write replaces it
    with ModelFile.open(path) as mf:
        assert mf.names == ["x"]


@pytest.mark.parametrize(
    ("tensors", "meta", "err", "match"),
    [
        ([("a", np.zeros(2, np.float64))], {}, ValueError, "dtype float64.*cast it first"),
        ([("a", np.zeros(2, np.bool_))], {}, ValueError, "dtype bool"),
        (
            [("a", np.zeros(2, np.int8)), ("a", np.zeros(1, np.int8))],
            {},
            ValueError,
            "'a' is given twice",
        ),
        ([("", np.zeros(2, np.int8))], {}, ValueError, "non-empty"),
        ([("a", [1, 2])], {}, TypeError, "expected a numpy array"),
        ([("a", np.zeros(2, np.int8))], {"x": float("nan")}, ValueError, "strict JSON"),
        ([("a", np.zeros(2, np.int8))], {"x": object()}, ValueError, "strict JSON"),
    ],
)
def test_bad_input(tmp_path, tensors, meta, err, match) -> None:
    for src in (tensors, iter(tensors)):
        with pytest.raises(err, match=match):
            write_model_file(tmp_path / "m.bin", src, meta)
        assert os.listdir(tmp_path) == []
