"""What each input file may say: every field, its type, default and limits.

A field's value may also be a list: the explorer sweeps every value (the Cartesian product
with every other list). Validation flattens a file to ``{"chip.peak_tflops": [values], ...}``
so the sweep and the models address fields by their dotted name. An unknown field is an error
that names the nearest valid one: a typo must never turn into a silently ignored default.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any, Optional, Sequence, Union

from ...errors import ConfigError

AUTO = "auto"


@dataclass(frozen=True)
class Field:
    """One leaf of an input file."""

    kind: type  # int, float, str or bool
    default: Any = None
    required: bool = False
    choices: Optional[Sequence[Any]] = None
    minimum: Optional[float] = None  # inclusive
    positive: bool = False  # > 0
    maximum: Optional[float] = None  # inclusive
    optional: bool = False  # None (or absent) is a meaningful value: "derive it"
    auto: bool = False  # the string "auto" is allowed: "let the mapping search choose"
    doc: str = ""

    def check(self, value: Any, where: str) -> Any:
        if value is None and (self.optional or not self.required):
            return None
        if self.auto and value == AUTO:
            return AUTO
        kind = self.kind
        if kind is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            value = float(value) if ok else value
        elif kind is int:
            ok = isinstance(value, int) and not isinstance(value, bool)
        else:
            ok = isinstance(value, kind)
        if not ok:
            extra = " or 'auto'" if self.auto else ""
            raise ConfigError(f"{where} must be a {kind.__name__}{extra}, got {value!r}")
        if self.choices is not None and value not in self.choices:
            close = difflib.get_close_matches(str(value), [str(c) for c in self.choices], n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(
                f"{where} = {value!r} is not one of {', '.join(map(repr, self.choices))}{hint}"
            )
        if kind in (int, float):
            if self.positive and value <= 0:
                raise ConfigError(f"{where} must be positive, got {value!r}")
            if self.minimum is not None and value < self.minimum:
                raise ConfigError(f"{where} must be at least {self.minimum}, got {value!r}")
            if self.maximum is not None and value > self.maximum:
                raise ConfigError(f"{where} must be at most {self.maximum}, got {value!r}")
        return value


Schema = dict[str, Union[Field, "Schema"]]
# Sections whose content is free text (sources) or checked elsewhere (device presets).
FREE = "free"


def _nearest(name: str, valid: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, list(valid), n=1, cutoff=0.5)
    if close:
        return f"did you mean {close[0]!r}?"
    return f"valid fields here: {', '.join(sorted(valid))}"


def flatten(data: Any, schema: Schema, where: str, prefix: str = "") -> dict[str, list[Any]]:
    """Checks ``data`` against ``schema`` and returns every leaf as a list of values (one value
    unless the file gave a list), defaults filled in, keyed by dotted name."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: {prefix.rstrip('.') or 'the file'} must be a mapping")
    out: dict[str, list[Any]] = {}
    for key in data:
        if key not in schema:
            full = prefix + str(key)
            valid = [prefix + k for k in schema]
            raise ConfigError(f"{where}: unknown field {full!r} ({_nearest(full, valid)})")
    for key, spec in schema.items():
        name = prefix + key
        if spec == FREE:
            continue
        if isinstance(spec, dict):
            sub = data.get(key, {})
            if sub is None:
                sub = {}
            out.update(flatten(sub, spec, where, name + "."))
            continue
        assert isinstance(spec, Field)
        if key not in data:
            if spec.required:
                raise ConfigError(f"{where}: the field {name!r} is required")
            out[name] = [spec.default]
            continue
        value = data[key]
        values = value if isinstance(value, list) else [value]
        if not values:
            raise ConfigError(
                f"{where}: {name!r} is an empty list, so the sweep has no design point; "
                "give at least one value"
            )
        out[name] = [spec.check(v, f"{where}: {name}") for v in values]
    return out


def _hw_chip() -> Schema:
    return {
        "tech": Field(str, required=True, doc="technology preset (name or YAML path)"),
        "freq_ghz": Field(float, optional=True, positive=True, doc="clock (informational)"),
        "peak_tflops": Field(float, optional=True, positive=True, doc="dense fp16 matrix rate"),
        "int8_tflops": Field(float, optional=True, positive=True, doc="8-bit matrix rate"),
        "vector_tflops": Field(float, optional=True, positive=True, doc="non-GEMM rate"),
        "sram_mb": Field(float, default=0.0, minimum=0.0),
        "sram_gbps": Field(float, default=0.0, minimum=0.0, doc="on-chip weight bandwidth"),
        "die_area_mm2": Field(float, optional=True, positive=True, doc="else derived"),
        "tdp_w": Field(float, optional=True, positive=True, doc="else derived"),
        "c2c_links": Field(int, default=0, minimum=0),
        "c2c_gbps": Field(float, default=0.0, minimum=0.0, doc="per direction, to a neighbour"),
        "c2c_latency_us": Field(float, default=1.0, minimum=0.0),
    }


HARDWARE: Schema = {
    "name": Field(str, required=True),
    "kind": Field(str, default="analytical", choices=("analytical", "lpu")),
    "description": Field(str, default=""),
    "system": Field(str, optional=True, doc="default system preset for this hardware"),
    "sources": FREE,
    "chip": _hw_chip(),
    "package": {
        "chips": Field(int, default=1, positive=True),
        "mem_type": Field(str, default="hbm2e"),
        "mem_stacks": Field(int, default=0, minimum=0),
        "mem_gb_per_stack": Field(float, default=0.0, minimum=0.0),
        "mem_gbps_per_stack": Field(float, default=0.0, minimum=0.0),
        "price_usd": Field(float, optional=True, positive=True, doc="else derived from dies"),
    },
    "server": {
        "packages": Field(int, default=8, positive=True),
        "s2s_gbps": Field(float, default=50.0, positive=True),
        "s2s_latency_us": Field(float, default=5.0, minimum=0.0),
    },
    # LPU designs: the cost model's device preset (hyperdex/presets), field by field.
    "device": FREE,
}

TECHNOLOGY: Schema = {
    "name": Field(str, required=True),
    "description": Field(str, default=""),
    "sources": FREE,
    "chip": {
        "mm2_per_tflops": Field(float, positive=True),
        "mm2_per_mb_sram": Field(float, positive=True),
        "mm2_per_c2c_link": Field(float, minimum=0.0),
        "other_area_fraction": Field(float, minimum=0.0, maximum=1.0),
        "w_per_tflops": Field(float, positive=True),
        "w_per_mb_sram": Field(float, minimum=0.0),
        "w_per_c2c_link": Field(float, minimum=0.0),
        "max_die_area_mm2": Field(float, positive=True),
        "max_power_density_w_per_mm2": Field(float, positive=True),
        "wafer_cost_usd": Field(float, positive=True),
        "wafer_diameter_mm": Field(float, positive=True),
        "defect_density_per_cm2": Field(float, minimum=0.0),
        "yield_alpha": Field(float, positive=True),
        "scribe_mm": Field(float, minimum=0.0),
        "test_cost_fraction": Field(float, minimum=0.0),
    },
    "package": {
        "substrate_usd_per_mm2": Field(float, minimum=0.0),
        "substrate_area_factor": Field(float, positive=True),
        "interposer_usd_per_mm2": Field(float, minimum=0.0),
        "interposer_area_factor": Field(float, positive=True),
        "assembly_yield": Field(float, positive=True, maximum=1.0),
        "mem_stack_area_mm2": Field(float, minimum=0.0),
    },
    "memory": {
        kind: {
            "usd_per_gb": Field(float, minimum=0.0),
            "pj_per_bit": Field(float, minimum=0.0),
            "phy_mm2_per_stack": Field(float, minimum=0.0),
            "on_interposer": Field(bool, default=True),
        }
        for kind in ("hbm2", "hbm2e", "hbm3", "gddr6", "ddr4")
    },
    "server": {
        "pcb_usd": Field(float, minimum=0.0),
        "host_usd": Field(float, minimum=0.0),
        "host_w": Field(float, minimum=0.0),
        "fan_usd": Field(float, minimum=0.0),
        "fan_w": Field(float, minimum=0.0),
        "fans": Field(int, minimum=0),
        "chassis_usd": Field(float, minimum=0.0),
        "nic_usd": Field(float, minimum=0.0),
        "psu_usd_per_w": Field(float, minimum=0.0),
        "psu_efficiency": Field(float, positive=True, maximum=1.0),
        "dcdc_efficiency": Field(float, positive=True, maximum=1.0),
        "max_power_w": Field(float, positive=True),
    },
    "tco": {
        "electricity_usd_per_kwh": Field(float, minimum=0.0),
        "pue": Field(float, minimum=1.0),
        "dc_capex_usd_per_w": Field(float, minimum=0.0),
        "dc_amortization_years": Field(float, positive=True),
        "dc_opex_usd_per_w_month": Field(float, minimum=0.0),
        "server_life_years": Field(float, positive=True),
        "interest_rate": Field(float, minimum=0.0),
        "server_opex_fraction": Field(float, minimum=0.0),
        "avg_power_fraction": Field(float, positive=True, maximum=1.0),
    },
}

SYSTEM: Schema = {
    "name": Field(str, default="system"),
    "description": Field(str, default=""),
    "sources": FREE,
    "workload": {
        "prompt_len": Field(int, default=128, positive=True),
        "gen_len": Field(int, default=128, positive=True),
        "batch": Field(int, default=1, positive=True),
    },
    "mapping": {
        "tensor_parallel": Field(int, default=AUTO, positive=True, auto=True),
        "pipeline_parallel": Field(int, default=AUTO, positive=True, auto=True),
        "micro_batches": Field(int, default=AUTO, positive=True, auto=True),
        "max_chips": Field(int, default=1024, positive=True),
        "objective": Field(str, default="tco", choices=("tco", "latency", "throughput")),
        "max_latency_ms": Field(float, optional=True, positive=True),
    },
    "comm": {
        "allreduce": Field(str, default="ring", choices=("ring", "2d_ring")),
        "overlap": Field(bool, default=False),
        "overlap_chunks": Field(int, default=4, positive=True),
        "collective_latency_us": Field(float, default=0.0, minimum=0.0),
    },
    "efficiency": {
        "compute": Field(float, default=0.7, positive=True, maximum=1.0),
        "memory": Field(float, default=0.85, positive=True, maximum=1.0),
        "link": Field(float, default=0.8, positive=True, maximum=1.0),
        "kernel_overhead_us": Field(float, default=0.0, minimum=0.0),
        "step_overhead_us": Field(float, default=0.0, minimum=0.0),
        "fused_elementwise": Field(bool, default=True),
        "memory_headroom": Field(float, default=0.9, positive=True, maximum=1.0),
    },
}

QUANTIZATIONS = ("w16a16", "w8a16", "w4a16", "w8a8")

MODEL: Schema = {
    "model": {
        "name": Field(str, required=True),
        "source": Field(str, default=""),
        "num_layers": Field(int, required=True, positive=True),
        "d_model": Field(int, required=True, positive=True),
        "num_heads": Field(int, required=True, positive=True),
        "d_head": Field(int, optional=True, positive=True, doc="default d_model / num_heads"),
        "num_kv_heads": Field(int, optional=True, positive=True, doc="default num_heads"),
        "d_ff": Field(
            int, optional=True, positive=True, doc="default 4 * d_model; one expert's width"
        ),
        # A mixture of experts in every layer's MLP (0 and 0: a dense MLP); checked together
        # by the loader (both or neither, experts_per_token <= num_experts).
        "num_experts": Field(int, default=0, minimum=0, doc="experts per layer, 0: dense"),
        "experts_per_token": Field(int, default=0, minimum=0, doc="experts each token uses"),
        "gated_mlp": Field(bool, default=False),
        "activation": Field(str, default="gelu", choices=("gelu", "gelu_tanh", "relu", "silu")),
        "vocab_size": Field(int, default=50272, positive=True),
        "norm": Field(str, default="layernorm", choices=("layernorm", "rmsnorm")),
        "positions": Field(str, default="learned", choices=("learned", "rope", "alibi")),
        "parallel_block": Field(bool, default=False, doc="attention and MLP side by side"),
        "max_positions": Field(int, default=2048, positive=True),
        "quantization": Field(str, default="w16a16", choices=QUANTIZATIONS),
        "quant_group": Field(int, default=128, minimum=0, doc="0: one scale per row"),
        "kv_bits": Field(int, default=16, choices=(16, 8)),
    },
    "sources": FREE,
}
