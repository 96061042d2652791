"""GenerationConfig: transformers' defaults, validation, updates, loading from a model dir."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import transformers

from hyperdex.errors import ConfigError
from hyperdex.transformers.generation import GenerationConfig

SHARED_DEFAULTS = ("max_length", "do_sample", "temperature", "top_k", "top_p")


def test_defaults_are_transformers_defaults() -> None:
    cfg = GenerationConfig()
    hf_defaults = transformers.GenerationConfig._get_default_generation_params()
    for name in (*SHARED_DEFAULTS, "repetition_penalty"):
        assert getattr(cfg, name) == hf_defaults[name], name
    hf = transformers.GenerationConfig()
    for name in ("max_new_tokens", "eos_token_id", "pad_token_id", "bos_token_id"):
        assert getattr(cfg, name) == getattr(hf, name) is None, name
    assert cfg.min_new_tokens == 0
    assert cfg.seed is None and cfg.stop == []
    # hyperdex's historical defaults are not applied
    assert (cfg.top_p, cfg.top_k, cfg.repetition_penalty) == (1.0, 50, 1.0)


def test_budget_default_is_20_new_tokens_capped_by_context() -> None:
    cfg = GenerationConfig()
    assert cfg.max_length == 20 and cfg.max_length_is_default
    assert cfg.max_new_tokens_for(5) == 20
    assert cfg.max_new_tokens_for(100) == 20
    assert cfg.max_new_tokens_for(100, max_position_embeddings=110) == 10
    with pytest.raises(ValueError, match="fills the model's context of 100"):
        cfg.max_new_tokens_for(100, max_position_embeddings=100)


def test_budget_explicit_max_length_counts_prompt() -> None:
    cfg = GenerationConfig(max_length=20)
    assert not cfg.max_length_is_default
    assert cfg.max_new_tokens_for(5) == 15
    with pytest.raises(ValueError, match="prompt has 20 tokens but max_length is 20"):
        cfg.max_new_tokens_for(20)
    assert GenerationConfig.from_dict({"max_length": 30}).max_new_tokens_for(10) == 20


def test_budget_max_new_tokens_wins() -> None:
    cfg = GenerationConfig(max_length=8, max_new_tokens=12)
    assert cfg.max_new_tokens_for(50) == 12
    assert GenerationConfig(max_new_tokens=0).max_new_tokens_for(3) == 0


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"temperature": 0.0, "do_sample": True}, ValueError, "temperature must be > 0"),
        ({"temperature": -1.0}, ValueError, "temperature must be >= 0"),
        ({"temperature": float("inf")}, ValueError, "temperature must be a finite"),
        ({"temperature": "hot"}, TypeError, "temperature must be a float"),
        ({"top_p": 0.0}, ValueError, r"top_p must be a float in \(0, 1\].*got 0.0"),
        ({"top_p": 1.5}, ValueError, r"top_p must be a float in \(0, 1\]"),
        ({"top_k": -1}, ValueError, "top_k must be an int >= 0"),
        ({"top_k": 2.0}, TypeError, "top_k must be an int >= 0.*got 2.0"),
        ({"top_k": True}, TypeError, "top_k must be an int"),
        ({"repetition_penalty": 0.0}, ValueError, "repetition_penalty must be a finite float > 0"),
        ({"repetition_penalty": "1.2"}, TypeError, "repetition_penalty must be a float"),
        ({"max_new_tokens": -1}, ValueError, "max_new_tokens must be None or an int >= 0"),
        ({"max_new_tokens": 5.0}, TypeError, "max_new_tokens must be None or an int"),
        ({"max_length": 0}, ValueError, "max_length must be an int >= 1"),
        ({"min_new_tokens": -3}, ValueError, "min_new_tokens must be an int >= 0, got -3"),
        ({"do_sample": 1}, TypeError, "do_sample must be True or False, got 1"),
        ({"do_sample": "true"}, TypeError, "do_sample must be True or False"),
        ({"seed": "42"}, TypeError, "seed must be None or an int"),
        ({"seed": -1}, ValueError, "seed must be None or an int >= 0"),
        ({"seed": 1.5}, TypeError, "seed must be None or an int"),
        ({"eos_token_id": -2}, ValueError, "eos_token_id must be a token id"),
        ({"eos_token_id": 2**64}, ValueError, "eos_token_id must be a token id below 2"),
        ({"eos_token_id": [1, 2**31]}, ValueError, "eos_token_id must be a token id below 2"),
        ({"pad_token_id": 2**64}, ValueError, "pad_token_id must be a token id below 2"),
        ({"eos_token_id": [1, "x"]}, TypeError, "eos_token_id must be a token id"),
        ({"eos_token_id": 1.0}, TypeError, "eos_token_id must be None, a token id or a list"),
        ({"pad_token_id": -1}, ValueError, "pad_token_id must be a token id"),
        ({"stop": [""]}, ValueError, "stop strings must not be empty"),
        ({"stop": [1.5]}, TypeError, "stop items must be token ids"),
        ({"stop": [-1]}, ValueError, "stop token id must be a token id"),
        ({"stop": {"a": 1}}, TypeError, "stop must be a list"),
    ],
)
def test_validation_errors_name_the_argument(kwargs, exc: type[Exception], match: str) -> None:
    with pytest.raises(exc, match=match):
        GenerationConfig(**kwargs)
    # update() applies the same rules
    with pytest.raises(exc, match=match):
        GenerationConfig().update(**kwargs)


def test_sampling_knobs_are_free_when_greedy() -> None:
    cfg = GenerationConfig(do_sample=False, temperature=0.0)
    assert cfg.temperature == 0.0


def test_normalization() -> None:
    cfg = GenerationConfig(temperature=1, top_p=1, eos_token_id=(2, 3), stop="###")
    assert isinstance(cfg.temperature, float) and isinstance(cfg.top_p, float)
    assert cfg.eos_token_id == [2, 3] and cfg.eos_token_ids == (2, 3)
    assert cfg.stop == ["###"]
    cfg = GenerationConfig(eos_token_id=7, stop=[5, "END", 6])
    assert cfg.eos_token_ids == (7,)
    assert cfg.stop_token_ids == (5, 6) and cfg.stop_strings == ("END",)


def test_unknown_keyword_raises_with_suggestion() -> None:
    cfg = GenerationConfig()
    with pytest.raises(TypeError, match="unknown generation option 'top_kk'; did you mean 'top_k'"):
        cfg.update(top_kk=5)
    with pytest.raises(TypeError, match="'temprature'.*did you mean 'temperature'"):
        cfg.copy(temprature=0.5)
    with pytest.raises(TypeError, match="unknown generation option 'zzz'; valid options: max_len"):
        cfg.update(zzz=1)


def test_transformers_only_options() -> None:
    cfg = GenerationConfig()
    cfg.update(num_beams=1, num_return_sequences=1, typical_p=1.0, min_p=None)
    with pytest.raises(ValueError, match="num_beams=4 is not supported"):
        cfg.update(num_beams=4)
    cfg.update(stop_strings=["\n\n"], stop=[7])
    assert cfg.stop == [7, "\n\n"]


def test_update_is_atomic_and_in_place() -> None:
    cfg = GenerationConfig(top_k=10)
    with pytest.raises(ValueError, match="top_p"):
        cfg.update(top_k=3, top_p=2.0)
    assert cfg.top_k == 10 and cfg.top_p == 1.0
    cfg.update(top_k=3, do_sample=True, seed=0)
    assert (cfg.top_k, cfg.do_sample, cfg.seed) == (3, True, 0)


def test_update_none_means_not_set() -> None:
    cfg = GenerationConfig(top_k=10, seed=3, max_new_tokens=4)
    cfg.update(top_k=None, temperature=None, seed=None, max_new_tokens=None)
    assert cfg.top_k == 10 and cfg.temperature == 1.0
    # options that can be None take it
    assert cfg.seed is None and cfg.max_new_tokens is None


def test_copy_is_independent_and_keeps_default_marker() -> None:
    base = GenerationConfig(eos_token_id=[1], stop=["x"])
    new = base.copy(top_k=5)
    new.stop.append("y")
    new.eos_token_id.append(2)
    assert base.stop == ["x"] and base.eos_token_id == [1] and base.top_k == 50
    assert new.max_length_is_default
    assert not base.copy(max_length=20).max_length_is_default


def test_direct_assignment_is_checked_by_validate() -> None:
    cfg = GenerationConfig()
    cfg.top_p = 3.0
    with pytest.raises(ValueError, match="top_p"):
        cfg.validate()


def test_to_dict_round_trip() -> None:
    cfg = GenerationConfig(do_sample=True, temperature=0.7, eos_token_id=[1, 2], stop=["a", 3])
    data = cfg.to_dict()
    assert json.loads(json.dumps(data)) == data
    assert GenerationConfig.from_dict(data) == cfg


def test_from_dict_ignores_unknown_keys_and_nulls() -> None:
    cfg = GenerationConfig.from_dict(
        {
            "_from_model_config": True,
            "transformers_version": "4.45.0",
            "num_beams": 4,
            "top_k": None,
            "temperature": 0.6,
            "do_sample": True,
            "stop_strings": "</s>",
        }
    )
    assert cfg.top_k == 50 and cfg.temperature == 0.6 and cfg.do_sample
    assert cfg.stop == ["</s>"]
    with pytest.raises(TypeError, match="from_dict expects a dict"):
        GenerationConfig.from_dict([("top_k", 1)])


LLAMA_GENERATION_CONFIG = {
    "bos_token_id": 128000,
    "do_sample": True,
    "eos_token_id": [128001, 128008, 128009],
    "temperature": 0.6,
    "top_p": 0.9,
    "transformers_version": "4.45.0.dev0",
}


def _write(path: Path, data: object) -> None:
    path.write_text(json.dumps(data), encoding="utf-8")


def test_from_model_dir_reads_generation_config(tmp_path: Path) -> None:
    _write(tmp_path / "generation_config.json", LLAMA_GENERATION_CONFIG)
    _write(tmp_path / "config.json", {"eos_token_id": 1, "pad_token_id": 0})
    cfg = GenerationConfig.from_model_dir(tmp_path)
    assert cfg.do_sample and cfg.temperature == 0.6 and cfg.top_p == 0.9
    assert cfg.eos_token_ids == (128001, 128008, 128009) and cfg.bos_token_id == 128000
    assert cfg.pad_token_id is None  # only generation_config.json counts when it exists
    assert cfg.top_k == 50 and cfg.max_length_is_default
    assert GenerationConfig.from_model_dir(tmp_path / "generation_config.json") == cfg
    # agrees with transformers' own reader on the shared fields
    hf = transformers.GenerationConfig.from_pretrained(tmp_path)
    for name in ("do_sample", "temperature", "top_p", "eos_token_id", "bos_token_id"):
        assert getattr(cfg, name) == getattr(hf, name), name


def test_to_diff_dict_lists_what_was_set_as_transformers_does(tmp_path: Path) -> None:
    """transformers' pipelines read a model's generation config through ``to_diff_dict`` and
    add their own defaults (do_sample=True, ...) for what it lacks: a value set at its default
    must be listed, as transformers lists it."""
    data = {**LLAMA_GENERATION_CONFIG, "do_sample": False, "top_k": 50, "max_length": 20}
    _write(tmp_path / "generation_config.json", data)
    ours = GenerationConfig.from_model_dir(tmp_path).to_diff_dict()
    theirs = transformers.GenerationConfig.from_pretrained(tmp_path).to_diff_dict()
    assert set(ours) == set(data) - {"transformers_version"}
    assert all(ours[k] == theirs[k] for k in ours), (ours, theirs)
    # Without a file: what differs from the defaults, the untouched max_length not among it.
    assert GenerationConfig().to_diff_dict() == {}
    assert GenerationConfig(top_k=5, max_length=30).to_diff_dict() == {"top_k": 5, "max_length": 30}
    # update and copy set explicitly too, and copies keep what was set before.
    cfg = GenerationConfig()
    cfg.update(do_sample=False)
    assert cfg.to_diff_dict() == {"do_sample": False}
    assert cfg.copy(top_p=0.5).to_diff_dict() == {"do_sample": False, "top_p": 0.5}


def test_from_model_dir_falls_back_to_config_json(tmp_path: Path) -> None:
    _write(tmp_path / "config.json", {"eos_token_id": 2, "bos_token_id": 1, "hidden_size": 8})
    cfg = GenerationConfig.from_model_dir(tmp_path)
    assert (cfg.eos_token_id, cfg.bos_token_id, cfg.pad_token_id) == (2, 1, None)
    (tmp_path / "config.json").unlink()
    assert GenerationConfig.from_model_dir(tmp_path) == GenerationConfig()


def test_from_model_dir_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        GenerationConfig.from_model_dir(tmp_path / "missing")
    (tmp_path / "generation_config.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(ConfigError, match="is not valid JSON"):
        GenerationConfig.from_model_dir(tmp_path)
    _write(tmp_path / "generation_config.json", {"do_sample": True, "temperature": 0.0})
    with pytest.raises(ConfigError, match=r"generation_config.json: temperature must be > 0"):
        GenerationConfig.from_model_dir(tmp_path)
    _write(tmp_path / "generation_config.json", [1, 2])
    with pytest.raises(ConfigError, match="must hold a JSON object"):
        GenerationConfig.from_model_dir(tmp_path)
