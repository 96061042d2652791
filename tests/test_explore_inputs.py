"""Inputs: presets and their sources, sweeps, HF config.json, and every bad-input case of the
issue with its message."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from hyperdex.errors import ConfigError, UnsupportedArchitectureError
from hyperdex.explore import available, explore, load_hardware, load_model, load_system
from hyperdex.explore.inputs.loader import PRESETS, load_technology
from hyperdex.explore.inputs.sweep import Sweep


def _write(tmp_path: Path, name: str, data: dict) -> Path:
    p = tmp_path / name
    p.write_text(yaml.safe_dump(data), encoding="utf-8")
    return p


def _preset(kind: str, name: str) -> dict:
    return yaml.safe_load((PRESETS / kind / f"{name}.yaml").read_text())


def test_shipped_presets_load():
    assert {"tpuv4", "a100", "h100", "l4", "u55c", "vcu128", "lpu-asic"} <= set(
        available("hardware")
    )
    assert {"gpt3", "llama2-7b", "llama2-13b", "llama2-70b", "opt-1.3b"} <= set(available("model"))
    for name in available("hardware"):
        load_hardware(name)
    for name in available("technology"):
        load_technology(name)
    for name in available("system"):
        load_system(name)
    for name in available("model"):
        load_model(name)


def _covered(field: str, sources: dict) -> bool:
    return any(
        field == k or field.startswith(k + ".") or field.startswith(k + "_") for k in sources
    )


@pytest.mark.parametrize("kind", ["hardware", "technology"])
def test_every_preset_number_has_a_source(kind):
    for name in available(kind):
        data = _preset(kind, name)
        sources = data.get("sources", {})
        for section, fields in data.items():
            if not isinstance(fields, dict) or section in ("sources", "device"):
                continue
            for key, value in fields.items():
                leaf = f"{section}.{key}"
                numeric = isinstance(value, (int, float, dict)) and not isinstance(value, bool)
                if numeric and not (kind == "hardware" and name == "hw_example"):
                    assert _covered(leaf, sources), f"{kind}/{name}: {leaf} has no source"


def test_sweep_is_the_cartesian_product_in_order():
    s = Sweep({"a": [1, 2], "b": ["x", "y", "z"], "c": [True]})
    assert s.size == 6
    cols = s.all_columns()
    assert list(cols["a"]) == [1, 1, 1, 2, 2, 2]
    assert list(cols["b"]) == ["x", "y", "z"] * 2
    assert s.point(4) == {"a": 2.0, "b": "y", "c": True}


def test_hardware_list_fields_sweep():
    hw = load_hardware("hw_example")
    assert hw.size == 3 * 3 * 2 * 2


def test_hf_config_json_is_read_directly(tmp_path):
    cfg = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": 4096,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "intermediate_size": 14336,
        "vocab_size": 128256,
        "max_position_embeddings": 8192,
        "hidden_act": "silu",
        "_name_or_path": "meta-llama/Meta-Llama-3-8B",
    }
    folder = tmp_path / "llama3"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(cfg))
    m = load_model(folder)
    f = m.sweep.fields
    assert f["model.num_kv_heads"] == [8] and f["model.gated_mlp"] == [True]
    assert f["model.positions"] == ["rope"] and m.name == "Meta-Llama-3-8B"
    r = explore("a100", folder / "config.json", out_dir=None, plots=False, progress=False)
    assert r.results["feasible"].all()


def _hf_folder(tmp_path: Path, cfg: dict) -> Path:
    folder = tmp_path / "hf"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder


_OPT_350M = {
    "architectures": ["OPTForCausalLM"],
    "model_type": "opt",
    "hidden_size": 1024,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "ffn_dim": 4096,
    "vocab_size": 50272,
    "max_position_embeddings": 2048,
    "word_embed_proj_dim": 512,
    "do_layer_norm_before": False,
    "activation_function": "relu",
}


def test_hf_config_is_read_by_the_architecture_registry(tmp_path):
    """The explorer's model is the registry's (hyperdex.arch.registry.model_traits), the
    description the compiler and the cost model read: sizes, norm, activation, positions."""
    from hyperdex.arch.registry import model_traits

    m = load_model(_hf_folder(tmp_path, _OPT_350M))
    f = {k.split(".", 1)[1]: v[0] for k, v in m.sweep.fields.items()}
    traits = model_traits(_OPT_350M)[2]
    assert (f["num_layers"], f["d_model"], f["num_heads"], f["num_kv_heads"]) == (24, 1024, 16, 16)
    assert (f["d_head"], f["d_ff"], f["vocab_size"], f["max_positions"]) == (64, 4096, 50272, 2048)
    assert (f["norm"], f["activation"], f["positions"]) == ("layernorm", "relu", "learned")
    assert f["gated_mlp"] is False and f["parallel_block"] is False
    assert f["d_head"] == traits.head_dim and f["norm"] == traits.norm
    assert "projection of embeddings ignored" in f["source"]


def test_hf_config_without_model_type_is_read_by_its_architecture(tmp_path):
    """The architecture names the family: a Llama config without "model_type" or "rope_theta"
    is still gated, RMS-normed and rotary (a model_type table read it as a GPT-2)."""
    cfg = {
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": 2048,
        "num_hidden_layers": 16,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "intermediate_size": 5632,
        "vocab_size": 32000,
        "max_position_embeddings": 2048,
    }
    f = load_model(_hf_folder(tmp_path, cfg)).sweep.fields
    assert f["model.gated_mlp"] == [True] and f["model.norm"] == ["rmsnorm"]
    assert f["model.positions"] == ["rope"] and f["model.activation"] == ["silu"]
    assert f["model.d_head"] == [128] and f["model.num_kv_heads"] == [8]


def test_hf_config_of_an_unsupported_architecture_names_the_supported_ones(tmp_path):
    cfg = {
        "architectures": ["RwkvForCausalLM"],
        "model_type": "rwkv",
        "hidden_size": 768,
        "num_hidden_layers": 12,
        "vocab_size": 50277,
    }
    folder = _hf_folder(tmp_path, cfg)
    with pytest.raises(UnsupportedArchitectureError) as e:
        load_model(folder)
    msg = str(e.value)
    assert str(folder / "config.json") in msg and "RwkvForCausalLM is not supported" in msg
    assert "Supported architectures:" in msg and "LlamaForCausalLM" in msg
    with pytest.raises(UnsupportedArchitectureError, match="names no 'architectures'"):
        load_model(
            _hf_folder(tmp_path / "bare", {k: v for k, v in cfg.items() if k != "architectures"})
        )


def test_unknown_field_names_the_nearest_valid_one(tmp_path):
    hw = _preset("hardware", "a100")
    hw["chip"]["peak_tflop"] = hw["chip"].pop("peak_tflops")
    with pytest.raises(
        ConfigError,
        match=r"unknown field 'chip.peak_tflop' \(did you mean "
        r"'chip.peak_tflops'\?\)",
    ):
        load_hardware(_write(tmp_path, "hw.yaml", hw))
    model = _preset("model", "llama2-7b")
    model["model"]["num_head"] = model["model"].pop("num_heads")
    with pytest.raises(ConfigError, match=r"'model.num_head' \(did you mean 'model.num_heads'"):
        load_model(_write(tmp_path, "m.yaml", model))
    system = {"workload": {"batch_size": 4}}
    with pytest.raises(ConfigError, match=r"'workload.batch_size' \(did you mean 'workload.batch'"):
        load_system(_write(tmp_path, "s.yaml", system))
    lpu = _preset("hardware", "u55c")
    lpu["device"]["hbm_bandwidth_gbs"] = 500
    with pytest.raises(
        ConfigError,
        match=r"'device.hbm_bandwidth_gbs' \(did you mean "
        r"'device.hbm_bandwidth_gbps'",
    ):
        load_hardware(_write(tmp_path, "lpu.yaml", lpu))
    with pytest.raises(ConfigError, match=r"unknown hardware preset 'tpuv5': did you mean 'tpuv4'"):
        load_hardware("tpuv5")
    with pytest.raises(
        ConfigError,
        match=r"comm.allreduce = 'ring2d' is not one of 'ring', "
        r"'2d_ring'",
    ):
        load_system(_write(tmp_path, "s2.yaml", {"comm": {"allreduce": "ring2d"}}))


def test_inconsistent_model(tmp_path):
    model = _preset("model", "opt-1.3b")
    model["model"]["d_model"] = 1000
    model["model"]["num_heads"] = 12
    with pytest.raises(ConfigError, match=r"num_heads=12 does not divide d_model=1000"):
        load_model(_write(tmp_path, "m.yaml", model))
    model = _preset("model", "llama2-70b")
    model["model"]["num_kv_heads"] = [8, 7]  # one point of the sweep is wrong
    with pytest.raises(ConfigError, match=r"num_kv_heads=7 must divide num_heads=64"):
        load_model(_write(tmp_path, "m2.yaml", model))


def test_impossible_mapping_says_why(tmp_path):
    system = {"workload": {"batch": 1}, "mapping": {"max_chips": 2}}
    with pytest.raises(
        ConfigError,
        match=r"impossible mapping.*does not fit.*each chip needs "
        r"\d+\.\d+ GB.*holds \d+\.\d+ GB usable",
    ):
        explore("l4", "gpt3", _write(tmp_path, "s.yaml", system), out_dir=None, progress=False)
    system = {"mapping": {"tensor_parallel": 3}}
    with pytest.raises(ConfigError, match=r"tensor_parallel=3 does not divide num_heads=32"):
        explore(
            "a100", "llama2-7b", _write(tmp_path, "s2.yaml", system), out_dir=None, progress=False
        )
    system = {"workload": {"batch": 1}, "mapping": {"max_latency_ms": 0.01}}
    with pytest.raises(
        ConfigError,
        match=r"decodes at .* ms/token, above "
        r"mapping.max_latency_ms=0.01",
    ):
        explore(
            "a100", "llama2-7b", _write(tmp_path, "s3.yaml", system), out_dir=None, progress=False
        )


def test_empty_sweep(tmp_path):
    hw = _preset("hardware", "hw_example")
    hw["chip"]["sram_mb"] = []
    with pytest.raises(ConfigError, match=r"'chip.sram_mb' is an empty list.*no design point"):
        load_hardware(_write(tmp_path, "hw.yaml", hw))
    hw = _preset("hardware", "hw_example")
    hw["chip"]["peak_tflops"] = [4000.0, 8000.0]  # every die beyond the reticle
    with pytest.raises(
        ConfigError,
        match=r"empty sweep: none of the \d+ hardware design\(s\).*"
        r"exceeds the reticle limit",
    ):
        explore(_write(tmp_path, "hw2.yaml", hw), "gpt3", out_dir=None, progress=False)


def test_mapping_fields_sweep_and_fix():
    r = explore("a100", "llama2-7b", "default", out_dir=None, plots=False, progress=False)
    assert len(r.results) == 4  # the default system sweeps 4 batch sizes
    big = r.results["workload.batch"] == 128
    small = r.results["workload.batch"] == 1
    assert np.all(r.results["tokens_per_s"][big] > r.results["tokens_per_s"][small])
