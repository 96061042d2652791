"""Bad input, end to end: every mistake a user can make with a checkpoint, a compiled folder,
the compile options or the runtime calls ends in a clear error class (hyperdex.errors, or
TypeError/ValueError for call arguments) whose message says what is wrong and what to do.

Tests marked ``BUG:`` in their docstring fail on purpose until the library is fixed.
"""

from __future__ import annotations

import json
import re
import shutil
import struct
from pathlib import Path
from typing import Any, Dict

import helpers as H
import numpy as np
import pytest
import torch

from hyperdex.errors import (
    CapacityError,
    CheckpointError,
    ConfigError,
    DeviceError,
    FormatError,
    UnsupportedArchitectureError,
)
from hyperdex.tools import AutoCompiler
from hyperdex.transformers import AutoConfig, AutoModelForCausalLM

MAX_LENGTH = 64


# -- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny GPT-2 checkpoint (vocab 512, 256 positions). Tests copy it before editing."""
    folder = tmp_path_factory.mktemp("bad_input") / "gpt2"
    H.make_hf_model("gpt2", folder, seed=0)
    return folder


@pytest.fixture(scope="module")
def weights(hf_folder: Path) -> Dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(hf_folder / "model.safetensors"))


@pytest.fixture(scope="module")
def lm(hf_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The tiny GPT-2 compiled with max_length=64 and loaded (for runtime-argument errors)."""
    path = H.compile_model(hf_folder, tmp_path_factory.mktemp("bad_input_lm"), MAX_LENGTH)
    return H.load_lpu(path)


@pytest.fixture
def compiled(hf_folder: Path, tmp_path: Path) -> Path:
    """A fresh compile of the tiny GPT-2 in this test's tmp_path (free to damage)."""
    return Path(H.compile_model(hf_folder, tmp_path / "out", MAX_LENGTH))


def _copy(hf_folder: Path, tmp_path: Path, name: str = "model") -> Path:
    dst = tmp_path / name
    shutil.copytree(hf_folder, dst)
    return dst


def _with_weights(hf_folder: Path, tmp_path: Path, tensors: Dict[str, np.ndarray]) -> Path:
    from safetensors.numpy import save_file

    folder = _copy(hf_folder, tmp_path)
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder


def _compile(folder: Path, tmp_path: Path, **kw: Any) -> str:
    kw.setdefault("max_length", MAX_LENGTH)
    kw.setdefault("num_device", 1)
    return AutoCompiler().compile(
        model_id=str(folder), prefix=str(tmp_path / "out"), progress=False, **kw
    )


def _load(path: Any, **kw: Any) -> Any:
    kw.setdefault("device_map", {"lpu": 1})
    return AutoModelForCausalLM.from_pretrained(path, **kw)


def _edit_json(path: Path, **changes: Any) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


# -- broken checkpoints -----------------------------------------------------------------------


def test_truncated_safetensors(hf_folder: Path, tmp_path: Path) -> None:
    folder = _copy(hf_folder, tmp_path)
    f = folder / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError) as e:
        _compile(folder, tmp_path)
    msg = str(e.value)
    assert "model.safetensors" in msg and "truncated" in msg
    assert "download" in msg and "again" in msg  # what to do
    # the failed compile leaves nothing loadable behind
    with pytest.raises(FormatError, match="not a finished compile"):
        _load(str(folder), prefix=str(tmp_path / "out"))


def test_truncated_safetensors_header(hf_folder: Path, tmp_path: Path) -> None:
    folder = _copy(hf_folder, tmp_path)
    (folder / "model.safetensors").write_bytes(b"\x10\x00\x00")
    with pytest.raises(CheckpointError, match="truncated") as e:
        _compile(folder, tmp_path)
    assert "download" in str(e.value)


def test_tensor_with_wrong_shape(hf_folder: Path, tmp_path: Path, weights: Dict) -> None:
    bad = dict(weights)
    bad["transformer.h.0.mlp.c_fc.weight"] = np.zeros((64, 100), np.float32)
    with pytest.raises(CheckpointError) as e:
        _compile(_with_weights(hf_folder, tmp_path, bad), tmp_path)
    msg = str(e.value)
    assert "transformer.h.0.mlp.c_fc.weight" in msg
    assert "[64, 100]" in msg and "[64, 256]" in msg  # what it has, what config.json implies
    assert "config.json" in msg


def test_missing_tensor(hf_folder: Path, tmp_path: Path, weights: Dict) -> None:
    bad = {k: v for k, v in weights.items() if k != "transformer.h.1.attn.c_proj.bias"}
    with pytest.raises(CheckpointError) as e:
        _compile(_with_weights(hf_folder, tmp_path, bad), tmp_path)
    msg = str(e.value)
    assert "transformer.h.1.attn.c_proj.bias" in msg
    assert "lacks" in msg and "incomplete" in msg


def test_unexpected_tensor(hf_folder: Path, tmp_path: Path, weights: Dict) -> None:
    bad = dict(weights)
    bad["transformer.h.7.mlp.c_fc.weight"] = np.zeros((64, 256), np.float32)
    with pytest.raises(CheckpointError) as e:
        _compile(_with_weights(hf_folder, tmp_path, bad), tmp_path)
    assert "transformer.h.7.mlp.c_fc.weight" in str(e.value)
    assert "config.json" in str(e.value)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
def test_non_finite_weights(hf_folder: Path, tmp_path: Path, weights: Dict, value: float) -> None:
    bad = dict(weights)
    bad["transformer.h.0.attn.c_attn.weight"] = weights["transformer.h.0.attn.c_attn.weight"].copy()
    bad["transformer.h.0.attn.c_attn.weight"][3, 7] = value
    with pytest.raises(CheckpointError) as e:
        _compile(_with_weights(hf_folder, tmp_path, bad), tmp_path)
    msg = str(e.value)
    assert "transformer.h.0.attn.c_attn.weight" in msg and "NaN/Inf" in msg
    assert "corrupt" in msg or "diverged" in msg


def test_weights_beyond_fp16(hf_folder: Path, tmp_path: Path, weights: Dict) -> None:
    bad = dict(weights)
    bad["transformer.wte.weight"] = weights["transformer.wte.weight"].copy()
    bad["transformer.wte.weight"][0, 0] = 1e6
    with pytest.raises(CheckpointError, match="fp16") as e:
        _compile(_with_weights(hf_folder, tmp_path, bad), tmp_path)
    assert "transformer.wte.weight" in str(e.value)


def test_integer_weights(hf_folder: Path, tmp_path: Path, weights: Dict) -> None:
    bad = dict(weights)
    bad["transformer.ln_f.bias"] = np.zeros((64,), np.int32)
    with pytest.raises(CheckpointError, match="dtype") as e:
        _compile(_with_weights(hf_folder, tmp_path, bad), tmp_path)
    assert "transformer.ln_f.bias" in str(e.value)


def test_unknown_architecture(hf_folder: Path, tmp_path: Path) -> None:
    folder = _copy(hf_folder, tmp_path)
    _edit_json(folder / "config.json", architectures=["RwkvForCausalLM"])
    with pytest.raises(UnsupportedArchitectureError) as e:
        _compile(folder, tmp_path)
    msg = str(e.value)
    assert "RwkvForCausalLM" in msg and "not supported" in msg
    assert "did you mean" not in msg, "no false hint from the shared ForCausalLM suffix"
    for name in ("GPT2LMHeadModel", "OPTForCausalLM", "LlamaForCausalLM", "Qwen2ForCausalLM"):
        assert name in msg, f"the message must list the supported {name}"
    assert not (tmp_path / "out").exists(), "rejected before any work"
    assert isinstance(e.value, ConfigError)  # a config value hyperdex cannot honour
    _edit_json(folder / "config.json", architectures=["GPTNeoxForCausalLM"])
    with pytest.raises(UnsupportedArchitectureError, match="did you mean GPTNeoXForCausalLM"):
        _compile(folder, tmp_path)


# The sizes of a tiny config.json, for the tests that read configs alone (no weights).
TINY_CONFIG = dict(
    vocab_size=50,
    hidden_size=64,
    num_hidden_layers=1,
    num_attention_heads=4,
    intermediate_size=96,
    max_position_embeddings=64,
)


@pytest.mark.parametrize(
    "config, key",
    [
        (dict(architectures=["FalconForCausalLM"], alibi=True), "alibi=True"),
        (
            dict(
                architectures=["LlamaForCausalLM"],
                rope_parameters={"rope_type": "dynamic", "factor": 2.0, "rope_theta": 1e4},
            ),
            "'dynamic'",
        ),
        (
            dict(
                architectures=["GPTNeoXForCausalLM"],
                rope_parameters={"rope_type": "default", "partial_rotary_factor": 0.1},
            ),
            "rotary_dim / partial_rotary_factor",
        ),
    ],
)
def test_a_config_value_the_graph_cannot_honour_is_refused_in_phase_0(
    tmp_path: Path, config: dict, key: str
) -> None:
    """Refused from config.json alone (no weights needed), naming the key and value."""
    from hyperdex.arch.registry import model_traits

    base = dict(TINY_CONFIG)
    with pytest.raises(ConfigError) as e:
        model_traits({**base, **config})
    assert key in str(e.value)
    if "dynamic" in key:
        assert "longrope" in str(e.value), "the message lists what is supported"


# A tiny mixture of experts' sizes under every family's keys, for the refusals below.
TINY_MOE = dict(
    TINY_CONFIG,
    num_key_value_heads=2,
    num_local_experts=6,
    num_experts=6,
    num_experts_per_tok=2,
    moe_intermediate_size=32,
)
_EVERY_LAYER = "hyperdex builds every layer as a mixture of experts"
_ROUTING = "hyperdex routes each token by a softmax over its routed experts, then top-k"


@pytest.mark.parametrize(
    "arch, change, named, supported",
    [
        ("Qwen3MoeForCausalLM", dict(decoder_sparse_step=2), "decoder_sparse_step=2", _EVERY_LAYER),
        ("Qwen3MoeForCausalLM", dict(mlp_only_layers=[0]), "mlp_only_layers=[0]", _EVERY_LAYER),
        (
            "Qwen3MoeForCausalLM",
            dict(shared_expert_intermediate_size=64),
            "shared_expert_intermediate_size=64",
            _ROUTING,
        ),
        ("MixtralForCausalLM", dict(n_group=4, topk_group=2), "n_group=4", _ROUTING),
        ("MixtralForCausalLM", dict(topk_method="noaux_tc"), "topk_method='noaux_tc'", _ROUTING),
        ("OlmoeForCausalLM", dict(scoring_func="sigmoid"), "scoring_func='sigmoid'", _ROUTING),
        ("OlmoeForCausalLM", dict(n_shared_experts=1), "n_shared_experts=1", _ROUTING),
        (
            "Qwen3MoeForCausalLM",
            dict(routed_scaling_factor=2.5),
            "routed_scaling_factor=2.5",
            _ROUTING,
        ),
        ("MixtralForCausalLM", dict(first_k_dense_replace=1), "first_k_dense_replace=1", ""),
        # Sizes: more experts per token than experts, none, or no expert width.
        ("MixtralForCausalLM", dict(num_experts_per_tok=7), "num_experts_per_tok", "at most"),
        ("Qwen3MoeForCausalLM", dict(num_experts=0), "num_experts must be a positive", ""),
        ("Qwen3MoeForCausalLM", dict(moe_intermediate_size=None), "moe_intermediate_size", ""),
        (
            "MixtralForCausalLM",
            dict(num_local_experts=None, num_experts=None),
            "num_local_experts",
            "expert count",
        ),
    ],
)
def test_a_mixture_hyperdex_does_not_build_is_refused_in_phase_0(
    arch: str, change: dict, named: str, supported: str
) -> None:
    """Routing hyperdex does not build (shared experts, grouped top-k, another scoring, dense
    layers among the mixtures) and impossible sizes: a ConfigError from config.json alone
    naming the key and value, and saying what hyperdex builds."""
    from hyperdex.arch.registry import model_traits

    config = {**TINY_MOE, "architectures": [arch], **change}
    with pytest.raises(ConfigError) as e:
        model_traits({k: v for k, v in config.items() if v is not None})
    assert named in str(e.value) and supported in str(e.value)


def test_a_mixture_is_refused_before_any_work(tmp_path: Path) -> None:
    """The refusal comes in phase 0 of compile(): a folder with a config.json and no weights
    is enough, and nothing is written."""
    folder = tmp_path / "qwen3_moe"
    folder.mkdir()
    config = dict(TINY_MOE, architectures=["Qwen3MoeForCausalLM"], mlp_only_layers=[1])
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="mlp_only_layers"):
        _compile(folder, tmp_path)
    assert not (tmp_path / "out").exists()


def test_tensors_that_disagree_with_the_traits_are_named(tmp_path: Path) -> None:
    """A StableLM whose config asks for per-head q/k norms its checkpoint lacks."""
    from transformers import StableLmConfig, StableLmForCausalLM

    folder = tmp_path / "stablelm"
    cfg = StableLmConfig(
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=4,
        vocab_size=50,
        max_position_embeddings=64,
    )
    StableLmForCausalLM(cfg).save_pretrained(str(folder))
    _edit_json(folder / "config.json", qk_layernorm=True)
    with pytest.raises(CheckpointError) as e:
        _compile(folder, tmp_path)
    assert "model.layers.0.self_attn.q_layernorm.norms.0.weight" in str(e.value)


def test_config_without_architectures(hf_folder: Path, tmp_path: Path) -> None:
    folder = _copy(hf_folder, tmp_path)
    cfg = json.loads((folder / "config.json").read_text())
    del cfg["architectures"]
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UnsupportedArchitectureError, match="architectures") as e:
        _compile(folder, tmp_path)
    assert "GPT2LMHeadModel" in str(e.value)


def test_folder_without_config(tmp_path: Path) -> None:
    folder = tmp_path / "empty"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError, match="config.json") as e:
        _compile(folder, tmp_path)
    assert "Hugging Face" in str(e.value)


def test_config_not_json(hf_folder: Path, tmp_path: Path) -> None:
    folder = _copy(hf_folder, tmp_path)
    (folder / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        _compile(folder, tmp_path)


def test_hub_id_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointError) as e:
        AutoCompiler().compile(model_id="some-org/some-model", prefix=str(tmp_path), progress=False)
    assert "HF_HUB_OFFLINE" in str(e.value) and "local folder" in str(e.value)


def test_model_id_neither_folder_nor_hub_id(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="neither an existing local folder"):
        AutoCompiler().compile(
            model_id=str(tmp_path / "no" / "such" / "folder"), prefix=str(tmp_path), progress=False
        )


# -- broken compiled folders --------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete"])
def test_corrupt_param_file(compiled: Path, damage: str) -> None:
    f = compiled / "param" / "hbm_ch05.bin"
    if damage == "flip":
        H.flip_byte(f, 100)
    elif damage == "truncate":
        f.write_bytes(f.read_bytes()[:-10])
    else:
        f.unlink()
    with pytest.raises(FormatError) as e:
        _load(compiled)
    msg = str(e.value)
    assert "hbm_ch05.bin" in msg
    assert {"flip": "CRC-32", "truncate": "wrong size", "delete": "missing"}[damage] in msg
    assert "recompile" in msg


@pytest.mark.parametrize("where", ["data", "header"])
def test_corrupt_model_bin(compiled: Path, hf_folder: Path, where: str) -> None:
    """A flipped byte in ckpt/hyperdex_model.bin: whatever reads it says FormatError (the
    loaded model does not read it: the parameters are CRC-checked on their own)."""
    from hyperdex.compiled.record import load_converted
    from hyperdex.formats import ModelFile

    f = compiled / "ckpt" / "hyperdex_model.bin"
    with ModelFile.open(f) as mf:
        offset = mf.data_offset + mf.info("tok_embd.weight").offset + 3 if where == "data" else 40
    H.flip_byte(f, offset)
    with pytest.raises(FormatError) as e:
        load_converted(compiled / "ckpt")
    msg = str(e.value)
    assert "hyperdex_model.bin" in msg and "corrupt" in msg
    assert "conversion" in msg  # what to do: re-run it
    if where == "data":
        assert "tok_embd.weight" in msg
    # the compiled model itself is intact and still loads and runs
    assert _load(compiled)([[1, 2, 3]]).logits is not None
    # a full recompile rebuilds the file
    _compile(hf_folder, compiled.parents[2])
    load_converted(compiled / "ckpt")[1].close()


def test_fast_compile_with_corrupt_model_bin(compiled: Path, hf_folder: Path) -> None:
    """BUG: fast_compile=True opens ckpt/hyperdex_model.bin without checking its CRCs
    (``load_converted(ckpt, verify=not fast_compile)`` in compiler.py). When the map phase
    reruns (here: max_length changed) the corrupt tensor data is written into fresh param
    files with fresh CRCs, and the compiled model silently computes garbage (logits off by
    ~3e4). Expected: the corruption is detected (FormatError) or the conversion redone."""
    from hyperdex.formats import ModelFile

    f = compiled / "ckpt" / "hyperdex_model.bin"
    with ModelFile.open(f) as mf:
        row10 = mf.data_offset + mf.info("tok_embd.weight").offset + 10 * 64 * 2
    H.flip_byte(f, row10 + 1)  # the high byte of token 10's first embedding value
    try:
        path = _compile(hf_folder, compiled.parents[2], fast_compile=True, max_length=96)
    except FormatError as e:
        assert "hyperdex_model.bin" in str(e)
        return
    ids = torch.tensor([[10, 11, 12, 10]])
    ours = _load(path)(ids).logits.numpy()
    ref = H.load_hf_model(hf_folder)(ids).logits.detach().numpy()
    assert H.within(ours, ref, 2e-2, 1e-2), (
        f"fast_compile mapped a corrupt hyperdex_model.bin: logits off by "
        f"{H.max_abs_diff(ours, ref):.3g}"
    )


def test_memory_map_of_another_format_version(compiled: Path) -> None:
    _edit_json(compiled / "config" / "memory_map.json", format_version=99)
    with pytest.raises(FormatError) as e:
        _load(compiled)
    msg = str(e.value)
    assert "memory_map.json" in msg and "99" in msg
    assert "Recompile" in msg or "recompile" in msg


def test_memory_map_not_json(compiled: Path) -> None:
    (compiled / "config" / "memory_map.json").write_text("{not json")
    with pytest.raises(FormatError, match="corrupt") as e:
        _load(compiled)
    assert "recompile" in str(e.value)


@pytest.mark.parametrize("loader", ["model", "config"])
def test_hyperdex_config_of_another_format_version(compiled: Path, loader: str) -> None:
    """BUG: ckpt/hyperdex_config.json with another format_version is accepted by
    AutoModelForCausalLM.from_pretrained and AutoConfig.from_pretrained (configuration.py
    reads it with read_json and never calls check_config_version); the compiler
    itself rejects such a file (load_converted). Expected: FormatError saying to recompile."""
    _edit_json(compiled / "ckpt" / "hyperdex_config.json", format_version=99)
    with pytest.raises(FormatError) as e:
        _load(compiled) if loader == "model" else AutoConfig.from_pretrained(compiled)
    assert "hyperdex_config.json" in str(e.value) and "ecompile" in str(e.value)


@pytest.mark.parametrize("program", ["prefill.bin", "decode.bin"])
def test_program_of_another_format_version(compiled: Path, program: str) -> None:
    f = compiled / "inst" / program
    data = bytearray(f.read_bytes())
    assert data[:8] == b"HDXPROG\x00"
    struct.pack_into("<I", data, 8, 2)  # program format version (docs/isa.md header)
    f.write_bytes(bytes(data))
    with pytest.raises(FormatError) as e:
        _load(compiled)
    msg = str(e.value)
    assert program in msg and "format v2" in msg and "recompile" in msg


@pytest.mark.parametrize("damage", ["flip", "empty"])
def test_corrupt_program(compiled: Path, damage: str) -> None:
    f = compiled / "inst" / "prefill.bin"
    if damage == "flip":
        H.flip_byte(f, f.stat().st_size - 3)
    else:
        f.write_bytes(b"")
    with pytest.raises(FormatError) as e:
        _load(compiled)
    assert "prefill.bin" in str(e.value) and "recompile" in str(e.value)


def test_swapped_programs(compiled: Path) -> None:
    a, b = compiled / "inst" / "prefill.bin", compiled / "inst" / "decode.bin"
    pa, pb = a.read_bytes(), b.read_bytes()
    a.write_bytes(pb)
    b.write_bytes(pa)
    with pytest.raises(FormatError, match="swapped"):
        _load(compiled)


def test_compile_json_missing(compiled: Path, hf_folder: Path) -> None:
    (compiled / "compile.json").unlink()
    for args in ((str(compiled),), (str(hf_folder),)):
        kw = {} if args[0] == str(compiled) else {"prefix": str(compiled.parents[1])}
        with pytest.raises(FormatError) as e:
            _load(*args, **kw)
        msg = str(e.value)
        assert "not a finished compile" in msg and "interrupted" in msg
        assert "compile(" in msg  # what to do
    with pytest.raises(FormatError, match="not a finished compile"):
        AutoConfig.from_pretrained(compiled)


def test_compile_json_missing_hint_names_the_source_model(compiled: Path) -> None:
    """BUG: loading an unfinished compiled folder by its path suggests
    ``AutoCompiler().compile(model_id='<the compiled folder>')``, which cannot work (that
    folder is not a Hugging Face model folder: it has no config.json at its top). The hint
    should name the source model (it is in ckpt/config.json's folder, or the model_id) or say
    to recompile the original model."""
    (compiled / "compile.json").unlink()
    with pytest.raises(FormatError) as e:
        _load(compiled)
    assert f"model_id={str(compiled)!r}" not in str(e.value)


def test_interrupted_compile(
    hf_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A compile stopped in its last phase (Ctrl-C) leaves a folder that does not load, and
    the error says so; the next compile finishes it."""
    from hyperdex.tools import compiler

    path = Path(_compile(hf_folder, tmp_path))
    _load(path)  # a finished compile loads

    def interrupted(*args: Any, **kw: Any) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr(compiler._core, "generate_programs", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _compile(hf_folder, tmp_path, max_length=MAX_LENGTH // 2)
    monkeypatch.undo()
    assert not (path / "compile.json").exists()
    with pytest.raises(FormatError, match="interrupted"):
        _load(path)
    assert _compile(hf_folder, tmp_path, fast_compile=True) == str(path)
    assert _load(path).max_length == MAX_LENGTH


# -- compile options ----------------------------------------------------------------------------


def test_num_device_not_power_of_two(hf_folder: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="power of two") as e:
        _compile(hf_folder, tmp_path, num_device=3)
    assert "3" in str(e.value)
    assert not (tmp_path / "out").exists()


def test_num_device_above_the_largest_ring(hf_folder: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        _compile(hf_folder, tmp_path, num_device=2048)
    msg = str(e.value)
    assert "num_device" in msg and "1024" in msg and "2048" in msg
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("value", [0, -1, "1", 1.0, True])
def test_num_device_bad_type_or_range(hf_folder: Path, tmp_path: Path, value: Any) -> None:
    with pytest.raises(ConfigError, match="num_device"):
        _compile(hf_folder, tmp_path, num_device=value)


def test_device_map_for_more_devices_than_compiled(compiled: Path) -> None:
    with pytest.raises(ConfigError) as e:
        _load(compiled, device_map={"lpu": 2})
    msg = str(e.value)
    assert "compiled for 1" in msg and "2" in msg
    assert "device_map={'lpu': 1}" in msg and "num_device=2" in msg


@pytest.mark.parametrize("device_map", [{"lpu": 0}, {"lpu": "1"}, {"tpu": 1}, "cuda", {"gpu": -1}])
def test_bad_device_map(compiled: Path, device_map: Any) -> None:
    with pytest.raises(ConfigError, match="device_map"):
        _load(compiled, device_map=device_map)


def test_unknown_type_device(hf_folder: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        _compile(hf_folder, tmp_path, type_device="nope")
    msg = str(e.value)
    assert "'nope'" in msg
    for preset in ("u55c", "vcu128", "asic"):
        assert preset in msg


def test_max_length_beyond_positions(hf_folder: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        _compile(hf_folder, tmp_path, max_length=H.MAX_POS + 1)
    msg = str(e.value)
    assert str(H.MAX_POS + 1) in msg and "max_position_embeddings" in msg
    assert f"max_length <= {H.MAX_POS}" in msg


@pytest.mark.parametrize("value", [0, -5, "64", 64.0])
def test_max_length_bad_value(hf_folder: Path, tmp_path: Path, value: Any) -> None:
    with pytest.raises(ConfigError, match="max_length must be a positive integer"):
        _compile(hf_folder, tmp_path, max_length=value)


def test_unknown_quantization_scheme(hf_folder: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="quantization must be None .*got 'gptq'"):
        _compile(hf_folder, tmp_path, quantization="gptq")


def test_model_too_big_for_the_device(tmp_path: Path) -> None:
    """The capacity check runs before any work: the weights file is empty (a conversion would
    fail on it), yet the error is CapacityError, with the numbers and a device count."""
    folder = tmp_path / "huge-llama"
    folder.mkdir()
    (folder / "config.json").write_text(
        json.dumps(
            {
                "architectures": ["LlamaForCausalLM"],
                "model_type": "llama",
                "hidden_size": 16384,
                "intermediate_size": 53248,
                "num_hidden_layers": 200,
                "num_attention_heads": 128,
                "num_key_value_heads": 8,
                "vocab_size": 128256,
                "max_position_embeddings": 8192,
                "rms_norm_eps": 1e-5,
            }
        )
    )
    (folder / "model.safetensors").write_bytes(b"")
    with pytest.raises(CapacityError) as e:
        _compile(folder, tmp_path, max_length=64)
    msg = str(e.value)
    assert "u55c" in msg and "16 GiB" in msg  # what the device has
    # what the model needs: ~20B parameters in fp16 ~ 1.19e3 GiB
    need = re.search(r"needs ([0-9.e+]+) GiB", msg)
    assert need and 1000 < float(need.group(1)) < 1400, msg
    # what to do: the smallest ring (a power of two) whose shares fit
    devices = re.search(r"smallest ring that fits has (\d+) devices: compile with num_device", msg)
    assert devices, msg
    n = int(devices.group(1))
    assert n & (n - 1) == 0 and n * 16 >= float(need.group(1)), msg
    assert not (tmp_path / "out").exists(), "nothing may be written before the check"


# -- runtime arguments --------------------------------------------------------------------------


def test_backend_xrt_not_available(compiled: Path) -> None:
    """No board here: asking for one is a DeviceError that says what to do (use the
    emulator, or point hyperdex at the board's xclbin / XRT install)."""
    with pytest.raises(DeviceError) as e:
        _load(compiled, backend="xrt")
    msg = str(e.value)
    assert any(hint in msg for hint in ("backend='emu'", "HYPERDEX_XCLBIN", "docs/xrt.md")), msg
    with pytest.raises(ConfigError, match="backend must be one of"):
        _load(compiled, backend="cuda")


def test_from_pretrained_unknown_argument(compiled: Path) -> None:
    with pytest.raises(TypeError, match="max_lenght"):
        _load(compiled, max_lenght=5)


def test_prompt_longer_than_max_length(lm: Any) -> None:
    long = torch.zeros((1, MAX_LENGTH + 1), dtype=torch.long)
    for call in (lambda: lm(long), lambda: lm.generate(long, max_new_tokens=1)):
        with pytest.raises(ValueError) as e:
            call()
        msg = str(e.value)
        assert f"({MAX_LENGTH + 1} tokens)" in msg and f"max_length of {MAX_LENGTH}" in msg
        assert "shorten the prompt" in msg and "recompile with a larger max_length" in msg
    # the prompt fits but the new tokens do not
    with pytest.raises(ValueError, match="plus 10 new tokens exceed the max_length of 64"):
        lm.generate(torch.zeros((1, 60), dtype=torch.long), max_new_tokens=10)
    # and the model still works afterwards
    assert lm.generate([1, 2, 3], max_new_tokens=2, do_sample=False)[:3] == [1, 2, 3]


@pytest.mark.parametrize(
    ("kwargs", "error", "pattern"),
    [
        (dict(do_sample=True, temperature=-1), ValueError, r"temperature must be > 0"),
        (dict(do_sample=True, temperature=0.0), ValueError, r"set do_sample=False"),
        (dict(top_p=2), ValueError, r"top_p must be a float in \(0, 1\]"),
        (dict(top_p=0), ValueError, r"top_p must be a float in \(0, 1\]"),
        (dict(top_k=-1), ValueError, r"top_k must be an int >= 0"),
        (dict(top_k=2.5), TypeError, r"top_k must be an int"),
        (dict(max_new_tokens="5"), TypeError, r"max_new_tokens must be None or an int"),
        (dict(max_new_tokens=-1), ValueError, r"max_new_tokens must be None or an int >= 0"),
        (
            dict(max_new_token=5),
            TypeError,
            r"unknown generation option 'max_new_token'; "
            r"did you mean 'max_new_tokens'\?",
        ),
        (dict(temprature=0.7), TypeError, r"did you mean 'temperature'"),
        (dict(repetition_penalty=0), ValueError, r"repetition_penalty must be a finite float"),
        (dict(do_sample="yes"), TypeError, r"do_sample must be True or False"),
        (dict(num_beams=4), ValueError, r"num_beams=4 is not supported"),
        (dict(return_dict_in_generate=1), TypeError, r"return_dict_in_generate must be True"),
        (dict(seed=-3), ValueError, r"seed must be None or an int >= 0"),
        (dict(eos_token_id="</s>"), TypeError, r"eos_token_id must be"),
    ],
)
def test_generate_bad_arguments(lm: Any, kwargs: Dict, error: type, pattern: str) -> None:
    with pytest.raises(error, match=pattern):
        lm.generate(torch.tensor([[1, 2, 3]]), **kwargs)


def test_forward_unknown_argument(lm: Any) -> None:
    with pytest.raises(TypeError, match="output_hidden_states"):
        lm(torch.tensor([[1, 2, 3]]), output_hidden_states=True)


@pytest.mark.parametrize("bad", [512, 600, 10**6])
def test_ids_outside_vocab(lm: Any, bad: int) -> None:
    ids = torch.tensor([[1, bad, 3]])
    for call in (lambda: lm(ids), lambda: lm.generate(ids, max_new_tokens=2)):
        with pytest.raises(ValueError) as e:
            call()
        msg = str(e.value)
        assert str(bad) in msg and "[0, 512)" in msg and "tokenizer" in msg


def test_negative_ids(lm: Any) -> None:
    for ids in (torch.tensor([[1, -1]]), np.array([1, -1]), [1, -1]):
        with pytest.raises(ValueError, match="negative|>= 0"):
            lm(ids)


@pytest.mark.parametrize(
    "ids",
    [
        torch.tensor([[1.0, 2.0]]),
        np.array([[1.0, 2.0]]),
        [[1.0, 2.0]],
        [1, 2.5],
        torch.tensor([[True, False]]),
        ["1", "2"],
    ],
    ids=["torch-float", "numpy-float", "list-float", "list-mixed", "torch-bool", "strings"],
)
def test_non_integer_ids(lm: Any, ids: Any) -> None:
    for call in (lambda: lm(ids), lambda: lm.generate(ids, max_new_tokens=2)):
        with pytest.raises(TypeError, match="int"):
            call()


@pytest.mark.parametrize(
    ("ids", "pattern"),
    [
        ([], "empty"),
        (np.zeros((1, 0), np.int64), "empty"),
        ([[1, 2], [3]], "ragged"),
        (np.zeros((1, 2, 3), np.int64), "1-D .* or 2-D"),
        (np.int64(5), "must be a torch tensor|1-D"),
    ],
)
def test_bad_ids_shape(lm: Any, ids: Any, pattern: str) -> None:
    with pytest.raises((ValueError, TypeError), match=pattern):
        lm(ids)


def test_tokenizer_output_dict(lm: Any) -> None:
    with pytest.raises(TypeError, match=r"inputs\['input_ids'\]"):
        lm.generate({"input_ids": [[1, 2, 3]], "attention_mask": [[1, 1, 1]]})


def test_padded_attention_mask(lm: Any) -> None:
    # generate() runs padded rows without their padding (test_padding_and_pipeline.py); the
    # forward call returns every position's logits, so it takes unpadded rows only.
    with pytest.raises(ValueError, match="padding") as e:
        lm(torch.tensor([[1, 2, 3]]), attention_mask=torch.tensor([[0, 1, 1]]))
    assert "unpadded" in str(e.value)
    with pytest.raises(ValueError, match="attention_mask has shape"):
        lm(torch.tensor([[1, 2, 3]]), attention_mask=torch.tensor([[1, 1]]))


@pytest.mark.parametrize(
    "config, key",
    [
        (dict(architectures=["MistralForCausalLM"], sliding_window="wide"), "cannot read"),
        (dict(architectures=["Gemma2ForCausalLM"], query_pre_attn_scalar="x"), "cannot read"),
        (
            dict(architectures=["FalconForCausalLM"], new_decoder_architecture=True),
            "num_attention_heads",
        ),
    ],
)
def test_a_family_reading_a_bad_value_says_so(config: dict, key: str) -> None:
    """A family's traits read from a hostile config.json end in a ConfigError, never a bare
    ValueError or KeyError."""
    from hyperdex.arch.registry import model_traits

    base = dict(TINY_CONFIG)
    if key == "num_attention_heads":
        base.pop("num_attention_heads")
    with pytest.raises(ConfigError, match=key):
        model_traits({**base, **config})


def test_no_hostile_config_value_escapes_as_a_bare_error() -> None:
    """Every family reads every key it knows of a config.json with each of these values put
    in: a ConfigError or a record, never a bare ValueError/TypeError/KeyError/OverflowError
    (a sweep over the whole table; it found float('x') in the RoPE reading, an int() of
    GPT-J's rotary_dim and numpy's size limit for a 10^40 head_dim)."""
    import warnings

    from hyperdex.arch.registry import lookup, model_traits, supported_architectures

    base = dict(
        vocab_size=50, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, intermediate_size=96, max_position_embeddings=64, n_embd=64,
        n_layer=2, n_head=4, n_positions=64, sliding_window=8, head_dim=16, ffn_hidden_size=96,
        ffn_dim=96, num_layers=2, rotary_dim=8, logit_scale=0.5, clip_qkv=1.0,
        layer_types=["sliding_attention", "full_attention"], rope_theta=1e4,
        no_rope_layers=[1, 0], query_pre_attn_scalar=16, embedding_multiplier=2.0,
        residual_multiplier=0.5, logits_scaling=2.0, attention_multiplier=0.1,
        rope_local_base_freq=1e4, use_sliding_window=True, max_window_layers=1,
        partial_rotary_factor=0.5, rotary_pct=0.5,
        rope_scaling={"rope_type": "linear", "factor": 2.0},
        num_local_experts=6, num_experts=6, num_experts_per_tok=2, moe_intermediate_size=32,
        norm_topk_prob=True, decoder_sparse_step=1, mlp_only_layers=[],
    )  # fmt: skip
    hostile = ["x", -1, [], {}, 10**40, 1.5, True, None, float("nan")]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # numpy's overflow warnings on the way to the error
        for arch in supported_architectures():
            # Less the values the family refuses outright (a mixture's routing variants).
            refuses = lookup({"architectures": [arch]})[1].unsupported
            config = {
                k: v for k, v in base.items() if not any(k == r and bad(v) for r, bad, _ in refuses)
            }
            config["architectures"] = [arch]
            model_traits(config)
            for key in base:
                for value in hostile:
                    try:
                        model_traits(dict(config, **{key: value}))
                    except ConfigError:
                        pass
