"""Reads the four kinds of input (hardware, technology, system, model) from YAML files, from
the presets shipped in ``hyperdex/explore/presets/``, or (models) from a Hugging Face
``config.json`` (read by the architecture registry, as the compiler reads it); checks them
against the schema and returns their sweeps."""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import yaml

from ...arch.registry import model_traits
from ...errors import ConfigError, UnsupportedArchitectureError
from . import schema
from .sweep import Sweep

PRESETS = Path(__file__).resolve().parent.parent / "presets"
KINDS = ("hardware", "technology", "system", "model")
PathLike = Union[str, Path]


def available(kind: str) -> list[str]:
    return sorted(p.stem for p in (PRESETS / kind).glob("*.yaml"))


def resolve(kind: str, name_or_path: PathLike) -> Path:
    """A preset name (``tpuv4``) or a file path, as the file to read."""
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    if path.is_dir() and (path / "config.json").is_file() and kind == "model":
        return path / "config.json"
    if path.suffix in (".yaml", ".yml", ".json") or len(path.parts) > 1:
        raise ConfigError(f"{kind} file {str(name_or_path)!r} does not exist")
    preset = PRESETS / kind / f"{name_or_path}.yaml"
    if preset.is_file():
        return preset
    names = available(kind)
    close = difflib.get_close_matches(str(name_or_path), names, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise ConfigError(
        f"unknown {kind} preset {str(name_or_path)!r}: {hint}available presets: "
        f"{', '.join(names)}; or give the path of a YAML file"
    )


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"cannot read {path}: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a YAML mapping, not {type(data).__name__}")
    return data


@dataclass
class Input:
    """One input file, checked: its sweep, its name and where each number comes from."""

    kind: str
    name: str
    path: Path
    sweep: Sweep
    raw: dict[str, Any]
    sources: dict[str, str] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return self.sweep.size


def _input(kind: str, path: Path, data: dict[str, Any], spec: schema.Schema) -> Input:
    fields = schema.flatten(data, spec, str(path))
    name = data.get("name") or (data.get("model") or {}).get("name") or path.stem
    sources = data.get("sources") or {}
    if not isinstance(sources, dict):
        raise ConfigError(f"{path}: sources must be a mapping of field -> where it comes from")
    return Input(
        kind, str(name), path, Sweep(fields), data, {str(k): str(v) for k, v in sources.items()}
    )


def load_hardware(name_or_path: PathLike) -> Input:
    path = resolve("hardware", name_or_path)
    data = read_yaml(path)
    inp = _input("hardware", path, data, schema.HARDWARE)
    kind = inp.sweep.fields["kind"][0]
    if kind == "lpu":
        inp.sweep = Sweep({**inp.sweep.fields, **_device_fields(path, data.get("device"))})
    elif data.get("device") is not None:
        raise ConfigError(f"{path}: 'device' is only for kind: lpu (the cost model's preset)")
    elif inp.sweep.fields["chip.peak_tflops"] == [None]:
        raise ConfigError(f"{path}: the field 'chip.peak_tflops' is required for analytical chips")
    return inp


def _device_fields(path: Path, device: Any) -> dict[str, list[Any]]:
    """An LPU design: a base preset of the cost model and the fields it overrides (any of
    them a list)."""
    from ...presets import NUMBER_FIELDS, load_preset

    if not isinstance(device, dict) or "preset" not in device:
        raise ConfigError(
            f"{path}: an LPU design needs 'device: {{preset: u55c | vcu128 | asic | FILE, ...}}'"
        )
    base = load_preset(device["preset"])
    out: dict[str, list[Any]] = {"device.preset": [str(device["preset"])]}
    for key, value in device.items():
        if key == "preset":
            continue
        if key not in NUMBER_FIELDS:
            close = difflib.get_close_matches(key, NUMBER_FIELDS, n=1, cutoff=0.5)
            hint = (
                f"did you mean 'device.{close[0]}'?"
                if close
                else (f"valid fields: {', '.join(NUMBER_FIELDS)}")
            )
            raise ConfigError(f"{path}: unknown field 'device.{key}' ({hint})")
        values = value if isinstance(value, list) else [value]
        if not values:
            raise ConfigError(f"{path}: 'device.{key}' is an empty list: no design point")
        for v in values:
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
                raise ConfigError(f"{path}: device.{key} must be a non-negative number, got {v!r}")
        out[f"device.{key}"] = values
    for key in NUMBER_FIELDS:
        out.setdefault(f"device.{key}", [base[key]])
    return out


def load_technology(name_or_path: PathLike) -> Input:
    path = resolve("technology", name_or_path)
    inp = _input("technology", path, read_yaml(path), schema.TECHNOLOGY)
    missing = [k for k, v in inp.sweep.fields.items() if v == [None] and k != "description"]
    if missing:
        raise ConfigError(f"{path}: technology constants missing: {', '.join(missing)}")
    return inp


def load_system(name_or_path: PathLike) -> Input:
    path = resolve("system", name_or_path)
    return _input("system", path, read_yaml(path), schema.SYSTEM)


def model_from_hf_config(config: dict[str, Any], name: str) -> dict[str, Any]:
    """The explorer's model fields from a HF config.json, read by the architecture registry
    (``hyperdex.arch.registry.model_traits``), the one description the compiler and the cost
    model use too: an architecture it does not support is an UnsupportedArchitectureError
    that names the supported ones, and a config it cannot read is a ConfigError."""
    _, _, record = model_traits(config)
    m: dict[str, Any] = {
        "name": name,
        "source": "Hugging Face config.json",
        "num_layers": record.num_layers,
        "d_model": record.hidden_size,
        "num_heads": record.num_heads,
        "num_kv_heads": record.num_kv_heads,
        "d_head": record.head_dim,
        "d_ff": record.intermediate_size,
        "vocab_size": record.vocab_size,
        "max_positions": record.max_position_embeddings,
        "activation": record.act,
        "gated_mlp": record.gated_mlp,
        "norm": record.norm,
        "positions": record.positions,
        "parallel_block": record.parallel_block,
        # A mixture: d_ff above is each expert's width (the record's intermediate_size).
        "num_experts": record.num_experts,
        "experts_per_token": record.experts_per_token,
    }
    if record.has_projection:
        m["source"] += " (projection of embeddings ignored: a small matrix)"
    return m


def load_model(name_or_path: PathLike) -> Input:
    """A model preset, a model YAML file, a HF config.json or a folder that holds one."""
    path = resolve("model", name_or_path)
    if path.suffix == ".json":
        try:
            config = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise ConfigError(f"cannot read {path}: {e}") from e
        name = str(config.get("_name_or_path") or path.parent.name or "model")
        try:
            data = {"model": model_from_hf_config(config, Path(name).name)}
        except (ConfigError, UnsupportedArchitectureError) as e:
            raise type(e)(f"{path}: {e}") from e
        inp = _input("model", path, data, schema.MODEL)
        inp.raw["hf_config"] = config
    else:
        inp = _input("model", path, read_yaml(path), schema.MODEL)
    check_models(inp)
    return inp


def check_models(inp: Input) -> None:
    """Every model the sweep makes must be consistent (heads dividing d_model, ...)."""
    cols = inp.sweep.all_columns()
    for i in range(inp.size):
        m = {k.split(".", 1)[1]: v[i] for k, v in cols.items()}
        check_model(m, str(inp.path))


def check_model(m: dict[str, Any], where: str) -> None:
    d, heads = int(m["d_model"]), int(m["num_heads"])
    if m.get("d_head") is None and d % heads:
        raise ConfigError(
            f"{where}: model {m['name']!r} is inconsistent: num_heads={heads} does not divide "
            f"d_model={d} ({d}/{heads} = {d / heads:.2f}); fix one of them or give d_head"
        )
    kv = m.get("num_kv_heads")
    if kv is not None and (int(kv) > heads or heads % int(kv)):
        raise ConfigError(
            f"{where}: model {m['name']!r} is inconsistent: num_kv_heads={int(kv)} must divide "
            f"num_heads={heads} (each KV head serves a whole group of query heads)"
        )
    experts, per_token = int(m.get("num_experts") or 0), int(m.get("experts_per_token") or 0)
    if (experts > 0) != (per_token > 0):
        raise ConfigError(
            f"{where}: model {m['name']!r} is inconsistent: num_experts={experts} and "
            f"experts_per_token={per_token}; a mixture of experts needs both (each token uses "
            "experts_per_token of num_experts), a dense model neither (0 or absent)"
        )
    if per_token > experts:
        raise ConfigError(
            f"{where}: model {m['name']!r} is inconsistent: experts_per_token={per_token} "
            f"must be at most num_experts={experts}"
        )


def default_system(hw: Input) -> str:
    """The hardware's own system preset if it names one, else ``default``."""
    name: Optional[str] = hw.sweep.fields.get("system", [None])[0]
    return name or "default"
