"""Import of Hugging Face GPTQ checkpoints (hyperdex/formats/gptq_checkpoint.py).

Tiny random models are quantized here in numpy (round to nearest, symmetric, the scale
rounded to fp16 first, as docs/formats.md defines) and written as HF GPTQ checkpoints
(qweight / qzeros / scales / g_idx in safetensors, ``quantization_config`` in config.json),
in format v1 (zero - 1 stored) and v2, 4 and 8 bits. Conversion must give back exactly those
codes and scales; every way a checkpoint can disagree with its config, or ask for what the
device cannot do, must fail with an error that names the tensor and says what to do.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import helpers as H
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
safetensors_numpy = pytest.importorskip("safetensors.numpy")

from hyperdex.errors import CheckpointError, ConfigError  # noqa: E402
from hyperdex.formats import ModelFile  # noqa: E402
from hyperdex.formats.gptq_checkpoint import (  # noqa: E402
    dequantize,
    gptq_settings,
    pack_along_input,
    pack_along_output,
    unpack_along_input,
    unpack_along_output,
)
from hyperdex.tools.converter import AutoModelConverter  # noqa: E402

Quantized = Dict[str, Tuple[np.ndarray, np.ndarray]]  # HF prefix -> (codes, scales)

_LINEAR = re.compile(
    r"(.*\.(q_proj|k_proj|v_proj|o_proj|out_proj|gate_proj|up_proj|down_proj|fc1|fc2))\.weight"
)
_CANONICAL = {
    "q_proj": "attn_q",
    "k_proj": "attn_k",
    "v_proj": "attn_v",
    "o_proj": "attn_output",
    "out_proj": "attn_output",
    "gate_proj": "ffn_gate",
    "up_proj": "ffn_up",
    "down_proj": "ffn_down",
    "fc1": "ffn_up",
    "fc2": "ffn_down",
}


def canonical(prefix: str) -> str:
    """HF linear prefix -> canonical name without ".weight"."""
    if prefix == "lm_head":
        return "output"
    m = re.search(r"layers\.(\d+)\.(?:\w+\.)?(\w+)$", prefix)
    assert m, prefix
    return f"blk.{m.group(1)}.{_CANONICAL[m.group(2)]}"


def rtn(w: np.ndarray, bits: int, group: int) -> Tuple[np.ndarray, np.ndarray]:
    """Symmetric round-to-nearest as docs/formats.md defines it: scale = 2*absmax/(2^b-1)
    (1 for an all-zero group), rounded to fp16; codes from the fp16 scale, round half to
    even, zero point 2^(b-1). Returns (codes u8 [out, in], scales f16 [out, G])."""
    out, cols = w.shape
    group = cols if group == -1 else group
    g = w.astype(np.float32).reshape(out, cols // group, group)
    absmax = np.abs(g).max(axis=2)
    scale = np.where(absmax == 0, 1.0, 2.0 * absmax / (2**bits - 1)).astype(np.float16)
    q = np.rint(g / scale.astype(np.float32)[:, :, None]) + 2 ** (bits - 1)
    codes = np.clip(q, 0, 2**bits - 1).astype(np.uint8).reshape(out, cols)
    return codes, scale


def write_gptq_checkpoint(
    src: Path,
    dst: Path,
    *,
    bits: int = 4,
    group_size: int = 32,
    fmt: Optional[str] = "gptq_v2",
    lm_head: bool = False,
    with_g_idx: bool = True,
    qc_extra: Optional[Dict[str, Any]] = None,
) -> Quantized:
    """Quantizes every block linear of the HF folder ``src`` (and ``lm_head`` with
    ``lm_head=True``; a tied model's head is the embedding table) and writes the GPTQ
    checkpoint to ``dst``; other tensors are stored in fp16. ``fmt`` None omits
    checkpoint_format (AutoGPTQ's v1 default)."""
    state = safetensors_numpy.load_file(str(src / "model.safetensors"))
    config = json.loads((src / "config.json").read_text())
    if lm_head and "lm_head.weight" not in state:
        embed = next(k for k in state if k.endswith("embed_tokens.weight"))
        state["lm_head.weight"] = state[embed]
    out_state: Dict[str, np.ndarray] = {}
    quantized: Quantized = {}
    mid = 2 ** (bits - 1)
    for name, value in state.items():
        m = _LINEAR.fullmatch(name)
        prefix = m.group(1) if m else ("lm_head" if name == "lm_head.weight" and lm_head else None)
        if prefix is None:
            out_state[name] = value.astype(np.float16)
            continue
        codes, scales = rtn(value, bits, group_size)
        cols = value.shape[1]
        group = cols if group_size == -1 else group_size
        stored_zero = mid - 1 if fmt in (None, "gptq") else mid
        zeros = np.full((cols // group, value.shape[0]), stored_zero, dtype=np.uint32)
        out_state[prefix + ".qweight"] = pack_along_input(codes, bits)
        out_state[prefix + ".qzeros"] = pack_along_output(zeros, bits)
        out_state[prefix + ".scales"] = np.ascontiguousarray(scales.T)
        if with_g_idx:
            out_state[prefix + ".g_idx"] = (np.arange(cols) // group).astype(np.int32)
        quantized[prefix] = (codes, scales)
    qc: Dict[str, Any] = {
        "quant_method": "gptq",
        "bits": bits,
        "group_size": group_size,
        "desc_act": False,
        "static_groups": False,
        "sym": True,
        "damp_percent": 0.01,
        "true_sequential": True,
        "dataset": "c4",
    }
    if fmt is not None:
        qc["checkpoint_format"] = fmt
    if lm_head:
        qc["lm_head"] = True
    qc.update(qc_extra or {})
    config["quantization_config"] = qc
    config["torch_dtype"] = "float16"
    dst.mkdir(parents=True, exist_ok=True)
    safetensors_numpy.save_file(out_state, str(dst / "model.safetensors"))
    (dst / "config.json").write_text(json.dumps(config, indent=2))
    if (src / "generation_config.json").is_file():
        shutil.copy(src / "generation_config.json", dst / "generation_config.json")
    return quantized


def write_dequantized_checkpoint(gptq: Path, dst: Path, quantized: Quantized) -> None:
    """The fp16 checkpoint whose weights are the device's dequantized values w' (the model a
    quantized compile must equal bit for bit)."""
    state = safetensors_numpy.load_file(str(gptq / "model.safetensors"))
    config = json.loads((gptq / "config.json").read_text())
    bits = config.pop("quantization_config")["bits"]
    out: Dict[str, np.ndarray] = {}
    for name, value in state.items():
        if not name.endswith((".qweight", ".qzeros", ".scales", ".g_idx")):
            out[name] = value
    for prefix, (codes, scales) in quantized.items():
        out[prefix + ".weight"] = dequantize(codes, scales, bits)
    dst.mkdir(parents=True, exist_ok=True)
    safetensors_numpy.save_file(out, str(dst / "model.safetensors"))
    (dst / "config.json").write_text(json.dumps(config, indent=2))


# -- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hf_models(tmp_path_factory: Any) -> Dict[str, Path]:
    """Tiny random fp32 HF folders (llama, llama_untied, qwen2, opt), made once."""
    root = tmp_path_factory.mktemp("gptq-src")
    folders = {}
    for name in ("llama", "llama_untied", "qwen2", "opt"):
        folders[name] = root / name
        H.make_hf_model(name, folders[name], seed=3)
    return folders


def convert(folder: Path, out: Path) -> Tuple[Dict[str, Any], ModelFile]:
    AutoModelConverter(folder).save_pretrained(out, progress=False)
    config = json.loads((out / "hyperdex_config.json").read_text())
    return config, ModelFile.open(out / "hyperdex_model.bin")


# -- bit packing -----------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [4, 8])
def test_packing_round_trips_and_matches_the_gptq_bit_order(bits: int) -> None:
    rng = np.random.default_rng(bits)
    codes = rng.integers(0, 2**bits, size=(24, 64), dtype=np.uint8)
    qweight = pack_along_input(codes, bits)
    per = 32 // bits
    assert qweight.dtype == np.int32 and qweight.shape == (64 // per, 24)
    # Input k*per + j of output o is bits [bits*j, bits*j + bits) of qweight[k, o].
    word = int(qweight.view(np.uint32)[1, 5])
    for j in range(per):
        assert (word >> (bits * j)) & (2**bits - 1) == codes[5, per + j]
    assert np.array_equal(unpack_along_input(qweight, bits), codes)
    zeros = rng.integers(0, 2**bits, size=(3, 20))  # 20 outputs: a partial last word at 8 bit
    qzeros = pack_along_output(zeros, bits)
    assert qzeros.shape == (3, -(-20 // per))
    assert np.array_equal(unpack_along_output(qzeros, bits, 20), zeros)


def test_dequantize_is_the_fp16_product() -> None:
    codes = np.array([[0, 7, 8, 15]], dtype=np.uint8)
    scales = np.array([[0.1]], dtype=np.float16)
    ref = ((torch.tensor(codes.astype(np.int64)) - 8).half() * torch.tensor(scales)).numpy()
    assert np.array_equal(dequantize(codes, scales, 4).view(np.uint16), ref.view(np.uint16))


# -- exact import ----------------------------------------------------------------------------

CASES = [
    ("llama", 4, 32, "gptq"),
    ("llama", 4, 32, "gptq_v2"),
    ("llama", 8, 32, "gptq"),
    ("llama", 8, 32, "gptq_v2"),
    ("llama", 4, -1, "gptq_v2"),
    ("llama", 4, 32, None),  # AutoGPTQ: no checkpoint_format, v1
    ("qwen2", 4, 32, "gptq"),  # q/k/v biases stay fp16
    ("opt", 8, 32, "gptq_v2"),
]


@pytest.mark.parametrize("family,bits,group,fmt", CASES, ids=lambda v: str(v))
def test_import_gives_the_codes_and_scales_exactly(
    hf_models: Dict[str, Path], tmp_path: Path, family: str, bits: int, group: int, fmt: Any
) -> None:
    gptq = tmp_path / "gptq"
    quantized = write_gptq_checkpoint(hf_models[family], gptq, bits=bits, group_size=group, fmt=fmt)
    config, mf = convert(gptq, tmp_path / "out")
    q = config["quantization"]
    assert q["method"] == "gptq-import" and q["bits"] == bits and q["group_size"] == group
    assert q["sym"] is True and q["quantize_lm_head"] is False
    assert q["checkpoint_format"] == (fmt or "gptq")
    assert len(quantized) == config["model"]["num_layers"] * (7 if family != "opt" else 6)
    for prefix, (codes, scales) in quantized.items():
        name = canonical(prefix)
        info = mf.info(name + ".weight")
        assert info.dtype == "u8" and info.shape == codes.shape
        assert np.array_equal(mf[name + ".weight"], codes), name
        assert mf.info(name + ".scales").dtype == "f16"
        assert np.array_equal(mf[name + ".scales"].view(np.uint16), scales.view(np.uint16))
    # The fp16 tensors are those of an ordinary conversion of the same values.
    plain = tmp_path / "plain"
    write_dequantized_checkpoint(gptq, plain, quantized)
    ref_config, ref = convert(plain, tmp_path / "ref")
    assert ref_config["quantization"] is None
    assert config["model"] == ref_config["model"]
    fp16 = [n for n in ref.names if not any(n == canonical(p) + ".weight" for p in quantized)]
    assert set(mf.names) == set(fp16) | {
        canonical(p) + sfx for p in quantized for sfx in (".weight", ".scales")
    }
    for n in fp16:
        assert np.array_equal(mf[n].view(np.uint16), ref[n].view(np.uint16)), n
    if family == "qwen2":
        assert "blk.0.attn_q.bias" in fp16


@pytest.mark.parametrize("tied", [False, True])
def test_a_quantized_lm_head(hf_models: Dict[str, Path], tmp_path: Path, tied: bool) -> None:
    src = hf_models["llama" if tied else "llama_untied"]
    quantized = write_gptq_checkpoint(src, tmp_path / "gptq", lm_head=True)
    config, mf = convert(tmp_path / "gptq", tmp_path / "out")
    assert config["quantization"]["quantize_lm_head"] is True
    codes, scales = quantized["lm_head"]
    assert np.array_equal(mf["output.weight"], codes)
    assert np.array_equal(mf["output.scales"].view(np.uint16), scales.view(np.uint16))
    assert mf.info("tok_embd.weight").dtype == "f16"  # the embedding table stays fp16
    assert config["model"]["tie_word_embeddings"] is tied


def test_autogptq_quantize_config_json(hf_models: Dict[str, Path], tmp_path: Path) -> None:
    """AutoGPTQ-era folders keep the settings in quantize_config.json, not config.json."""
    gptq = tmp_path / "gptq"
    quantized = write_gptq_checkpoint(hf_models["llama"], gptq, fmt=None)
    config = json.loads((gptq / "config.json").read_text())
    qc = config.pop("quantization_config")
    del qc["quant_method"]
    (gptq / "config.json").write_text(json.dumps(config))
    (gptq / "quantize_config.json").write_text(json.dumps(qc))
    out_config, mf = convert(gptq, tmp_path / "out")
    assert out_config["quantization"]["method"] == "gptq-import"
    prefix = next(iter(quantized))
    assert np.array_equal(mf[canonical(prefix) + ".weight"], quantized[prefix][0])


def test_checkpoints_without_g_idx(hf_models: Dict[str, Path], tmp_path: Path) -> None:
    gptq = tmp_path / "gptq"
    quantized = write_gptq_checkpoint(hf_models["llama"], gptq, with_g_idx=False)
    _, mf = convert(gptq, tmp_path / "out")
    prefix = next(iter(quantized))
    assert np.array_equal(mf[canonical(prefix) + ".weight"], quantized[prefix][0])


def test_zero_bias_buffers_are_dropped(hf_models: Dict[str, Path], tmp_path: Path) -> None:
    """Some exporters give every QuantLinear a bias buffer: zeros are harmless, others not."""
    gptq = tmp_path / "gptq"
    write_gptq_checkpoint(hf_models["llama"], gptq)
    state = safetensors_numpy.load_file(str(gptq / "model.safetensors"))
    name = "model.layers.0.self_attn.q_proj.bias"
    state[name] = np.zeros(64, dtype=np.float16)
    safetensors_numpy.save_file(state, str(gptq / "model.safetensors"))
    _, mf = convert(gptq, tmp_path / "out")
    assert "blk.0.attn_q.bias" not in mf.names
    state[name] = np.full(64, 0.5, dtype=np.float16)
    safetensors_numpy.save_file(state, str(gptq / "model.safetensors"))
    with pytest.raises(CheckpointError, match=re.escape(name) + " is a non-zero bias"):
        AutoModelConverter(gptq)


def test_fp32_scales_exact_in_fp16_are_accepted(hf_models: Dict[str, Path], tmp_path: Path) -> None:
    gptq = tmp_path / "gptq"
    quantized = write_gptq_checkpoint(hf_models["llama"], gptq)
    state = safetensors_numpy.load_file(str(gptq / "model.safetensors"))
    name = "model.layers.1.mlp.down_proj.scales"
    state[name] = state[name].astype(np.float32)
    safetensors_numpy.save_file(state, str(gptq / "model.safetensors"))
    _, mf = convert(gptq, tmp_path / "out")
    ref = quantized["model.layers.1.mlp.down_proj"][1]
    assert np.array_equal(mf["blk.1.ffn_down.scales"].view(np.uint16), ref.view(np.uint16))
    state[name][0, 0] = np.float32(0.1)  # not an fp16 value
    safetensors_numpy.save_file(state, str(gptq / "model.safetensors"))
    with pytest.raises(ConfigError, match=re.escape(name) + ".*fp16.*cannot hold exactly"):
        AutoModelConverter(gptq)


# -- what is rejected, and how ---------------------------------------------------------------


def _edit_config(folder: Path, **qc: Any) -> None:
    config = json.loads((folder / "config.json").read_text())
    for k, v in qc.items():
        if v is None:
            config["quantization_config"].pop(k, None)
        else:
            config["quantization_config"][k] = v
    (folder / "config.json").write_text(json.dumps(config))


def _edit_tensor(folder: Path, name: str, value: Optional[np.ndarray]) -> None:
    state = safetensors_numpy.load_file(str(folder / "model.safetensors"))
    if value is None:
        del state[name]
    else:
        state[name] = value
    safetensors_numpy.save_file(state, str(folder / "model.safetensors"))


@pytest.fixture
def gptq_llama(hf_models: Dict[str, Path], tmp_path: Path) -> Path:
    folder = tmp_path / "gptq"
    write_gptq_checkpoint(hf_models["llama"], folder, bits=4, group_size=32, fmt="gptq_v2")
    return folder


@pytest.mark.parametrize("method", ["awq", "bitsandbytes", "fp8", "compressed-tensors"])
def test_other_quantization_methods_are_named(gptq_llama: Path, method: str) -> None:
    _edit_config(gptq_llama, quant_method=method)
    with pytest.raises(ConfigError, match=f"quantization method '{method}' is not supported; "):
        AutoModelConverter(gptq_llama)


def test_unsupported_settings(gptq_llama: Path) -> None:
    config = json.loads((gptq_llama / "config.json").read_text())
    for qc, pattern in [
        ({"bits": 3}, "bits=3 is not supported: the LPU runs 4- or 8-bit"),
        ({"bits": 2}, "bits=2"),
        ({"group_size": 0}, "group_size=0"),
        ({"checkpoint_format": "marlin"}, "checkpoint_format 'marlin' is not supported"),
    ]:
        bad = json.loads(json.dumps(config))
        bad["quantization_config"].update(qc)
        with pytest.raises(ConfigError, match=pattern):
            gptq_settings(bad)
    assert gptq_settings({"architectures": ["LlamaForCausalLM"]}) is None


def test_asymmetric_zero_points_are_rejected(gptq_llama: Path) -> None:
    name = "model.layers.1.mlp.up_proj.qzeros"
    zeros = np.full((2, 128), 8)
    zeros[1, 5] = 6
    _edit_tensor(gptq_llama, name, pack_along_output(zeros, 4))
    with pytest.raises(ConfigError) as e:
        AutoModelConverter(gptq_llama)
    text = str(e.value)
    assert name in text and "group 1 of output 5: 6" in text
    assert "has no zero points" in text and "quantization='w4a16'" in text


def test_a_v2_checkpoint_read_as_v1_is_caught(gptq_llama: Path) -> None:
    """Without checkpoint_format a file is v1 (zero - 1 stored): v2's 8s then read as 9."""
    _edit_config(gptq_llama, checkpoint_format=None)
    with pytest.raises(ConfigError, match=r"zero points other than 8 .*: 9, read as format v1"):
        AutoModelConverter(gptq_llama)


def test_asymmetric_config_is_named(gptq_llama: Path) -> None:
    _edit_config(gptq_llama, sym=False, checkpoint_format="gptq")
    with pytest.raises(ConfigError, match="sym=false"):
        AutoModelConverter(gptq_llama)


def test_act_order_g_idx_is_rejected_with_the_reason(gptq_llama: Path) -> None:
    name = "model.layers.0.mlp.down_proj.g_idx"  # in = 128, 4 groups of 32
    rng = np.random.default_rng(0)
    _edit_tensor(gptq_llama, name, rng.permutation(np.arange(128) // 32).astype(np.int32))
    _edit_config(gptq_llama, desc_act=True)
    with pytest.raises(ConfigError) as e:
        AutoModelConverter(gptq_llama)
    text = str(e.value)
    assert name in text and "act_order" in text
    assert "desc_act=False or static_groups=True" in text and "consecutive inputs" in text


def test_a_g_idx_that_is_no_grouping_is_corrupt(gptq_llama: Path) -> None:
    name = "model.layers.0.self_attn.q_proj.g_idx"
    _edit_tensor(gptq_llama, name, np.zeros(64, dtype=np.int32))
    with pytest.raises(CheckpointError, match=re.escape(name) + " does not assign the 64 inputs"):
        AutoModelConverter(gptq_llama)


def test_shapes_that_disagree_with_the_config(gptq_llama: Path) -> None:
    # Config says 8 bits, tensors hold 4: qweight has half the rows the config implies.
    _edit_config(gptq_llama, bits=8)
    with pytest.raises(CheckpointError) as e:
        AutoModelConverter(gptq_llama)
    assert re.search(
        r"model\.layers\.0\.self_attn\.q_proj\.qweight has shape \[8, 64\], expected \[16, 64\]"
        r": that is 4 bits, config\.json says 8",
        str(e.value),
    )
    # Config says group 64, tensors have groups of 32.
    _edit_config(gptq_llama, bits=4, group_size=64)
    with pytest.raises(CheckpointError) as e:
        AutoModelConverter(gptq_llama)
    assert re.search(
        r"q_proj\.qzeros has shape \[2, 8\], expected \[1, 8\]: 2 groups means group size 32, "
        r"config\.json says 64",
        str(e.value),
    )
    assert "q_proj.scales has shape [2, 64], expected [1, 64]" in str(e.value)


def test_group_size_that_disagrees_with_the_tensors(gptq_llama: Path) -> None:
    # 64 inputs are 2 groups of 32 or of 48 (the last one shorter): same shapes, but g_idx
    # says which grouping the scales belong to.
    _edit_config(gptq_llama, group_size=48)
    with pytest.raises(CheckpointError, match="g_idx does not assign the 64 inputs to 2 groups"):
        AutoModelConverter(gptq_llama)


def test_odd_group_size_is_refused(gptq_llama: Path) -> None:
    _edit_config(gptq_llama, group_size=33)
    with pytest.raises(ConfigError, match="group_size=33 of .* is odd"):
        AutoModelConverter(gptq_llama)


def test_missing_tensors_are_named(gptq_llama: Path) -> None:
    _edit_tensor(gptq_llama, "model.layers.1.self_attn.v_proj.qzeros", None)
    with pytest.raises(
        CheckpointError,
        match=r"model\.layers\.1\.self_attn\.v_proj\.qzeros is missing \(expected shape "
        r"\[2, 4\]\)",
    ):
        AutoModelConverter(gptq_llama)


def test_partly_quantized_blocks_are_rejected(gptq_llama: Path) -> None:
    prefix = "model.layers.0.mlp.gate_proj"
    for sfx in (".qweight", ".qzeros", ".scales", ".g_idx"):
        _edit_tensor(gptq_llama, prefix + sfx, None)
    _edit_tensor(gptq_llama, prefix + ".weight", np.zeros((128, 64), dtype=np.float16))
    with pytest.raises(ConfigError, match="leaves 1 block projection.*gate_proj.weight"):
        AutoModelConverter(gptq_llama)


def test_a_gptq_config_without_gptq_tensors(hf_models: Dict[str, Path], tmp_path: Path) -> None:
    folder = tmp_path / "fake"
    shutil.copytree(hf_models["llama"], folder)
    config = json.loads((folder / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "gptq", "bits": 4, "group_size": 32}
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="no <layer>.qweight tensors"):
        AutoModelConverter(folder)


def test_fused_architectures_are_rejected(tmp_path: Path) -> None:
    folder = tmp_path / "gpt2"
    H.make_hf_model("gpt2", folder)
    config = json.loads((folder / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "gptq", "bits": 4, "group_size": 32}
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="GPTQ checkpoints of GPT2LMHeadModel are not supp"):
        AutoModelConverter(folder)


def test_requantizing_a_gptq_checkpoint_is_refused(gptq_llama: Path) -> None:
    with pytest.raises(ConfigError, match="already GPTQ-quantized"):
        AutoModelConverter(gptq_llama, quantization="w4a16")


# -- end to end (needs the quantized device format) ------------------------------------------


def _device_has_quantized_weights() -> bool:
    try:
        from hyperdex import _core
    except ImportError:
        return False
    return hasattr(_core.ModelSpec, "weight_bits")


@pytest.mark.skipif(
    not _device_has_quantized_weights(),
    reason="hyperdex._core.ModelSpec has no weight_bits yet: the quantized device format "
    "(ISA v3 QMatrix) is not built",
)
@pytest.mark.parametrize("bits,fmt", [(4, "gptq"), (8, "gptq_v2")])
def test_compiled_gptq_checkpoint_equals_its_dequantized_model(
    hf_models: Dict[str, Path], tmp_path: Path, bits: int, fmt: str
) -> None:
    """A compiled GPTQ import runs the fp16 model whose weights are the dequantized w' (bit
    for bit, docs/formats.md), and so matches PyTorch on w' within the fp16 tolerance of
    tests/test_accuracy.py."""
    gptq, plain = tmp_path / "gptq", tmp_path / "plain"
    quantized = write_gptq_checkpoint(hf_models["qwen2"], gptq, bits=bits, fmt=fmt)
    write_dequantized_checkpoint(gptq, plain, quantized)
    ids = np.random.default_rng(1).integers(0, H.VOCAB, size=(1, 12))
    lm = H.load_lpu(H.compile_model(gptq, tmp_path / "c1"))
    assert lm.config.quantization_config["method"] == "gptq-import"
    ours = np.asarray(lm(ids).logits)
    fp16 = np.asarray(H.load_lpu(H.compile_model(plain, tmp_path / "c2"))(ids).logits)
    assert np.array_equal(ours, fp16)  # quantized == fp16 on w', exactly
    ref = H.load_hf_model(plain)
    with torch.no_grad():
        expected = ref(torch.as_tensor(ids)).logits.numpy()
    assert H.within(ours, expected, atol=2e-2, rtol=1e-2), H.max_abs_diff(ours, expected)
