"""The model record (hyperdex/arch/record.py) is typed, agrees field for field with the core's
ModelSpec, and refuses a record it cannot read, naming the field."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from hyperdex import _core
from hyperdex.arch.record import ModelRecord
from hyperdex.arch.registry import model_traits
from hyperdex.arch.spec import PYTHON_ONLY, model_spec
from hyperdex.errors import ConfigError, FormatError

# ModelSpec fields that are no trait of the model: the device's share of it and its weight
# format (set from the quantization record and shard_spec), and the informational name.
_SPEC_ONLY = {
    "architecture",
    "lm_head_rows",
    "weight_bits",
    "group_size",
    "quantize_lm_head",
    "q_norm_count",
    "k_norm_count",
}

_LLAMA = {
    "architectures": ["LlamaForCausalLM"],
    "vocab_size": 101,
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 96,
    "max_position_embeddings": 64,
}


def test_the_record_and_modelspec_have_the_same_fields() -> None:
    spec_fields = {
        name
        for name in dir(_core.ModelSpec)
        if not name.startswith("_") and not callable(getattr(_core.ModelSpec, name))
    }
    record_fields = {f.name for f in dataclasses.fields(ModelRecord)}
    assert sorted(spec_fields - _SPEC_ONLY - record_fields) == []
    assert sorted(record_fields - set(PYTHON_ONLY) - spec_fields) == []


def test_json_round_trip_and_the_spec_it_makes() -> None:
    _, _, record = model_traits(dict(_LLAMA, sliding_window=8))
    again = ModelRecord.from_dict(json.loads(json.dumps(record.to_dict())))
    assert again == record
    spec = model_spec({"architecture": "LlamaForCausalLM", "model": again})
    assert (spec.num_kv_heads, spec.head_dim, spec.sliding_window) == (2, 16, 8)
    assert spec.rope_dim == 16 and len(spec.rope_inv_freq) == 8


# The sizes of a mixture of experts as each family's config.json names them, and the record
# they make: (num_experts, experts_per_token, router_renormalize, intermediate_size).
_MOE = [
    (
        dict(
            architectures=["MixtralForCausalLM"],
            num_local_experts=6,
            num_experts_per_tok=2,
            norm_topk_prob=False,  # not Mixtral's: it always renormalizes
        ),
        (6, 2, True, 96),
    ),
    (
        dict(
            architectures=["Qwen3MoeForCausalLM"],
            num_experts=6,
            num_experts_per_tok=3,
            moe_intermediate_size=80,  # each expert's; intermediate_size is the dense MLP's
            norm_topk_prob=True,
        ),
        (6, 3, True, 80),
    ),
    (
        dict(
            architectures=["Qwen3MoeForCausalLM"],
            num_local_experts=5,  # as transformers 5's save_pretrained writes it
            num_experts_per_tok=1,
            moe_intermediate_size=80,
        ),
        (5, 1, False, 80),
    ),
    (
        dict(architectures=["OlmoeForCausalLM"], num_experts=6, num_experts_per_tok=2),
        (6, 2, False, 96),
    ),
]


@pytest.mark.parametrize("config, want", _MOE)
def test_a_mixture_of_experts_record(config: dict, want: tuple) -> None:
    _, _, record = model_traits({**_LLAMA, **config})
    got = (
        record.num_experts,
        record.experts_per_token,
        record.router_renormalize,
        record.intermediate_size,
    )
    assert got == want
    assert record.gated_mlp and not record.mlp_bias and record.act == "silu"
    assert ModelRecord.from_dict(json.loads(json.dumps(record.to_dict()))) == record
    spec = model_spec({"architecture": config["architectures"][0], "model": record})
    assert (spec.num_experts, spec.experts_per_token, spec.router_renormalize) == want[:3]


def test_a_dense_record_has_no_experts() -> None:
    record = model_traits(_LLAMA)[2]
    assert (record.num_experts, record.experts_per_token) == (0, 0)
    assert not record.router_renormalize


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(head_dim="16"), "'head_dim' must be an integer in \\[1, 2\\^32\\), found '16'"),
        (dict(num_experts=-1), "'num_experts' must be an integer in \\[0, 2\\^32\\)"),
        (dict(experts_per_token=2.0), "'experts_per_token' must be an integer"),
        (dict(router_renormalize="yes"), "'router_renormalize' must be true or false"),
        (dict(num_layers=2**32), "'num_layers' must be an integer in"),
        (dict(gated_mlp=1), "'gated_mlp' must be true or false"),
        (dict(layer_windows=[4, -1]), "'layer_windows' must be a list of integers"),
        (dict(clip_qkv="big"), "'clip_qkv' must be a finite number"),
        (dict(norm_eps=float("inf")), "'norm_eps' must be a finite number"),
        # Fuzzing found these (tests/fuzz, py_compiled): integers no float holds.
        (dict(norm_eps=10**400), "'norm_eps' must be a finite number"),
        (dict(rope_inv_freq=[1.0, 10**400]), "'rope_inv_freq' must be a list of finite"),
        (dict(swa=True), "'swa' is none this hyperdex knows"),
    ],
)
def test_a_bad_record_names_the_field(change: dict, message: str) -> None:
    _, _, record = model_traits(_LLAMA)
    with pytest.raises(ConfigError, match=message):
        ModelRecord.from_dict({**record.to_dict(), **change})


def test_a_record_without_a_size_says_which() -> None:
    data = model_traits(_LLAMA)[2].to_dict()
    del data["num_heads"]
    with pytest.raises(ConfigError, match="'num_heads' is missing"):
        ModelRecord.from_dict(data)


def test_an_edited_converted_record_is_a_format_error(tmp_path: Path) -> None:
    from hyperdex.compiled.record import check_converted_config

    _, _, record = model_traits(_LLAMA)
    config = {
        "format": "hyperdex-config",
        "format_version": 1,
        "architecture": "LlamaForCausalLM",
        "family": "llama",
        "dtype": "float16",
        "quantization": None,
        "tokens": {},
        "model": {**record.to_dict(), "num_layers": -2},
    }
    with pytest.raises(FormatError, match="field 'model.num_layers' must be an integer"):
        check_converted_config(config, tmp_path / "hyperdex_config.json")
