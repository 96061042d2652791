"""Regressions of the Python fuzz harnesses' findings (tests/fuzz/README.md): hostile input to
a reader ends in a hyperdex error naming the file and the field, never a bare RecursionError,
ValueError, TypeError, OverflowError, IndexError, ZeroDivisionError or OSError. Each input is
small and made by hand."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import pytest

from hyperdex.errors import CheckpointError, ConfigError, FormatError
from hyperdex.formats import HFCheckpoint, ModelFile
from hyperdex.formats.model_file import shape_problem
from hyperdex.jsonfile import load_json

DEEP_LIST = "[" * 5000 + "]" * 5000
DEEP_OBJECT = '{"k": ' * 3000 + "1" + "}" * 3000
LONG_INT = "1" * 5000
# JSON texts Python's json module parses into something, or raises something else than
# JSONDecodeError / UnicodeDecodeError for.
HOSTILE_JSON = {
    "deep_list": DEEP_LIST,
    "deep_object": DEEP_OBJECT,
    "long_int": '{"a": ' + LONG_INT + "}",
    "lone_surrogate": '{"a": "\\ud800"}',
    "lone_surrogate_key": '{"\\udfff": 1}',
    "not_utf8": '{"a": "\xff"}',
}


def _fail(why: str) -> FormatError:
    return FormatError(f"x.json is corrupt: {why}")


# -- the one JSON loader ------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(HOSTILE_JSON))
def test_load_json_raises_only_the_callers_error(name: str) -> None:
    text = HOSTILE_JSON[name]
    data = text.encode("latin-1") if name == "not_utf8" else text.encode()
    with pytest.raises(FormatError, match=r"x\.json is corrupt: not valid UTF-8 JSON"):
        load_json(data, _fail)


def test_load_json_keeps_good_documents() -> None:
    assert load_json(b'{"a": [1, 2.5, "\\ud83d\\ude00"]}', _fail) == {"a": [1, 2.5, "\U0001f600"]}
    assert load_json('{"a": "\\\\ud800"}', _fail) == {"a": "\\ud800"}  # an escaped backslash
    assert load_json(b'{"a": ' + b"9" * 4000 + b"}", _fail)["a"] == int("9" * 4000)


def test_load_json_lets_a_hook_error_through() -> None:
    def hook(pairs: List[Any]) -> Dict[str, Any]:
        raise ConfigError("named twice")

    with pytest.raises(ConfigError, match="named twice"):
        load_json(b'{"a": 1}', _fail, object_pairs_hook=hook)


@pytest.mark.parametrize(
    ("shape", "itemsize", "problem"),
    [
        ([2, 3], 4, None),
        ([0, 2**62], 1, None),
        ([], 8, None),
        ([0, 2**64], 1, "dimension 18446744073709551616 is past 2^63 - 1"),
        ([2**32, 2**32], 1, "more than 2^63 - 1 bytes"),
        ([2**61, 0], 8, "more than 2^63 - 1 bytes"),
        ([-1], 1, "not an integer >= 0"),
        ([True], 1, "not an integer >= 0"),
        ([1.0], 1, "not an integer >= 0"),
        ("1", 1, "not a list"),
    ],
)
def test_shape_problem(shape: Any, itemsize: int, problem: Any) -> None:
    got = shape_problem(shape, itemsize)
    assert got == problem if problem is None else problem in got


# -- hyperdex_model.bin -------------------------------------------------------------------------


def _model_file(path: Path, header: bytes, data: bytes = b"") -> Path:
    offset = -(-(32 + len(header)) // 64) * 64
    prefix = struct.pack("<8sIIQQ", b"HDXMODEL", 1, zlib.crc32(header), len(header), offset)
    path.write_bytes(prefix + header + bytes(offset - 32 - len(header)) + data)
    return path


def _entry(**kw: Any) -> Dict[str, Any]:
    entry = {"name": "t", "dtype": "f32", "shape": [1], "offset": 0, "nbytes": 4, "crc32": 0}
    entry.update(kw)
    return entry


@pytest.mark.parametrize("name", ["deep_list", "deep_object", "long_int", "lone_surrogate"])
def test_model_file_hostile_json_header(tmp_path: Path, name: str) -> None:
    path = _model_file(tmp_path / "m.bin", HOSTILE_JSON[name].encode())
    with pytest.raises(FormatError, match=r"m\.bin has a malformed header: not valid UTF-8 JSON"):
        ModelFile.open(path)


@pytest.mark.parametrize(
    ("entry", "match"),
    [
        (_entry(dtype=[]), r"tensor 't' has dtype \[\]"),
        (_entry(dtype={}), r"tensor 't' has dtype \{\}"),
        (_entry(shape=[0, 2**64], nbytes=0), r"tensor 't' has invalid shape .*past 2\^63"),
        (_entry(shape=[2**62, 2], nbytes=2**65), r"tensor 't' has invalid shape .*2\^63 - 1 bytes"),
        (_entry(shape="4"), r"tensor 't' has invalid shape '4': it is not a list"),
    ],
    ids=["dtype_list", "dtype_dict", "dim_2_64_empty", "too_many_bytes", "shape_string"],
)
def test_model_file_bad_entry(tmp_path: Path, entry: Dict[str, Any], match: str) -> None:
    header = json.dumps({"tensors": [entry], "metadata": {}}).encode()
    path = _model_file(tmp_path / "m.bin", header, bytes(64))
    with pytest.raises(FormatError, match=match):
        ModelFile.open(path)


# -- safetensors and shard indexes --------------------------------------------------------------


def _safetensors(path: Path, header: bytes, data: bytes = b"") -> None:
    path.write_bytes(struct.pack("<Q", len(header)) + header + data)


@pytest.mark.parametrize("name", ["deep_list", "deep_object", "long_int", "lone_surrogate"])
def test_safetensors_hostile_json_header(tmp_path: Path, name: str) -> None:
    _safetensors(tmp_path / "model.safetensors", HOSTILE_JSON[name].encode())
    with pytest.raises(CheckpointError, match="header is not valid UTF-8 JSON"):
        HFCheckpoint.open(tmp_path)


def test_safetensors_shape_past_numpy(tmp_path: Path) -> None:
    header = {"a": {"dtype": "F32", "shape": [0, 2**64], "data_offsets": [0, 0]}}
    _safetensors(tmp_path / "model.safetensors", json.dumps(header).encode())
    with pytest.raises(CheckpointError, match=r"tensor 'a' has invalid shape \[0, 1844.*2\^63"):
        HFCheckpoint.open(tmp_path)


def _sharded(folder: Path, index: str) -> None:
    header = {"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}
    _safetensors(folder / "model-00001-of-00001.safetensors", json.dumps(header).encode(), bytes(4))
    (folder / "model.safetensors.index.json").write_text(index)


@pytest.mark.parametrize("name", ["deep_list", "deep_object", "long_int", "lone_surrogate"])
def test_shard_index_hostile_json(tmp_path: Path, name: str) -> None:
    _sharded(tmp_path, HOSTILE_JSON[name])
    with pytest.raises(CheckpointError, match=r"cannot read the shard index .*index\.json"):
        HFCheckpoint.open(tmp_path)


def test_shard_name_too_long(tmp_path: Path) -> None:
    _sharded(tmp_path, json.dumps({"weight_map": {"a": "x" * 300 + ".safetensors"}}))
    with pytest.raises(CheckpointError, match="not a plain file name .*at most 255 bytes"):
        HFCheckpoint.open(tmp_path)


# -- GPTQ quantization settings -----------------------------------------------------------------


@pytest.mark.parametrize("name", ["deep_list", "deep_object", "long_int", "lone_surrogate"])
def test_quantize_config_json_hostile(tmp_path: Path, name: str) -> None:
    from hyperdex.formats.gptq_checkpoint import gptq_settings

    (tmp_path / "quantize_config.json").write_text(HOSTILE_JSON[name])
    with pytest.raises(ConfigError, match=r"quantize_config\.json is not valid UTF-8 JSON"):
        gptq_settings({}, tmp_path)


@pytest.mark.parametrize("group_size", [2**31, 2**64, 2**128])
def test_gptq_group_size_is_bounded(group_size: int) -> None:
    from hyperdex.formats.gptq_checkpoint import gptq_settings

    qc = {"quant_method": "gptq", "bits": 4, "group_size": group_size}
    with pytest.raises(ConfigError, match=f"group_size={group_size}; expected a positive"):
        gptq_settings({"quantization_config": qc})


def test_gptq_damp_percent_past_float_range() -> None:
    from hyperdex.formats.gptq_checkpoint import gptq_settings

    qc = {"quant_method": "gptq", "bits": 4, "group_size": 32, "damp_percent": 10**400}
    settings = gptq_settings({"quantization_config": qc})
    assert settings is not None and settings.damp_percent is None


# -- compiled folders: JSON records, paths, device presets --------------------------------------


@pytest.mark.parametrize("name", ["deep_list", "deep_object", "long_int", "lone_surrogate"])
def test_compiled_read_json_hostile(tmp_path: Path, name: str) -> None:
    from hyperdex.compiled.folder import read_json

    path = tmp_path / "compile.json"
    path.write_text(HOSTILE_JSON[name])
    with pytest.raises(
        FormatError, match=r"compile\.json \(compile record\) is corrupt: not valid"
    ):
        read_json(path, "compile record")


def test_compiled_read_json_of_a_folder(tmp_path: Path) -> None:
    from hyperdex.compiled.folder import read_json

    (tmp_path / "compile.json").mkdir()
    with pytest.raises(FormatError, match=r"compile\.json \(compile record\) cannot be read"):
        read_json(tmp_path / "compile.json", "compile record")


def test_model_id_too_long_for_a_path(tmp_path: Path) -> None:
    from hyperdex.compiled.folder import compiled_dir_matches, verify_compiled
    from hyperdex.paths import is_local_model

    for name in ("x" * 300, "a/" + "x" * 300, "~no-such-user-hyperdex/x", "a\0b"):
        assert not is_local_model(name)
    assert not compiled_dir_matches(tmp_path / "a" / "b", "x" * 300, None)
    (tmp_path / "compile.json").write_text(json.dumps({"model_id": "x" * 300, "format": "x"}))
    with pytest.raises(FormatError, match=r"compile\.json is format 'x'"):
        verify_compiled(tmp_path)


def _preset(**changes: Any) -> Dict[str, Any]:
    from hyperdex.presets import load_preset

    preset = load_preset("u55c")
    for key, value in changes.items():
        if value is KeyError:
            preset.pop(key)
        else:
            preset[key] = value
    return preset


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"vector_lanes": KeyError}, "lacks the field 'vector_lanes'"),
        ({"vector_lanes": "F16"}, "field 'vector_lanes' must be a positive int"),
        ({"clock_mhz": {}}, "field 'clock_mhz' must be a positive float"),
        ({"clock_mhz": float("nan")}, "field 'clock_mhz' must be a positive float"),
        ({"clock_mhz": 10**400}, "field 'clock_mhz' must be a positive float"),
        ({"hbm_channels": 2**32}, "field 'hbm_channels' must be a positive int at most"),
        ({"lmem_bytes": 2**64}, "field 'lmem_bytes' must be a positive int at most"),
        ({"issue_cycles": -1}, "field 'issue_cycles' must be a non-negative int"),
        ({"name": 7}, "field 'name' must be a str"),
    ],
)
def test_device_preset_checks_every_field(changes: Dict[str, Any], match: str) -> None:
    from hyperdex.presets import device_preset

    with pytest.raises(ConfigError, match=match):
        device_preset(_preset(**changes))


def test_memory_map_device_preset_names_the_field(tmp_path: Path) -> None:
    from hyperdex.presets import check_preset

    path = tmp_path / "memory_map.json"
    bad = _preset(mac_lanes=KeyError, vector_lanes=[])
    with pytest.raises(FormatError, match=r"memory_map\.json lacks the field 'device_preset\."):
        check_preset(bad, str(path), FormatError, "device_preset.", "recompile the model")
    with pytest.raises(FormatError, match=r"field 'device_preset\.vector_lanes' .*recompile"):
        check_preset(
            _preset(vector_lanes=[]), str(path), FormatError, "device_preset.", "recompile"
        )


@pytest.mark.parametrize(
    ("kind", "value", "ok"),
    [
        ("is_uint", 2**64 - 1, True),
        ("is_uint", 2**64, False),
        ("is_u32", 2**32 - 1, True),
        ("is_u32", 2**32, False),
        ("is_pos32", 0, False),
        ("is_u32", True, False),
    ],
)
def test_schema_integer_kinds_fit_the_core(kind: str, value: int, ok: bool) -> None:
    from hyperdex.compiled import schema

    assert getattr(schema, kind)(value) is ok


# -- GGUF files ---------------------------------------------------------------------------------

KV = {
    "llama.embedding_length": 16,
    "llama.attention.head_count": 2,
    "llama.attention.head_count_kv": 2,
    "llama.feed_forward_length": 32,
    "llama.block_count": 1,
    "llama.context_length": 64,
    "llama.vocab_size": 8,
}


def _gguf(path: Path, kv: Dict[str, Any], tensors: Dict[str, np.ndarray]) -> Path:
    gguf = pytest.importorskip("gguf")
    w = gguf.GGUFWriter(str(path), arch="llama")
    for key, value in kv.items():
        if isinstance(value, float):
            w.add_float32(key, value)
        elif isinstance(value, int):
            w.add_uint32(key, value) if 0 <= value < 2**32 else w.add_int64(key, value)
        elif isinstance(value, bytes):  # a string that is not UTF-8
            w.add_key_value(key, value, gguf.GGUFValueType.STRING)
        elif isinstance(value, str):
            w.add_string(key, value)
        elif isinstance(value, list):
            w.add_array(key, value)
    for name, arr in tensors.items():
        w.add_tensor(name, arr)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _read(path: Path) -> None:
    from hyperdex.tools import real_weights as rw

    pytest.importorskip("torch")
    reader = rw.read_gguf(path)
    config = rw._llama_config(reader, path, "float32")
    rw._hf_tensors(reader, config, "float32")


def test_gguf_reader_errors_are_checkpoint_errors(tmp_path: Path) -> None:
    path = _gguf(tmp_path / "m.gguf", KV, {"output_norm.weight": np.ones(16, np.float32)})
    data = path.read_bytes()
    # Cut in the middle of the key-value section: the library's parser raises IndexError.
    for cut in (30, 60, 100, len(data) // 2):
        (tmp_path / "cut.gguf").write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match=r"cut\.gguf is not a readable GGUF file"):
            _read(tmp_path / "cut.gguf")


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        ("llama.attention.head_count", 0, "'llama.attention.head_count' is 0, expected"),
        ("llama.embedding_length", [1, 2], r"'llama.embedding_length' is \[1, 2\]"),
        ("llama.embedding_length", "16", "'llama.embedding_length' is '16'"),
        ("llama.block_count", -5, "'llama.block_count' is -5"),
        ("llama.context_length", 2**40, "'llama.context_length' is 1099511627776"),
        ("llama.attention.head_count_kv", 3, "'llama.attention.head_count_kv' is 3"),
        ("llama.attention.head_count_kv", [2, 1], "per-layer KV head counts"),
        ("llama.rope.freq_base", float("nan"), "'llama.rope.freq_base' is nan"),
        ("llama.rope.freq_base", "x", "'llama.rope.freq_base' is 'x'"),
        ("tokenizer.ggml.bos_token_id", -1, "'tokenizer.ggml.bos_token_id' is -1"),
        ("general.name", b"\xff\xfe", "'general.name' cannot be decoded"),
        ("general.architecture", b"\xff", "'general.architecture' cannot be decoded"),
    ],
)
def test_gguf_metadata_is_checked(tmp_path: Path, key: str, value: Any, match: str) -> None:
    kv = dict(KV, **{key: value})
    path = _gguf(tmp_path / "m.gguf", kv, {"output_norm.weight": np.ones(16, np.float32)})
    from hyperdex.tools import real_weights as rw

    reader = rw.read_gguf(path)
    with pytest.raises(CheckpointError, match=match):
        if key == "general.name":  # a string _llama_config does not read
            rw._field(reader, key)
        else:
            rw._llama_config(reader, path, "float32")


@pytest.mark.parametrize(
    ("tensors", "match"),
    [
        ({"blk.0.attn_q.weight": np.ones((3, 16), np.float32)}, "rows cannot be split"),
        ({"blk.0.attn_k.weight": np.ones(5, np.float32)}, "rows cannot be split"),
        ({"blk.attn_q.weight": np.ones(4, np.float32)}, "no Hugging Face Llama counterpart"),
        ({"blk.x.attn_q.weight": np.ones(4, np.float32)}, "no Hugging Face Llama counterpart"),
    ],
)
def test_gguf_tensors_are_checked(tmp_path: Path, tensors: Any, match: str) -> None:
    path = _gguf(tmp_path / "m.gguf", KV, tensors)
    with pytest.raises(CheckpointError, match=match):
        _read(path)


def test_compile_record_file_with_a_nul(tmp_path: Path) -> None:
    from hyperdex import __version__
    from hyperdex.compiled import folder as f

    files = [
        {"file": name, "bytes": 0, "crc32": 0}
        for name in ("ckpt/a\0b.json", f.MEMORY_MAP_FILE, f.CONVERTED_CONFIG_FILES[0])
    ]
    info: Dict[str, Any] = {
        "format": f.COMPILE_FORMAT,
        "format_version": f.COMPILE_FORMAT_VERSION,
        "hyperdex_version": __version__,
        "model_id": "org/model",
        "architecture": "LlamaForCausalLM",
        "num_device": 1,
        "max_length": 64,
        "type_device": "u55c",
        "quantization": None,
        "low_memory_usage": False,
        "passes": {},
        "timings_s": {},
        "files": files,
    }
    info["record_crc32"] = f.record_crc32(info)
    (tmp_path / f.COMPILE_INFO_NAME).write_text(json.dumps(info))
    with pytest.raises(FormatError, match=r"field 'files\[0\]\.file' must be a path inside"):
        f.verify_compiled(tmp_path)
