"""The user-facing API around a compiled model: AutoConfig, AutoTokenizer, how
``from_pretrained`` finds what ``compile`` made, the compiled folder's layout and integrity
(memory map, param file sizes and CRCs), ``fast_compile`` and ``low_memory_usage``."""

from __future__ import annotations

import json
import os
import shutil
import time
import zlib
from pathlib import Path
from typing import Any, Dict, List, Tuple

import helpers as H
import numpy as np
import pytest
import torch

from hyperdex.errors import ConfigError, FormatError
from hyperdex.paths import compiled_dir
from hyperdex.tools import AutoCompiler
from hyperdex.transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

MAX_LENGTH = 64


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("api") / "tiny-gpt2"
    H.make_hf_model("gpt2", folder, seed=0)
    return folder


@pytest.fixture(scope="module")
def hf_model(hf_folder: Path) -> Any:
    return H.load_hf_model(hf_folder)


@pytest.fixture(scope="module")
def compiled(hf_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Compiled once for the read-only tests of this module."""
    return Path(H.compile_model(hf_folder, tmp_path_factory.mktemp("api_out"), MAX_LENGTH))


def _compile(folder: Path, prefix: Path, **kw: Any) -> str:
    kw.setdefault("max_length", MAX_LENGTH)
    return AutoCompiler().compile(
        model_id=str(folder), num_device=1, prefix=str(prefix), progress=False, **kw
    )


def _mtimes(folder: Path) -> Dict[str, Tuple[int, int]]:
    """name -> (mtime_ns, inode): changes when a file is rewritten (written to a temporary
    file and renamed) even where mtimes are coarse."""
    return {
        p.name: (p.stat().st_mtime_ns, p.stat().st_ino)
        for p in sorted(folder.iterdir())
        if p.is_file()
    }


IDS = torch.tensor([[5, 17, 300, 2, 99, 41]])


def _assert_runs_like(path: Any, hf_model: Any) -> None:
    lm = AutoModelForCausalLM.from_pretrained(path, device_map={"lpu": 1})
    ours = lm(IDS).logits.numpy()
    with torch.no_grad():
        ref = hf_model(IDS).logits.numpy()
    assert H.within(ours, ref, 2e-2, 1e-2), H.max_abs_diff(ours, ref)


# -- AutoConfig -------------------------------------------------------------------------------


def test_auto_config(compiled: Path, hf_folder: Path) -> None:
    cfg = AutoConfig.from_pretrained(compiled)
    # the compile's runtime parameters
    assert cfg.num_device == 1
    assert cfg.max_length == MAX_LENGTH
    assert cfg.type_device == "u55c"
    assert cfg.quantization is None
    assert cfg.architecture == "GPT2LMHeadModel" and cfg.architectures == ["GPT2LMHeadModel"]
    # the HF config's fields, as transformers users know them
    hf = json.loads((hf_folder / "config.json").read_text())
    assert cfg.vocab_size == hf["vocab_size"] == H.VOCAB
    assert cfg.n_embd == 64 and cfg.n_layer == 2 and cfg.n_head == 4
    assert cfg.n_positions == H.MAX_POS
    assert cfg.model_type == "gpt2"
    with pytest.raises(AttributeError, match="no_such_field"):
        cfg.no_such_field  # noqa: B018
    d = cfg.to_dict()
    assert d["num_device"] == 1 and d["max_length"] == MAX_LENGTH and d["type_device"] == "u55c"
    assert d["n_embd"] == 64 and d["vocab_size"] == H.VOCAB
    assert "num_device=1" in repr(cfg) and "max_length=64" in repr(cfg)
    assert cfg.compiled_folder == compiled
    # the loaded model carries the same config
    lm = AutoModelForCausalLM.from_pretrained(compiled, device_map={"lpu": 1})
    assert lm.config.max_length == MAX_LENGTH and lm.config.n_embd == 64
    assert lm.max_length == MAX_LENGTH and lm.vocab_size == H.VOCAB


def test_auto_config_by_model_id_and_prefix(compiled: Path, hf_folder: Path) -> None:
    prefix = compiled.parents[1]
    cfg = AutoConfig.from_pretrained(str(hf_folder), prefix=str(prefix))
    assert cfg.compiled_folder == compiled
    assert cfg.max_length == MAX_LENGTH


def test_auto_classes_are_not_instantiable() -> None:
    for cls in (AutoConfig, AutoModelForCausalLM, AutoTokenizer):
        with pytest.raises(TypeError, match="from_pretrained"):
            cls()


# -- AutoTokenizer ----------------------------------------------------------------------------


def test_auto_tokenizer_without_tokenizer_files(compiled: Path) -> None:
    with pytest.raises(ConfigError) as e:
        AutoTokenizer.from_pretrained(compiled)
    msg = str(e.value)
    assert "no tokenizer files" in msg and "tokenizer.json" in msg
    assert "recompile" in msg or "token ids" in msg  # what to do


def test_auto_tokenizer_with_tokenizer_files(hf_folder: Path, tmp_path: Path) -> None:
    """The tokenizer travels into the compiled folder and loads offline from there."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    folder = tmp_path / "with-tokenizer"
    shutil.copytree(hf_folder, folder)
    vocab = {f"w{i}": i for i in range(H.VOCAB - 1)}
    vocab["[UNK]"] = H.VOCAB - 1
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]").save_pretrained(str(folder))
    path = _compile(folder, tmp_path / "out")
    shutil.rmtree(folder)  # the compiled folder must be self-contained
    tokenizer = AutoTokenizer.from_pretrained(path)
    assert tokenizer("w5 w17 w300")["input_ids"] == [5, 17, 300]
    assert tokenizer.decode([5, 17]) == "w5 w17"


# -- from_pretrained finds compile's output -----------------------------------------------------


def test_from_pretrained_finds_compile_output(
    hf_folder: Path, hf_model: Any, tmp_path: Path
) -> None:
    prefix = tmp_path / "prefix"
    path = Path(_compile(hf_folder, prefix))
    assert path == compiled_dir(str(hf_folder), str(prefix))
    assert path.is_relative_to(prefix)
    by_id = AutoModelForCausalLM.from_pretrained(
        str(hf_folder), prefix=str(prefix), device_map={"lpu": 1}
    )
    assert by_id.folder == path
    np.testing.assert_array_equal(
        by_id(IDS).logits.numpy(),
        AutoModelForCausalLM.from_pretrained(path, device_map={"lpu": 1})(IDS).logits.numpy(),
    )
    # AutoCompiler(prefix=...) and HYPERDEX_HOME work the same way
    path2 = AutoCompiler(prefix=str(prefix)).compile(
        str(hf_folder), max_length=MAX_LENGTH, progress=False
    )
    assert Path(path2) == path
    # a model id that was never compiled under this prefix: a clear error
    with pytest.raises(FormatError, match="no compiled model") as e:
        AutoModelForCausalLM.from_pretrained(str(hf_folder), prefix=str(tmp_path / "other"))
    assert "compile(" in str(e.value)


def test_hyperdex_home_is_the_default_prefix(
    hf_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HYPERDEX_HOME", str(tmp_path / "home"))
    path = AutoCompiler().compile(str(hf_folder), max_length=MAX_LENGTH, progress=False)
    assert Path(path).is_relative_to(tmp_path / "home")
    lm = AutoModelForCausalLM.from_pretrained(str(hf_folder))  # no prefix, no device_map
    assert lm.folder == Path(path)


def test_same_folder_name_in_two_places(hf_folder: Path, tmp_path: Path) -> None:
    """Two local folders named alike compile to different places (path hash)."""
    other = tmp_path / "elsewhere" / hf_folder.name
    other.parent.mkdir()
    H.make_hf_model("gpt2", other, seed=1)
    a = _compile(hf_folder, tmp_path / "out")
    b = _compile(other, tmp_path / "out")
    assert a != b and Path(a).name.startswith(hf_folder.name)
    la = AutoModelForCausalLM.from_pretrained(str(hf_folder), prefix=str(tmp_path / "out"))
    lb = AutoModelForCausalLM.from_pretrained(str(other), prefix=str(tmp_path / "out"))
    assert not np.array_equal(la(IDS).logits.numpy(), lb(IDS).logits.numpy())


# -- the compiled folder ------------------------------------------------------------------------


def test_compiled_folder_layout(compiled: Path, hf_folder: Path) -> None:
    for rel in (
        "ckpt/hyperdex_config.json",
        "ckpt/hyperdex_model.bin",
        "ckpt/config.json",
        "config/memory_map.json",
        "inst/prefill.bin",
        "inst/decode.bin",
        "compile.json",
    ):
        assert (compiled / rel).is_file(), rel
    params = sorted(p.name for p in (compiled / "param").iterdir())
    assert params == [f"hbm_ch{c:02d}.bin" for c in range(32)]  # u55c: 32 pseudo-channels
    info = json.loads((compiled / "compile.json").read_text())
    assert info["num_device"] == 1 and info["max_length"] == MAX_LENGTH
    assert info["type_device"] == "u55c" and info["architecture"] == "GPT2LMHeadModel"
    assert info["model_id"] == str(hf_folder)
    hdx = json.loads((compiled / "ckpt" / "hyperdex_config.json").read_text())
    assert hdx["format"] == "hyperdex-config" and hdx["architecture"] == "GPT2LMHeadModel"
    assert hdx["model"]["vocab_size"] == H.VOCAB and hdx["model"]["hidden_size"] == 64
    # nothing half-written is left behind
    leftovers = [
        str(p.relative_to(compiled))
        for p in compiled.rglob("*")
        if p.name.endswith((".tmp", ".partial")) or ".tmp-" in p.name or ".tmp." in p.name
    ]
    assert leftovers == []


def test_recompile_leaves_no_partial_files(hf_folder: Path, tmp_path: Path) -> None:
    """BUG: compiling a local folder a second time leaves ckpt/config.json.partial,
    ckpt/model.safetensors.partial, ... behind. fetch.copy_local hard-links the source file
    to ``<name>.partial`` and renames it over ``<name>``; when ``<name>`` already is a hard
    link to the same file (the first compile made it), rename(2) does nothing and the
    .partial link stays. With low_memory_usage=True the leftover model.safetensors.partial
    keeps the HF weights in ckpt/ (see test_low_memory_usage)."""
    path = Path(_compile(hf_folder, tmp_path / "out"))
    _compile(hf_folder, tmp_path / "out")
    leftovers = sorted(p.name for p in (path / "ckpt").iterdir() if p.name.endswith(".partial"))
    assert leftovers == []


def _memory_map(compiled: Path) -> Dict[str, Any]:
    return json.loads((compiled / "config" / "memory_map.json").read_text())


def _spans_disjoint(spans: List[Tuple[int, int, str]]) -> None:
    spans = sorted(spans)
    for (a0, a1, an), (b0, b1, bn) in zip(spans, spans[1:]):
        assert a0 <= a1, an
        assert a1 <= b0, f"{an} [{a0}, {a1}) overlaps {bn} [{b0}, {b1})"


def test_memory_map_regions_do_not_overlap(compiled: Path) -> None:
    mm = _memory_map(compiled)
    assert mm["format"] == "hyperdex-memory-map"
    assert mm["num_channels"] == 32 and len(mm["channel_bytes"]) == 32
    assert mm["max_length"] == MAX_LENGTH and mm["vocab_size"] == H.VOCAB
    seg = mm["segments"]
    w, k = seg["weights"], seg["kv_cache"]
    weights = (w["offset"], w["offset"] + w["bytes_per_channel"])
    kv = (k["offset"], k["offset"] + k["bytes_per_channel"])
    io = (seg["io"]["offset"], seg["io"]["offset"] + seg["io"]["bytes"])
    _spans_disjoint([(*weights, "weights"), (*kv, "kv_cache"), (*io, "io")])
    # per-channel usage covers the segments and fits the pseudo-channel
    assert all(b <= mm["channel_capacity"] for b in mm["channel_bytes"])
    assert mm["channel_bytes"][seg["io"]["channel"]] >= io[1]
    assert min(mm["channel_bytes"]) >= kv[1]
    # io sub-buffers lie inside the io segment
    for key in ("ids_offset", "argmax_offset", "logits_offset"):
        assert 0 <= seg["io"][key] < seg["io"]["bytes"]
    assert seg["io"]["logits_offset"] + 4 * H.VOCAB * mm["max_tokens"] <= seg["io"]["bytes"]
    # regions: disjoint, each inside the segment of its kind, big enough for its rows
    regions = mm["regions"]
    assert len({r["name"] for r in regions}) == len(regions)
    _spans_disjoint(
        [(r["offset"], r["offset"] + r["bytes_per_channel"], r["name"]) for r in regions]
    )
    for r in regions:
        lo, hi = kv if r["kind"] == "KvCache" else weights
        assert lo <= r["offset"] and r["offset"] + r["bytes_per_channel"] <= hi, r["name"]
        assert r["bytes_per_channel"] * mm["num_channels"] >= r["rows"] * r["row_bytes"], r["name"]
        if r["kind"] == "Matrix":
            assert r["row_bytes"] >= 2 * r["cols"], r["name"]  # fp16 rows
    # every converted tensor is in exactly one region
    from hyperdex.formats import ModelFile

    with ModelFile.open(compiled / "ckpt" / "hyperdex_model.bin") as mf:
        names = set(mf.names)
    sources = [s for r in regions for s in r["sources"]]
    assert sorted(sources) == sorted(names)
    assert sum(r["kind"] == "KvCache" for r in regions) == 2 * 2  # k and v, 2 layers


def test_param_files_match_memory_map(compiled: Path) -> None:
    mm = _memory_map(compiled)
    files = mm["param_files"]
    assert [f["file"] for f in files] == [f"param/hbm_ch{c:02d}.bin" for c in range(32)]
    for f in files:
        data = (compiled / f["file"]).read_bytes()
        assert len(data) == f["bytes"] == mm["segments"]["weights"]["bytes_per_channel"], f["file"]
        assert zlib.crc32(data) == f["crc32"], f["file"]
    # the weights are really spread over the channels
    assert sum(any((compiled / f["file"]).read_bytes()) for f in files) == 32


# -- fast_compile -------------------------------------------------------------------------------


def test_fast_compile_skips_unchanged_work(hf_folder: Path, hf_model: Any, tmp_path: Path) -> None:
    path = Path(_compile(hf_folder, tmp_path / "out"))
    before = {d: _mtimes(path / d) for d in ("param", "inst", "config")}
    model_bin = (path / "ckpt" / "hyperdex_model.bin").stat().st_mtime_ns
    time.sleep(0.02)
    compiler = AutoCompiler()
    assert compiler.compile(
        str(hf_folder),
        max_length=MAX_LENGTH,
        prefix=str(tmp_path / "out"),
        fast_compile=True,
        progress=False,
    ) == str(path)
    after = {d: _mtimes(path / d) for d in ("param", "inst", "config")}
    assert after == before, "fast_compile rewrote files of an unchanged model"
    assert (path / "ckpt" / "hyperdex_model.bin").stat().st_mtime_ns == model_bin
    _assert_runs_like(path, hf_model)
    # without fast_compile everything is redone
    time.sleep(0.02)
    _compile(hf_folder, tmp_path / "out")
    assert _mtimes(path / "param") != before["param"]


def test_fast_compile_redoes_what_changed(hf_folder: Path, hf_model: Any, tmp_path: Path) -> None:
    path = Path(_compile(hf_folder, tmp_path / "out"))
    before = _mtimes(path / "param")
    model_bin = (path / "ckpt" / "hyperdex_model.bin").stat().st_mtime_ns
    time.sleep(0.02)
    _compile(hf_folder, tmp_path / "out", fast_compile=True, max_length=2 * MAX_LENGTH)
    assert _mtimes(path / "param") != before  # remapped for the new max_length
    assert (path / "ckpt" / "hyperdex_model.bin").stat().st_mtime_ns == model_bin  # same weights
    mm = _memory_map(path)
    assert mm["max_length"] == 2 * MAX_LENGTH
    assert json.loads((path / "compile.json").read_text())["max_length"] == 2 * MAX_LENGTH
    lm = AutoModelForCausalLM.from_pretrained(path, device_map={"lpu": 1})
    assert lm.max_length == 2 * MAX_LENGTH
    long_ids = torch.tensor(np.random.default_rng(0).integers(0, H.VOCAB, (1, 100)))
    with torch.no_grad():
        ref = hf_model(long_ids).logits.numpy()
    assert H.within(lm(long_ids).logits.numpy(), ref, 2e-2, 1e-2)


def test_fast_compile_sees_new_weights(tmp_path: Path) -> None:
    """Weights changed in place (same file size): fast_compile must convert again."""
    folder = tmp_path / "model"
    H.make_hf_model("gpt2", folder, seed=0)
    path = Path(_compile(folder, tmp_path / "out"))
    new = H.make_hf_model("gpt2", folder, seed=1)  # same shapes, other values
    _compile(folder, tmp_path / "out", fast_compile=True)
    lm = AutoModelForCausalLM.from_pretrained(path, device_map={"lpu": 1})
    with torch.no_grad():
        ref = new(IDS).logits.numpy()
    assert H.within(lm(IDS).logits.numpy(), ref, 2e-2, 1e-2)


# -- low_memory_usage ---------------------------------------------------------------------------


def test_low_memory_usage(hf_folder: Path, hf_model: Any, tmp_path: Path) -> None:
    path = Path(_compile(hf_folder, tmp_path / "out", low_memory_usage=True))
    ckpt = sorted(os.listdir(path / "ckpt"))
    assert "model.safetensors" not in ckpt
    assert not [n for n in ckpt if ".safetensors" in n or n.endswith(".partial")], ckpt
    assert "hyperdex_model.bin" in ckpt and "config.json" in ckpt
    assert (hf_folder / "model.safetensors").is_file(), "the source folder is left alone"
    assert json.loads((path / "compile.json").read_text())["low_memory_usage"] is True
    _assert_runs_like(path, hf_model)


def test_low_memory_usage_after_a_normal_compile(
    hf_folder: Path, hf_model: Any, tmp_path: Path
) -> None:
    """The usual sequence: compile, then recompile with low_memory_usage to free the disk.
    Nothing in ckpt/ may still hold the HF weights (see test_recompile_leaves_no_partial_files
    for the bug this hits)."""
    _compile(hf_folder, tmp_path / "out")
    path = Path(_compile(hf_folder, tmp_path / "out", low_memory_usage=True))
    ckpt = sorted(os.listdir(path / "ckpt"))
    assert not [n for n in ckpt if ".safetensors" in n], ckpt
    _assert_runs_like(path, hf_model)
    # and a fast recompile afterwards still works
    _compile(hf_folder, tmp_path / "out", low_memory_usage=True, fast_compile=True)
    _assert_runs_like(path, hf_model)
