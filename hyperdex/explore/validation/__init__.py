"""Predictions against published measurements: ``validate()`` and the table in
docs/explorer-validation.md (``hdex-explore --validate`` prints it)."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import yaml

CASES = Path(__file__).with_name("cases.yaml")


@dataclass
class Case:
    name: str
    measured: float
    predicted: float
    metric: str
    role: str
    source: str
    mapping: str

    @property
    def error(self) -> float:
        return (self.predicted - self.measured) / self.measured


def _system_file(case: dict[str, Any], folder: Path) -> Path:
    from ..inputs.loader import read_yaml, resolve

    data = read_yaml(resolve("system", case["system"]))
    wl = data.setdefault("workload", {})
    wl.update(prompt_len=case["prompt_len"], gen_len=case["gen_len"], batch=case.get("batch", 1))
    mp = data.setdefault("mapping", {})
    mp.update(
        tensor_parallel=case["tensor_parallel"],
        pipeline_parallel=1,
        micro_batches=1,
        objective="latency",
        max_chips=max(64, case["tensor_parallel"]),
    )
    mp.pop("max_latency_ms", None)
    path = folder / f"system-{abs(hash(case['name']))}.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def _model_file(case: dict[str, Any], folder: Path) -> Path:
    from ..inputs.loader import read_yaml, resolve

    data = read_yaml(resolve("model", case["model"]))
    for key in ("quantization", "kv_bits", "quant_group"):
        if key in case:
            data["model"][key] = case[key]
    path = folder / f"model-{abs(hash(case['name']))}.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def validate(names: Optional[list[str]] = None) -> list[Case]:
    """Runs every case of cases.yaml (or those named) through ``explore`` and returns the
    predictions next to the measurements."""
    from ..core import explore

    cases = yaml.safe_load(CASES.read_text(encoding="utf-8"))["cases"]
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for case in cases:
            if names and case["name"] not in names:
                continue
            r = explore(
                case["hardware"],
                _model_file(case, folder),
                _system_file(case, folder),
                out_dir=None,
                plots=False,
                progress=False,
            )
            row = r.results.row(0)
            value = (
                row["decode_ms_per_token"]
                if case["metric"] == "decode_ms"
                else row["e2e_latency_ms"]
            )
            out.append(
                Case(
                    case["name"],
                    float(case["measured"]),
                    float(value),
                    case["metric"],
                    case["role"],
                    case["source"],
                    f"t={row['decode_t']:g}, {row['engine']}",
                )
            )
    return out


def mape(cases: list[Case], role: Optional[str] = None) -> float:
    sel = [c for c in cases if role is None or c.role == role]
    return 100.0 * sum(abs(c.error) for c in sel) / len(sel) if sel else float("nan")


def table(cases: list[Case]) -> str:
    """A markdown table of the cases and the MAPE (all, and held-out only)."""
    lines = [
        "| case | metric | measured | predicted | error | role |",
        "|---|---|---:|---:|---:|---|",
    ]
    for c in cases:
        lines.append(
            f"| {c.name} | {c.metric} | {c.measured:g} | {c.predicted:.2f} | "
            f"{100 * c.error:+.1f}% | {c.role} |"
        )
    lines.append("")
    lines.append(
        f"MAPE, all {len(cases)} cases: {mape(cases):.1f}%; held-out only "
        f"({sum(c.role == 'held-out' for c in cases)}): {mape(cases, 'held-out'):.1f}%"
    )
    return "\n".join(lines)
