"""Seed 003's VCU128 board export (hyperdex/tools/export_vcu128.py): the files read back
to exactly the model's codes, scales, biases, norms and fp16 embeddings, and their bytes
are the layout docs/formats.md ("VCU128 export (seed 003)") describes."""

from __future__ import annotations

import json
import shutil
import zlib
from pathlib import Path
from typing import Any, Dict

import helpers as H
import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from test_gptq_import import write_gptq_checkpoint  # noqa: E402

from hyperdex.errors import ConfigError, FormatError  # noqa: E402
from hyperdex.formats import ModelFile  # noqa: E402
from hyperdex.tools.converter import AutoModelConverter  # noqa: E402
from hyperdex.tools.export_vcu128 import (  # noqa: E402
    export_vcu128,
    pack_rows,
    read_vcu128_export,
    row_bytes,
    unpack_rows,
)

PORTS = 32


def first_word(codes_row: np.ndarray) -> int:
    """The board's first weight word of a row, written out longhand: inputs 0..7 as signed
    two's-complement nibbles (q - 8), input j in bits 4j..4j+3."""
    word = 0
    for j in range(8):
        word |= ((int(codes_row[j]) - 8) & 0xF) << (4 * j)
    return word


def test_row_layout_across_two_chunks() -> None:
    rng = np.random.default_rng(0)
    cols = 2688  # 21 groups: a full chunk of 2048 inputs, then one of 640 (5 groups)
    codes = rng.integers(0, 16, size=(5, cols), dtype=np.uint8)
    scales = (rng.random((5, cols // 128)) * 0.1 + 0.01).astype(np.float16)
    rows = pack_rows(codes, scales)
    assert rows.shape == (5, row_bytes(cols)) == (5, 32 + 1024 + 32 + 320)
    r = rows[2]
    assert r[:32].tobytes() == scales[2, :16].astype("<f2").tobytes()
    assert int.from_bytes(r[32:36].tobytes(), "little") == first_word(codes[2])
    second = 32 + 1024  # the second chunk's scale line: 5 scales, then zeros
    assert r[second : second + 10].tobytes() == scales[2, 16:].astype("<f2").tobytes()
    assert not r[second + 10 : second + 32].any()
    w = int.from_bytes(r[second + 32 : second + 36].tobytes(), "little")
    assert w == first_word(codes[2, 2048:])
    back_codes, back_scales = unpack_rows(rows, cols)
    assert np.array_equal(back_codes, codes)
    assert np.array_equal(back_scales.view(np.uint16), scales.view(np.uint16))


def test_the_example_word_of_docs_formats_md() -> None:
    codes = np.full((1, 128), 8, dtype=np.uint8)
    codes[0, :8] = [8, 9, 15, 0, 7, 8, 8, 8]
    rows = pack_rows(codes, np.ones((1, 1), np.float16))
    assert int.from_bytes(rows[0, 32:36].tobytes(), "little") == 0x000F8710


def test_rows_that_are_not_groups_of_128_are_refused() -> None:
    with pytest.raises(ConfigError, match="multiple of 128"):
        pack_rows(np.zeros((2, 96), np.uint8), np.ones((2, 1), np.float16))


# -- whole models ------------------------------------------------------------------------------


def _gptq_converted(
    tmp: Path, family: str, bits: int = 4, group: int = 128, lm_head: bool = True
) -> Path:
    """A tiny model (128 wide, MLP 256, vocab 512) quantized in numpy, written as a GPTQ
    checkpoint, converted by hyperdex: a folder with hyperdex_config.json + model file."""
    factory = H._qwen2 if family == "qwen2" else H._llama
    src = tmp / "hf"
    cfg = factory(hidden_size=128, intermediate_size=256, tie_word_embeddings=False)
    H.make_hf_model("qwen2" if family == "qwen2" else "llama_untied", src, seed=5, config=cfg)
    write_gptq_checkpoint(src, tmp / "gptq", bits=bits, group_size=group, lm_head=lm_head)
    out = tmp / "converted"
    AutoModelConverter(tmp / "gptq").save_pretrained(out, progress=False)
    return out


@pytest.fixture(scope="module")
def llama_export(tmp_path_factory: Any) -> Dict[str, Any]:
    tmp = tmp_path_factory.mktemp("vcu128")
    converted = _gptq_converted(tmp, "llama")
    # The layout of a compiled folder: the converted model in ckpt/.
    compiled = tmp / "compiled"
    shutil.copytree(converted, compiled / "ckpt")
    root = export_vcu128(compiled)
    return {"root": root, "model": ModelFile.open(compiled / "ckpt" / "hyperdex_model.bin")}


def test_export_reads_back_exactly(llama_export: Dict[str, Any]) -> None:
    root, mf = llama_export["root"], llama_export["model"]
    assert root == root.parent.parent / "export" / "vcu128" and root.is_dir()
    back = read_vcu128_export(root.parent.parent)
    quantized = [n[: -len(".scales")] for n in mf.names if n.endswith(".scales")]
    assert len(quantized) == 2 * 7 + 1  # 2 layers x 7 projections + the LM head
    for prefix in quantized:
        assert np.array_equal(back[prefix + ".weight"], mf[prefix + ".weight"]), prefix
        assert np.array_equal(
            back[prefix + ".scales"].view(np.uint16), mf[prefix + ".scales"].view(np.uint16)
        )
    for name in ("tok_embd.weight", "output_norm.weight", "blk.1.attn_norm.weight"):
        assert np.array_equal(back[name].view(np.uint16), mf[name].view(np.uint16)), name
    assert not any(n.endswith(".bias") for n in back)  # Llama has none
    expected = {p + s for p in quantized for s in (".weight", ".scales")}
    expected |= {n for n in mf.names if "norm" in n} | {"tok_embd.weight"}
    assert set(back) == expected


def test_the_seed_files_and_their_bytes(llama_export: Dict[str, Any]) -> None:
    root, mf = llama_export["root"], llama_export["model"]
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["format"] == "hyperdex-vcu128-export" and manifest["ports"] == PORTS
    for rec in manifest["files"]:
        raw = (root / rec["file"]).read_bytes()
        assert len(raw) == rec["bytes"] and zlib.crc32(raw) == rec["crc32"]
    listed = {rec["file"] for rec in manifest["files"]}
    on_disk = {p.relative_to(root).as_posix() for p in root.rglob("*.bin")}
    assert listed == on_disk
    block = "BLOCK00/MVM_BN_write_to_HBM_bin"
    assert {f"{block}/MVMBN0_q_HBM_DDR_{p:02d}.bin" for p in range(PORTS)} <= listed
    assert "BLOCK01/MVM_BN_RES_write_to_HBM_bin/MVMBNRES2_HBM_DDR_31.bin" in listed
    assert "OutLayer/MVM_BN_write_to_HBM_bin/MVMBN_Argmax_HBM_DDR_00.bin" in listed
    assert "BLOCK01/LN_DDR_bin/LN1_wt_in_DDR.bin" in listed
    assert {f"Embedding/Embedding_{k:02d}-of-16.bin" for k in range(1, 17)} <= listed

    # attn_q: 128 outputs x 128 inputs, one group: each row is one scale line (the scale,
    # then 30 zero bytes) and 64 weight bytes; port p holds rows p, p + 32, ...
    codes, scales = mf["blk.0.attn_q.weight"], mf["blk.0.attn_q.scales"]
    port0 = (root / f"{block}/MVMBN0_q_HBM_DDR_00.bin").read_bytes()
    assert len(port0) == 4 * (32 + 64)
    assert port0[:2] == scales[0, 0].astype("<f2").tobytes() and port0[2:32] == bytes(30)
    assert int.from_bytes(port0[32:36], "little") == first_word(codes[0])
    assert int.from_bytes(port0[96 + 32 : 96 + 36], "little") == first_word(codes[32])
    port5 = (root / f"{block}/MVMBN0_q_HBM_DDR_05.bin").read_bytes()
    assert port5[:2] == scales[5, 0].astype("<f2").tobytes()
    # ffn_down reads 256 inputs: two groups, so two scales in the line.
    down = mf["blk.0.ffn_down.scales"]
    res = (root / "BLOCK00/MVM_BN_RES_write_to_HBM_bin/MVMBNRES2_HBM_DDR_00.bin").read_bytes()
    assert res[:4] == down[0].astype("<f2").tobytes() and len(res) == 4 * (32 + 128)
    # No bias: every word is fp16 1.0 (high half) beside a zero bias (low half).
    bias = np.frombuffer(
        (root / "BLOCK00/MVM_BN_DDR_bin/MVMBN0_q_wt_and_bias_in_DDR.bin").read_bytes(), "<u4"
    )
    assert bias.shape == (128,) and np.all(bias == 0x3C000000)
    # Norms: fp16 gains then as many fp16 zeros (the RMSNorm has no bias).
    ln = (root / "BLOCK00/LN_DDR_bin/LN0_wt_in_DDR.bin").read_bytes()
    assert ln == mf["blk.0.attn_norm.weight"].astype("<f2").tobytes() + bytes(2 * 128)
    # The embedding table, flat fp16, cut into 16 equal files.
    parts = b"".join(
        (root / f"Embedding/Embedding_{k:02d}-of-16.bin").read_bytes() for k in range(1, 17)
    )
    assert parts == mf["tok_embd.weight"].astype("<f2").tobytes()
    assert len((root / "Embedding/Embedding_01-of-16.bin").read_bytes()) == len(parts) // 16


def test_biases_are_exported(tmp_path: Path) -> None:
    converted = _gptq_converted(tmp_path, "qwen2")
    root = export_vcu128(converted)
    assert root == converted / "export" / "vcu128"
    back = read_vcu128_export(converted)
    mf = ModelFile.open(converted / "hyperdex_model.bin")
    words = np.frombuffer(
        (root / "BLOCK01/MVM_BN_DDR_bin/MVMBN0_k_wt_and_bias_in_DDR.bin").read_bytes(), "<u4"
    )
    ref = mf["blk.1.attn_k.bias"]
    assert np.array_equal((words & 0xFFFF).astype(np.uint16), ref.view(np.uint16))
    for name in ("blk.0.attn_q.bias", "blk.1.attn_v.bias"):
        assert np.array_equal(back[name].view(np.uint16), mf[name].view(np.uint16))
    assert "blk.0.attn_output.bias" not in back  # Qwen2's o_proj has none: zeros, not a tensor


def test_a_damaged_file_is_caught(tmp_path: Path, llama_export: Dict[str, Any]) -> None:
    copy = tmp_path / "vcu128"
    shutil.copytree(llama_export["root"], copy)
    H.flip_byte(copy / "BLOCK00/MVM_BN_write_to_HBM_bin/MVMBN0_v_HBM_DDR_03.bin", 40)
    with pytest.raises(FormatError, match="MVMBN0_v_HBM_DDR_03.bin does not match the manifest"):
        read_vcu128_export(copy)


def test_what_the_board_cannot_take(tmp_path: Path) -> None:
    eight = _gptq_converted(tmp_path / "a", "llama", bits=8)
    with pytest.raises(ConfigError, match="bits=8, group_size=128; seed 003's VCU128 format"):
        export_vcu128(eight)
    g64 = _gptq_converted(tmp_path / "b", "llama", group=64)
    with pytest.raises(ConfigError, match="int4 with group size 128 only"):
        export_vcu128(g64)
    head = _gptq_converted(tmp_path / "c", "llama", lm_head=False)
    with pytest.raises(ConfigError, match="LM head is fp16.*skip_lm_head=True"):
        export_vcu128(head)
    root = export_vcu128(head, skip_lm_head=True)
    assert not (root / "OutLayer" / "MVM_BN_write_to_HBM_bin").exists()
    assert "output.weight" not in read_vcu128_export(head)
    fp16 = tmp_path / "fp16"
    AutoModelConverter(tmp_path / "c" / "hf").save_pretrained(fp16, progress=False)
    with pytest.raises(ConfigError, match="fp16 weights.*quantization='w4a16'"):
        export_vcu128(fp16)
    with pytest.raises(ConfigError, match="holds no converted model"):
        export_vcu128(tmp_path / "a" / "hf")


def test_widths_that_are_not_groups_of_128_are_refused_before_compiling(tmp_path: Path) -> None:
    """SmolLM2's 576-wide layers cannot take the board format: compile() says so in its
    checks, before it converts, quantizes or writes anything."""
    from hyperdex.tools import AutoCompiler

    src = tmp_path / "hf"
    cfg = H._llama(hidden_size=192, intermediate_size=256, tie_word_embeddings=False)
    H.make_hf_model("llama_untied", src, seed=5, config=cfg)
    with pytest.raises(
        ConfigError, match=r"hidden_size \(q/k/v, gate/up inputs\) = 192, .*not a multiple"
    ):
        AutoCompiler().compile(
            model_id=str(src),
            prefix=tmp_path / "out",
            quantization="rtn-w4a16",
            export="vcu128",
            progress=False,
        )
    assert not list((tmp_path / "out").rglob("*.bin"))
