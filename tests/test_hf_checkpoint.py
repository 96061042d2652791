"""HFCheckpoint: every weights layout reads back exactly; every corruption is reported."""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Dict, Tuple

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from hyperdex.errors import CheckpointError  # noqa: E402
from hyperdex.formats import HFCheckpoint, ModelFile, write_model_file  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

Expected = Dict[str, np.ndarray]


def _tiny_llama(dtype: torch.dtype, tie: bool = False) -> torch.nn.Module:
    cfg = transformers.LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=100,
        tie_word_embeddings=tie,
    )
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg).to(dtype)
    with torch.no_grad():  # norms start at exactly 1.0; make every tensor distinctive
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    return model


def _expected(state: Dict[str, torch.Tensor]) -> Expected:
    return {k: v.detach().to(torch.float32).numpy().copy() for k, v in state.items()}


def _save_bin(state: Dict[str, torch.Tensor], folder: Path, shards: int = 1) -> None:
    """Write a .bin checkpoint the way transformers 4 did (transformers 5 only writes
    safetensors)."""
    folder.mkdir(parents=True, exist_ok=True)
    if shards == 1:
        torch.save(state, folder / "pytorch_model.bin")
        return
    keys = list(state)
    weight_map = {}
    for i, chunk in enumerate(np.array_split(np.arange(len(keys)), shards)):
        fn = f"pytorch_model-{i + 1:05d}-of-{shards:05d}.bin"
        torch.save({keys[j]: state[keys[j]] for j in chunk}, folder / fn)
        weight_map.update({keys[j]: fn for j in chunk})
    index = {"metadata": {"total_size": 0}, "weight_map": weight_map}
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps(index))


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Tuple[Path, Expected]]:
    root = tmp_path_factory.mktemp("ckpts")
    out: Dict[str, Tuple[Path, Expected]] = {}
    for tag, dtype in (("fp32", torch.float32), ("fp16", torch.float16), ("bf16", torch.bfloat16)):
        model = _tiny_llama(dtype)
        exp = _expected(model.state_dict())
        model.save_pretrained(root / f"st_{tag}")
        out[f"st_{tag}"] = (root / f"st_{tag}", exp)
        model.save_pretrained(root / f"st_{tag}_sharded", max_shard_size="20KB")
        out[f"st_{tag}_sharded"] = (root / f"st_{tag}_sharded", exp)
        # Tied embeddings: the .bin holds both names backed by one storage.
        tied = _tiny_llama(dtype, tie=True)
        state = tied.state_dict()
        assert state["lm_head.weight"].data_ptr() == state["model.embed_tokens.weight"].data_ptr()
        _save_bin(state, root / f"bin_{tag}")
        out[f"bin_{tag}"] = (root / f"bin_{tag}", _expected(state))
        _save_bin(model.state_dict(), root / f"bin_{tag}_sharded", shards=3)
        out[f"bin_{tag}_sharded"] = (root / f"bin_{tag}_sharded", exp)
    return out


def _copy(ckpts: Dict[str, Tuple[Path, Expected]], variant: str, tmp_path: Path) -> Path:
    dst = tmp_path / variant
    shutil.copytree(ckpts[variant][0], dst)
    return dst


VARIANTS = [
    f"{k}_{t}{s}" for k in ("st", "bin") for t in ("fp32", "fp16", "bf16") for s in ("", "_sharded")
]


@pytest.mark.parametrize("variant", VARIANTS)
def test_reads_exactly_what_torch_saved(ckpts, variant: str) -> None:
    folder, exp = ckpts[variant]
    want_dtype = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}[variant.split("_")[1]]
    with HFCheckpoint.open(folder) as ck:
        assert ck.format == ("safetensors" if variant.startswith("st") else "pytorch")
        assert (len(ck.files) > 1) == variant.endswith("sharded")
        assert sorted(ck.names()) == sorted(exp)
        for name, ref in exp.items():
            assert name in ck
            assert ck.shape(name) == ref.shape
            assert ck.dtype(name) == want_dtype
            got = ck.load(name)
            assert got.dtype == np.float32 and got.flags.c_contiguous
            np.testing.assert_array_equal(got, ref)
    assert "model.norm.weight" not in ck  # closed


def test_tied_bin_weights_share_values(ckpts) -> None:
    with HFCheckpoint.open(ckpts["bin_bf16"][0]) as ck:
        emb, head = ck.load("model.embed_tokens.weight"), ck.load("lm_head.weight")
        np.testing.assert_array_equal(emb, head)
        assert not np.shares_memory(emb, head)  # each load is its own copy


def test_loaded_arrays_outlive_close(ckpts) -> None:
    ck = HFCheckpoint.open(ckpts["st_bf16_sharded"][0])
    arrays = {n: ck.load(n) for n in ck.names()}
    ck.close()
    for n, ref in ckpts["st_bf16_sharded"][1].items():
        np.testing.assert_array_equal(arrays[n], ref)
    with pytest.raises(ValueError, match="closed"):
        ck.load("model.norm.weight")


def test_prefers_safetensors_over_bin(ckpts, tmp_path) -> None:
    folder = _copy(ckpts, "st_fp32", tmp_path)
    _save_bin({"model.norm.weight": torch.zeros(32)}, folder)
    with HFCheckpoint.open(folder) as ck:
        assert ck.format == "safetensors"
        np.testing.assert_array_equal(
            ck.load("model.norm.weight"), ckpts["st_fp32"][1]["model.norm.weight"]
        )


def test_unknown_tensor_suggests_names(ckpts) -> None:
    with HFCheckpoint.open(ckpts["st_fp32"][0]) as ck:
        with pytest.raises(CheckpointError, match="no tensor 'model.norm.weigth'.*model.norm"):
            ck.shape("model.norm.weigth")


# -- crafted safetensors files ----------------------------------------------------------------


def _write_st(path: Path, header: dict, data: bytes, hlen: int | None = None) -> Path:
    raw = json.dumps(header).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(struct.pack("<Q", len(raw) if hlen is None else hlen) + raw + data)
    return path


def _st_folder(tmp_path: Path, header: dict, data: bytes, hlen: int | None = None) -> Path:
    _write_st(tmp_path / "m" / "model.safetensors", header, data, hlen)
    return tmp_path / "m"


def test_integer_float64_and_unusual_dtypes(tmp_path) -> None:
    ints = np.array([[1, -2], [3, 2**40]], dtype="<i8")
    mask = np.array([True, False, True])
    f64 = np.array([0.1, -2.5], dtype="<f8")
    u8 = np.arange(6, dtype=np.uint8).reshape(2, 3)
    blobs = [
        ("ids", "I64", ints),
        ("mask", "BOOL", mask),
        ("f64", "F64", f64),
        ("u8", "U8", u8),
        ("empty", "F32", np.zeros((0, 3), np.float32)),
    ]
    header, data = {"__metadata__": {"format": "pt"}}, b""
    for name, tag, arr in blobs:
        b = arr.tobytes()
        header[name] = {
            "dtype": tag,
            "shape": list(arr.shape),
            "data_offsets": [len(data), len(data) + len(b)],
        }
        data += b
    header["fp8"] = {"dtype": "F8_E4M3", "shape": [2], "data_offsets": [len(data), len(data) + 2]}
    data += b"\x01\x02"
    with HFCheckpoint.open(_st_folder(tmp_path, header, data)) as ck:
        assert ck.dtype("ids") == "int64" and ck.load("ids").dtype == np.int64
        np.testing.assert_array_equal(ck.load("ids"), ints)
        np.testing.assert_array_equal(ck.load("mask"), mask)
        np.testing.assert_array_equal(ck.load("u8"), u8)
        assert ck.load("f64").dtype == np.float32
        np.testing.assert_array_equal(ck.load("f64"), f64.astype(np.float32))
        assert ck.load("empty").shape == (0, 3)
        assert ck.shape("fp8") == (2,) and ck.dtype("fp8") == "float8_e4m3fn"
        with pytest.raises(CheckpointError, match="'fp8'.*float8_e4m3fn.*cannot convert"):
            ck.load("fp8")


def test_bin_integer_tensors(tmp_path) -> None:
    ids = torch.tensor([[5, -7], [1, 2]], dtype=torch.int64)
    _save_bin({"ids": ids, "w": torch.ones(2, 3, dtype=torch.float16).t()}, tmp_path / "m")
    with HFCheckpoint.open(tmp_path / "m") as ck:
        assert ck.dtype("ids") == "int64"
        np.testing.assert_array_equal(ck.load("ids"), ids.numpy())
        assert ck.shape("w") == (3, 2)
        np.testing.assert_array_equal(ck.load("w"), np.ones((3, 2), np.float32))


F32_2x2 = {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}


@pytest.mark.parametrize(
    ("header", "data", "hlen", "match"),
    [
        ({"a": F32_2x2}, bytes(16), 1 << 40, "header length field says"),
        ({"a": F32_2x2}, bytes(16), 10_000, r"truncated: it is \d+ bytes but its header alone"),
        (
            {"a": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 12]}},
            bytes(16),
            None,
            r"'a' spans 12 bytes but shape \[2, 2\] x F32 \(4 bytes\) needs 16",
        ),
        (
            {"a": {"dtype": "F32", "shape": [0], "data_offsets": [16, 0]}},
            bytes(16),
            None,
            "end before they begin",
        ),
        (
            {"a": F32_2x2, "b": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}},
            bytes(16),
            None,
            "'a'.*'b'.*overlap",
        ),
        (
            {
                "a": F32_2x2,
                "b": {"dtype": "F32", "shape": [0], "data_offsets": [4, 4]},
                "c": {"dtype": "F32", "shape": [1], "data_offsets": [8, 12]},
            },
            bytes(16),
            None,
            "'a'.*'c'.*overlap",
        ),
        (
            {"a": {"dtype": "F32", "shape": [2, 2], "data_offsets": [16, 32]}},
            bytes(16),
            None,
            r"truncated: it is \d+ bytes but its header places tensor data up to byte",
        ),
        (
            {"a": {"dtype": "Q4", "shape": [2], "data_offsets": [0, 1]}},
            bytes(1),
            None,
            "unknown dtype 'Q4'",
        ),
        (
            {"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}},
            bytes(4),
            None,
            "invalid shape",
        ),
        ({"a": {"dtype": "F32", "shape": [1]}}, bytes(4), None, "lacks dtype/shape"),
        ([1, 2], b"", None, "expected an object"),
    ],
    ids=[
        "bad_length",
        "truncated_header",
        "size_mismatch",
        "offsets_reversed",
        "overlap",
        "overlap_past_empty",
        "data_past_eof",
        "unknown_dtype",
        "negative_dim",
        "missing_field",
        "not_object",
    ],
)
def test_corrupt_safetensors_headers(tmp_path, header, data, hlen, match) -> None:
    folder = _st_folder(tmp_path, header, data, hlen)
    with pytest.raises(CheckpointError, match=match) as ei:
        HFCheckpoint.open(folder)
    assert "model.safetensors" in str(ei.value)
    assert "download" in str(ei.value)


def test_duplicate_key_in_header(tmp_path) -> None:
    raw = (
        b'{"a": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}, "a": '
        b'{"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}}'
    )
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "model.safetensors").write_bytes(struct.pack("<Q", len(raw)) + raw + b"x")
    with pytest.raises(CheckpointError, match="names 'a' twice"):
        HFCheckpoint.open(tmp_path / "m")


def test_truncated_real_safetensors(ckpts, tmp_path) -> None:
    folder = _copy(ckpts, "st_fp16", tmp_path)
    f = folder / "model.safetensors"
    size = f.stat().st_size
    os.truncate(f, size - 100)
    with pytest.raises(
        CheckpointError, match=f"truncated: it is {size - 100} bytes.*up to byte {size}"
    ):
        HFCheckpoint.open(folder)
    os.truncate(f, 200)  # inside the JSON header
    with pytest.raises(CheckpointError, match="truncated: it is 200 bytes but its header alone"):
        HFCheckpoint.open(folder)
    os.truncate(f, 5)
    with pytest.raises(CheckpointError, match="truncated: it is 5 bytes"):
        HFCheckpoint.open(folder)


def test_flipped_header_byte(ckpts, tmp_path) -> None:
    folder = _copy(ckpts, "st_fp32", tmp_path)
    f = folder / "model.safetensors"
    data = bytearray(f.read_bytes())
    data[8] ^= 0xFF  # the JSON's opening brace
    f.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="not valid UTF-8 JSON"):
        HFCheckpoint.open(folder)


def test_missing_shard(ckpts, tmp_path) -> None:
    folder = _copy(ckpts, "st_fp32_sharded", tmp_path)
    (folder / "model-00002-of-00007.safetensors").unlink()
    with pytest.raises(
        CheckpointError,
        match=r"missing.*model-00002-of-00007\.safetensors \(should hold \d+ "
        r"tensors.*download the missing shard",
    ):
        HFCheckpoint.open(folder)


def test_missing_bin_shard(ckpts, tmp_path) -> None:
    folder = _copy(ckpts, "bin_fp32_sharded", tmp_path)
    (folder / "pytorch_model-00003-of-00003.bin").unlink()
    with pytest.raises(CheckpointError, match=r"pytorch_model-00003-of-00003\.bin"):
        HFCheckpoint.open(folder)


def test_same_tensor_in_two_shards(ckpts, tmp_path) -> None:
    from safetensors.numpy import load_file, save_file

    folder = _copy(ckpts, "st_fp32_sharded", tmp_path)
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    first = next(iter(index["weight_map"]))
    src = folder / index["weight_map"][first]
    other = next(s for s in sorted(set(index["weight_map"].values())) if s != src.name)
    tensors = load_file(folder / other)
    tensors[first] = load_file(src)[first]
    save_file(tensors, folder / other)
    names = re.escape(f"'{first}' is in two shards, {src.name} and {other}")
    with pytest.raises(CheckpointError, match=names + ".*download it again"):
        HFCheckpoint.open(folder)


def test_index_and_shards_disagree(ckpts, tmp_path) -> None:
    folder = _copy(ckpts, "st_fp32_sharded", tmp_path)
    ipath = folder / "model.safetensors.index.json"
    index = json.loads(ipath.read_text())
    index["weight_map"]["model.ghost.weight"] = "model-00001-of-00007.safetensors"
    ipath.write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="'model.ghost.weight' in model-00001.*no shard"):
        HFCheckpoint.open(folder)


@pytest.mark.parametrize("shard", ["../model.safetensors", "/etc/passwd"])
def test_index_cannot_escape_folder(ckpts, tmp_path, shard) -> None:
    folder = _copy(ckpts, "st_fp32_sharded", tmp_path)
    ipath = folder / "model.safetensors.index.json"
    index = json.loads(ipath.read_text())
    index["weight_map"]["model.norm.weight"] = shard
    ipath.write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="not a plain file name"):
        HFCheckpoint.open(folder)


def test_bad_index_json(ckpts, tmp_path) -> None:
    folder = _copy(ckpts, "st_fp32_sharded", tmp_path)
    (folder / "model.safetensors.index.json").write_text('{"weight_map": ')
    with pytest.raises(CheckpointError, match="cannot read the shard index"):
        HFCheckpoint.open(folder)


def test_no_weights_lists_folder(tmp_path) -> None:
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "tokenizer.json").write_text("{}")
    with pytest.raises(CheckpointError, match=r"no weights in .*config\.json, tokenizer\.json"):
        HFCheckpoint.open(tmp_path)
    (tmp_path / "model-00001-of-00002.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError, match="download the index too"):
        HFCheckpoint.open(tmp_path)
    with pytest.raises(CheckpointError, match="does not exist"):
        HFCheckpoint.open(tmp_path / "nope")


def test_truncated_bin(ckpts, tmp_path) -> None:
    folder = _copy(ckpts, "bin_fp32", tmp_path)
    f = folder / "pytorch_model.bin"
    os.truncate(f, f.stat().st_size // 2)
    with pytest.raises(CheckpointError, match=r"torch cannot load .*pytorch_model\.bin"):
        HFCheckpoint.open(folder)


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def test_bin_never_unpickles_code(tmp_path) -> None:
    marker = tmp_path / "pwned"
    (tmp_path / "m").mkdir()
    torch.save({"w": torch.ones(2), "x": _Evil(marker)}, tmp_path / "m" / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match=r"torch cannot load .*pytorch_model\.bin") as ei:
        HFCheckpoint.open(tmp_path / "m")
    msg = str(ei.value)
    assert "mkdir" in msg and "will not unpickle" in msg and "safetensors" in msg
    assert "Weights only load failed" not in msg  # torch's boilerplate is dropped
    assert not marker.exists()


def test_bin_must_be_a_state_dict(tmp_path) -> None:
    _save_bin({"w": torch.ones(2), "step": 3}, tmp_path / "m")  # type: ignore[dict-item]
    with pytest.raises(CheckpointError, match="not a flat state dict: entry 'step'"):
        HFCheckpoint.open(tmp_path / "m")


def test_without_torch(ckpts, tmp_path) -> None:
    """Safetensors need only numpy; .bin asks for torch by name."""
    folder, exp = ckpts["st_bf16_sharded"]
    np.savez(tmp_path / "exp.npz", **exp)
    script = textwrap.dedent(
        """
        import sys
        sys.modules["torch"] = None  # any `import torch` now raises ImportError
        import numpy as np
        from hyperdex.errors import CheckpointError
        from hyperdex.formats import HFCheckpoint
        exp = np.load(sys.argv[3])
        with HFCheckpoint.open(sys.argv[1]) as ck:
            assert sorted(ck.names()) == sorted(exp.files)
            for n in exp.files:
                assert ck.dtype(n) == "bfloat16"
                assert np.array_equal(ck.load(n), exp[n]), n
        try:
            HFCheckpoint.open(sys.argv[2])
        except CheckpointError as e:
            assert "pip install 'hyperdex[torch]'" in str(e) and "safetensors" in str(e), e
        else:
            raise AssertionError("a .bin checkpoint opened without torch")
        print("ok")
        """
    )
    env = dict(os.environ, PYTHONPATH=str(REPO))
    res = subprocess.run(
        [
            sys.executable,
            "-c",
            script,
            str(folder),
            str(ckpts["bin_fp32"][0]),
            str(tmp_path / "exp.npz"),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr


def test_stream_checkpoint_into_model_file(ckpts, tmp_path) -> None:
    """The intended pipeline: tensors flow one by one from the checkpoint to the file."""
    folder, exp = ckpts["st_bf16_sharded"]
    with HFCheckpoint.open(folder) as ck:
        gen = ((n, ck.load(n).astype(np.float16)) for n in ck.names())
        write_model_file(tmp_path / "hyperdex_model.bin", gen, {"arch": "llama"})
    with ModelFile.open(tmp_path / "hyperdex_model.bin") as mf:
        assert sorted(mf.names) == sorted(exp)
        for n, ref in exp.items():
            np.testing.assert_array_equal(mf[n], ref.astype(np.float16))
