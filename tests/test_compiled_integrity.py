"""Every JSON file of a compiled folder that changes results is checked at load: compile.json
records their sizes and CRC-32s (and a CRC of itself), so an edit that keeps a file valid JSON
is a FormatError naming the file and the compile() call that rebuilds it; a structural edit
names the file and the field; fast_compile rebuilds what was edited (docs/formats.md,
"compile.json")."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any, Callable, Dict

import helpers as H
import pytest
import torch

from hyperdex.errors import FormatError
from hyperdex.tools import AutoCompiler
from hyperdex.transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

MAX_LENGTH = 64
PROMPT = torch.tensor([[1, 2, 3, 4, 5]])


def _compile(src: Path, prefix: Path, **kw: Any) -> Path:
    kw.setdefault("max_length", MAX_LENGTH)
    return Path(AutoCompiler().compile(model_id=str(src), prefix=str(prefix), progress=False, **kw))


def _tokens(folder: Path) -> list:
    lm = AutoModelForCausalLM.from_pretrained(folder, device_map={"lpu": 1})
    return lm.generate(PROMPT, max_new_tokens=8, do_sample=False)[0].tolist()


@pytest.fixture(scope="module")
def source(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private copy of the tiny Llama: compiled folders hard-link its files into ckpt/, so
    an edit of ckpt/config.json must never reach the session's shared fixture."""
    dst = tmp_path_factory.mktemp("integrity_src") / "tiny-llama"
    shutil.copytree(tiny_llama, dst)
    return dst


@pytest.fixture(scope="module")
def compiled(source: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _compile(source, tmp_path_factory.mktemp("integrity"))


@pytest.fixture(scope="module")
def reference(compiled: Path) -> list:
    return _tokens(compiled)


@pytest.fixture
def folder(compiled: Path, tmp_path: Path) -> Path:
    """A copy of the compiled folder (new inodes: edits reach neither the source nor the
    module's compile)."""
    dst = tmp_path / "model"
    shutil.copytree(compiled, dst)
    return dst


def _edit(path: Path, change: Callable[[Dict[str, Any]], None]) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.unlink()  # a new file, as an editor writes one
    path.write_text(json.dumps(data, indent=2))


def _shift(section: Dict[str, Any], key: str, by: int) -> None:
    section[key] = int(section[key]) + by


# -- edits that keep the JSON valid: each one changed what generate returns -------------------

EDITS = {
    # generate returned zeros / wrong tokens before
    "logits_offset": (
        "config/memory_map.json",
        lambda d: _shift(d["segments"]["io"], "logits_offset", 64),
    ),
    "ids_offset": (
        "config/memory_map.json",
        lambda d: _shift(d["segments"]["io"], "ids_offset", 64),
    ),
    "norm_eps": ("ckpt/hyperdex_config.json", lambda d: d["model"].update(norm_eps=0.5)),
    "hf_config": ("ckpt/config.json", lambda d: d.update(rms_norm_eps=0.5)),
    "generation_config": ("ckpt/generation_config.json", lambda d: d.update(eos_token_id=7)),
    "compile_record": ("compile.json", lambda d: d.update(max_length=32)),
}


def test_unedited_copy_loads(folder: Path, reference: list) -> None:
    assert _tokens(folder) == reference


@pytest.mark.parametrize("edit", sorted(EDITS))
def test_edited_json_is_rejected_at_load(folder: Path, edit: str) -> None:
    rel, change = EDITS[edit]
    _edit(folder / rel, change)
    with pytest.raises(FormatError) as e:
        AutoModelForCausalLM.from_pretrained(folder, device_map={"lpu": 1})
    msg = str(e.value)
    assert str(folder / rel) in msg, msg
    assert "changed after the compile" in msg and "recompile" in msg, msg
    assert "AutoCompiler().compile(" in msg and "fast_compile=True" in msg, msg
    # The other entry points resolve the folder the same way.
    with pytest.raises(FormatError, match="changed after the compile"):
        AutoConfig.from_pretrained(folder)
    with pytest.raises(FormatError, match="changed after the compile"):
        AutoTokenizer.from_pretrained(folder)


def test_the_hint_is_the_call_that_rebuilds_the_folder(compiled: Path, source: Path) -> None:
    """In place (not a copy), the hint names the model, its prefix and the options."""
    from hyperdex.compiled.folder import recompile_call, verify_compiled

    call = recompile_call(compiled, verify_compiled(compiled))
    assert f"model_id={str(source)!r}" in call
    assert f"prefix={str(compiled.parents[1])!r}" in call
    assert f"max_length={MAX_LENGTH}" in call and "num_device=1" in call


def test_a_file_added_to_ckpt_is_rejected(folder: Path) -> None:
    (folder / "ckpt" / "special_tokens_map.json").write_text('{"eos_token": "</s>"}')
    with pytest.raises(FormatError) as e:
        AutoModelForCausalLM.from_pretrained(folder, device_map={"lpu": 1})
    assert "special_tokens_map.json" in str(e.value) and "added after the compile" in str(e.value)


def test_a_recorded_file_removed_is_rejected(folder: Path) -> None:
    (folder / "ckpt" / "generation_config.json").unlink()
    with pytest.raises(FormatError, match="generation_config.json is missing"):
        AutoModelForCausalLM.from_pretrained(folder, device_map={"lpu": 1})


def test_compile_record_of_the_previous_format(folder: Path) -> None:
    """A folder compiled before compile.json recorded checksums (format 1) is recompiled."""
    _edit(folder / "compile.json", lambda d: d.update(format_version=1))
    with pytest.raises(FormatError) as e:
        AutoModelForCausalLM.from_pretrained(folder, device_map={"lpu": 1})
    assert "compile.json" in str(e.value) and "version 1" in str(e.value)
    assert "recompile" in str(e.value)


# -- structural edits: the file and the field, never a bare KeyError / TypeError ---------------


def _pop(key: str) -> Callable[[Dict[str, Any]], None]:
    return lambda d: d.pop(key)


STRUCTURAL = {
    "io_offset_a_string": (
        "config/memory_map.json",
        lambda d: d["segments"]["io"].update(logits_offset="4096"),
        "segments.io.logits_offset",
    ),
    "io_offset_missing": (
        "config/memory_map.json",
        lambda d: d["segments"]["io"].pop("ids_offset"),
        "segments.io.ids_offset",
    ),
    "region_offset_missing": (
        "config/memory_map.json",
        lambda d: d["regions"][3].pop("offset"),
        "regions[3].offset",
    ),
    "param_files_not_a_list": (
        "config/memory_map.json",
        lambda d: d.update(param_files={"file": "param/hbm_ch00.bin"}),
        "param_files",
    ),
    "channel_bytes_negative": (
        "config/memory_map.json",
        lambda d: d["channel_bytes"].__setitem__(1, -1),
        "channel_bytes[1]",
    ),
    "model_not_an_object": (
        "ckpt/hyperdex_config.json",
        lambda d: d.update(model=[1, 2]),
        "model",
    ),
    "num_kv_heads_missing": (
        "ckpt/hyperdex_config.json",
        lambda d: d["model"].pop("num_kv_heads"),
        "model.num_kv_heads",
    ),
    # fuzz findings: numbers past the C++ fields (a bare pybind TypeError in session_config)
    "channel_bytes_past_uint64": (
        "config/memory_map.json",
        lambda d: d["channel_bytes"].__setitem__(0, 2**64),
        "channel_bytes[0]",
    ),
    "param_file_bytes_past_uint64": (
        "config/memory_map.json",
        lambda d: d["param_files"][0].update(bytes=2**64),
        "param_files[0].bytes",
    ),
    "param_file_crc_past_uint32": (
        "config/memory_map.json",
        lambda d: d["param_files"][0].update(crc32=2**32),
        "param_files[0].crc32",
    ),
    "region_rows_past_uint32": (
        "config/memory_map.json",
        lambda d: d["regions"][0].update(rows=2**32),
        "regions[0].rows",
    ),
    # fuzz findings: the device preset (a bare KeyError / TypeError / ValueError before)
    "device_preset_key_missing": (
        "config/memory_map.json",
        lambda d: d["device_preset"].pop("vector_lanes"),
        "device_preset.vector_lanes",
    ),
    "device_preset_key_a_string": (
        "config/memory_map.json",
        lambda d: d["device_preset"].update(mac_lanes="F16"),
        "device_preset.mac_lanes",
    ),
    "device_preset_key_an_object": (
        "config/memory_map.json",
        lambda d: d["device_preset"].update(clock_mhz={}),
        "device_preset.clock_mhz",
    ),
    "num_device_a_string": ("compile.json", lambda d: d.update(num_device="1"), "num_device"),
    "record_crc_past_uint32": (
        "compile.json",
        lambda d: d.update(record_crc32=2**32),
        "record_crc32",
    ),
    "files_missing": ("compile.json", _pop("files"), "files"),
    "file_record_without_crc": (
        "compile.json",
        lambda d: d["files"][0].pop("crc32"),
        "files[0].crc32",
    ),
}


@pytest.mark.parametrize("edit", sorted(STRUCTURAL))
def test_structural_edit_names_the_file_and_the_field(folder: Path, edit: str) -> None:
    rel, change, field = STRUCTURAL[edit]
    _edit(folder / rel, change)
    with pytest.raises(FormatError) as e:
        AutoModelForCausalLM.from_pretrained(folder, device_map={"lpu": 1})
    msg = str(e.value)
    assert str(folder / rel) in msg and f"field {field!r}" in msg, msg
    assert "recompile" in msg, msg


@pytest.mark.parametrize(
    "text",
    ["[" * 5000 + "]" * 5000, '{"k": ' * 3000 + "1" + "}" * 3000, '{"a": ' + "1" * 5000 + "}"],
    ids=["deep_list", "deep_object", "long_int"],
)
@pytest.mark.parametrize("rel", ["compile.json", "config/memory_map.json"])
def test_hostile_json_is_a_format_error(folder: Path, rel: str, text: str) -> None:
    """Nesting past the recursion limit, an integer past Python's digit limit (fuzz findings:
    a bare RecursionError / ValueError from read_json and _verify_file before)."""
    from hyperdex.compiled.folder import verify_compiled

    (folder / rel).write_text(text)
    with pytest.raises(FormatError, match=f"{re.escape(str(folder / rel))}.* is corrupt: not"):
        verify_compiled(folder)


def test_read_memory_map_checks_the_structure(folder: Path) -> None:
    """read_memory_map (the profiler reads the map through it) checks it on its own too."""
    from hyperdex.compiled.folder import read_memory_map

    _edit(folder / "config" / "memory_map.json", lambda d: d["segments"].pop("io"))
    with pytest.raises(FormatError, match="'segments.io'"):
        read_memory_map(folder)


# -- fast_compile rebuilds what was edited ---------------------------------------------------


def test_fast_compile_rebuilds_an_edited_hyperdex_config(
    source: Path, tmp_path: Path, reference: list
) -> None:
    """hyperdex_model.bin carries the real config under its header CRC: an edited
    hyperdex_config.json (norm_eps) is stale, so fast_compile converts again (and the model is
    the compiled one: same tokens), where it used to map the edited config."""
    path = _compile(source, tmp_path)
    config = path / "ckpt" / "hyperdex_config.json"
    model_bin = (path / "ckpt" / "hyperdex_model.bin").stat().st_mtime_ns
    _edit(config, lambda d: d["model"].update(norm_eps=0.5))
    with pytest.raises(FormatError, match="hyperdex_config.json was changed"):
        _tokens(path)
    assert _compile(source, tmp_path, fast_compile=True) == path
    assert json.loads(config.read_text())["model"]["norm_eps"] != 0.5
    assert (path / "ckpt" / "hyperdex_model.bin").stat().st_mtime_ns != model_bin  # converted
    assert _tokens(path) == reference


def test_fast_compile_sees_a_config_edited_with_its_stamp(source: Path, tmp_path: Path) -> None:
    """The stamp's checksum of hyperdex_config.json edited along with the file: the comparison
    with the config inside hyperdex_model.bin still finds it stale."""
    path = _compile(source, tmp_path)
    ckpt = path / "ckpt"
    _edit(ckpt / "hyperdex_config.json", lambda d: d["model"].update(norm_eps=0.5))
    from hyperdex.formats.atomic import file_crc32

    stamp = json.loads((ckpt / ".stamp.json").read_text())
    stamp["outputs"]["hyperdex_config.json"] = list(file_crc32(ckpt / "hyperdex_config.json"))
    (ckpt / ".stamp.json").write_text(json.dumps(stamp))
    _compile(source, tmp_path, fast_compile=True)
    assert json.loads((ckpt / "hyperdex_config.json").read_text())["model"]["norm_eps"] != 0.5


@pytest.mark.parametrize("edit", ["logits_offset", "ids_offset", "hf_config", "generation_config"])
def test_fast_compile_rebuilds_other_edited_files(
    source: Path, tmp_path: Path, reference: list, edit: str
) -> None:
    path = _compile(source, tmp_path)
    rel, change = EDITS[edit]
    _edit(path / rel, change)  # a new file: a hard link to the source is replaced, not edited
    with pytest.raises(FormatError, match="changed after the compile"):
        _tokens(path)
    _compile(source, tmp_path, fast_compile=True)
    assert _tokens(path) == reference


def test_quantized_config_is_checked(source: Path, tmp_path: Path) -> None:
    """ckpt/quantized/hyperdex_config.json (a quantized compile) is recorded and checked too,
    and fast_compile quantizes again when it was edited."""
    path = _compile(source, tmp_path, quantization="rtn-w4a16")
    rel = "ckpt/quantized/hyperdex_config.json"
    listed = [f["file"] for f in json.loads((path / "compile.json").read_text())["files"]]
    assert rel in listed
    tokens = _tokens(path)
    _edit(path / rel, lambda d: d["model"].update(norm_eps=0.5))
    with pytest.raises(FormatError, match="quantized/hyperdex_config.json was changed"):
        _tokens(path)
    _compile(source, tmp_path, quantization="rtn-w4a16", fast_compile=True)
    assert _tokens(path) == tokens


def test_reseal_helper(folder: Path) -> None:
    """tests/helpers.reseal: a test that edits a memory map on purpose (to test the checks
    behind this one) records the new checksums, and the folder loads past verify_compiled."""
    from hyperdex.compiled.folder import verify_compiled

    _edit(folder / "config" / "memory_map.json", lambda d: d.update(note="edited on purpose"))
    with pytest.raises(FormatError):
        verify_compiled(folder)
    H.reseal(folder)
    verify_compiled(folder)
