"""How fast would the board be: ``estimate()`` and ``hdex-estimate``.

``estimate(model, ...)`` reads only the model's ``config.json`` (a Hub id, a folder, the file
itself, or the dict), plans the device's memory, generates the prefill and decode programs as
``compile()`` would, and prices them with the C++ cost model (docs/cost-model.md) on a device
preset: no weights are read, so a 70B model estimates in a moment on a laptop.

    >>> from hyperdex.tools import estimate
    >>> e = estimate("facebook/opt-1.3b", type_device="asic")
    >>> e.decode_ms_per_token, e.bandwidth_utilization
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import defaultdict
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping, Optional, Union

from .. import _core
from ..arch.registry import max_length_limit, model_traits
from ..arch.spec import model_spec
from ..errors import CheckpointError, ConfigError, HyperdexError
from ..presets import device_preset, load_preset
from .passes import PASSES, PassesArg, core_passes, describe, pass_options
from .quantization import resolve_quantization

ModelArg = Union[str, Path, Mapping[str, Any]]
DEFAULT_PROMPT_LEN = 128
DEFAULT_NEW_TOKENS = 128
_LAYER = re.compile(r"^blk\.\d+\.")
_LINE = re.compile(r"^\s*\d+\s+(.*)$")  # an objdump line: index, then the instruction


@dataclass
class InstructionEstimate:
    """One instruction of a run: when it starts, how long it takes and what bounds it."""

    index: int
    opcode: str
    region: str  # the HBM region it streams (weights, KV cache), or ""
    text: str  # its hdex-objdump line
    start_us: float
    time_us: float
    cycles: int
    wait_us: float  # between when program order let it start and when it could
    bound: str  # memory | compute | vector | ring | latency
    hbm_bytes: int
    macs: int

    @property
    def role(self) -> str:
        """The region without its layer ("attn_qkv"), or the opcode: what groups repeat."""
        return _LAYER.sub("", self.region).removesuffix(".weight") if self.region else ""


@dataclass
class Estimate:
    """What ``estimate()`` returns. Times are the cost model's, for one device of the ring
    (tensor-parallel devices run in lockstep)."""

    model: str
    architecture: str
    type_device: str
    num_device: int
    quantization: Optional[str]
    passes: dict[str, bool]
    prompt_len: int
    new_tokens: int
    max_length: int
    prefill_chunk: int
    # Decode: the average over positions prompt_len .. prompt_len + new_tokens - 1.
    decode_ms_per_token: float  # device time plus the preset's per-run overhead
    device_decode_ms_per_token: float  # the decode program alone
    tokens_per_s: float
    bandwidth_utilization: float  # decode program: HBM bytes / device time / peak
    decode_hbm_gb_per_s: float
    decode_hbm_bytes_per_token: int
    weight_bytes_per_token: int
    bandwidth_floor_ms: float  # weight bytes per token at peak bandwidth
    compute_floor_ms: float  # MACs per token with every MAC busy every cycle
    # Prefill of the prompt, chunk by chunk, each chunk with its run overhead.
    prefill_ms: float
    time_to_first_token_ms: float
    engine_busy: dict[str, float]  # share of the decode program's time each engine works
    instructions: list[InstructionEstimate] = field(repr=False)  # decode at the middle position
    prefill_instructions: list[InstructionEstimate] = field(repr=False)  # the last chunk
    _profiler: Any = field(default=None, repr=False, compare=False)

    def write_trace(self, path: Union[str, Path]) -> str:
        """A Chrome / Perfetto trace of the estimated prefill and decode runs (open it in
        chrome://tracing or ui.perfetto.dev): one process per device, one track per engine."""
        self._profiler.write_chrome_trace(str(path))
        return str(path)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):
            if f.name.startswith("_"):
                continue  # the profiler (for write_trace) is not data
            value = getattr(self, f.name)
            if f.name in ("instructions", "prefill_instructions"):
                value = [asdict(i) for i in value]
            out[f.name] = value
        return out

    def by_role(self) -> list[tuple[str, int, float, float]]:
        """(opcode + role, count, µs per token, share of the token) of the decode program,
        slowest first."""
        groups: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
        for ins in self.instructions:
            key = f"{ins.opcode} {ins.role}".strip()
            groups[key][0] += 1
            groups[key][1] += ins.time_us
        total = self.device_decode_ms_per_token * 1000.0
        rows = [(k, int(n), t, t / total if total else 0.0) for k, (n, t) in groups.items()]
        return sorted(rows, key=lambda r: -r[2])

    def summary(self) -> str:
        lines = [
            f"{self.model} ({self.architecture}) on {self.num_device} x {self.type_device}, "
            f"{self.quantization or 'fp16'} weights, {describe(self.passes)}",
            f"  prompt {self.prompt_len} tokens (prefill chunks of {self.prefill_chunk}), "
            f"{self.new_tokens} new tokens, max_length {self.max_length}",
            f"  decode            {self.decode_ms_per_token:10.3f} ms/token "
            f"({self.tokens_per_s:.1f} tokens/s; device {self.device_decode_ms_per_token:.3f} ms)",
            f"  time to 1st token {self.time_to_first_token_ms:10.3f} ms (prefill)",
            f"  bandwidth         {self.decode_hbm_gb_per_s:10.1f} GB/s "
            f"= {100 * self.bandwidth_utilization:.1f}% of peak",
            f"  floors            {self.bandwidth_floor_ms:10.3f} ms bandwidth, "
            f"{self.compute_floor_ms:.3f} ms compute "
            f"({self.weight_bytes_per_token / 1e9:.3f} GB of weights per token)",
            "  engines busy      "
            + ", ".join(f"{k} {100 * v:.0f}%" for k, v in self.engine_busy.items()),
        ]
        return "\n".join(lines)

    def table(self, top: Optional[int] = None) -> str:
        """The per-instruction breakdown of a decode step: every instruction in program order,
        or the ``top`` slowest."""
        rows = self.instructions
        if top is not None:
            rows = sorted(rows, key=lambda r: -r.time_us)[:top]
        head = (
            f"{'#':>5} {'op':<9} {'region':<22} {'start us':>10} {'time us':>9} "
            f"{'cycles':>9} {'bound':<8} {'HBM MB':>8}"
        )
        out = [head, "-" * len(head)]
        for r in rows:
            out.append(
                f"{r.index:>5} {r.opcode:<9} {r.region[:22]:<22} {r.start_us:>10.2f} "
                f"{r.time_us:>9.2f} {r.cycles:>9} {r.bound:<8} {r.hbm_bytes / 1e6:>8.3f}"
            )
        return "\n".join(out)

    def role_table(self) -> str:
        """Busy time per kind of instruction in a decode step. Instructions overlap (a
        PREFETCH streams while a NORM runs), so the shares add up to more than 100%."""
        head = f"{'instruction':<28} {'count':>5} {'busy us':>10} {'of token':>8}"
        out = [head, "-" * len(head)]
        for key, n, t, share in self.by_role():
            out.append(f"{key:<28} {n:>5} {t:>10.2f} {100 * share:>7.1f}%")
        out.append("(instructions overlap: their busy times add up to more than the token)")
        return "\n".join(out)


def read_model_config(model: ModelArg, token: Optional[str] = None) -> tuple[str, dict[str, Any]]:
    """(a name for it, the HF config dict) from a dict, a config.json path, a HF folder, a
    compiled folder, or a Hub id (only config.json is fetched)."""
    if isinstance(model, Mapping):
        return str(model.get("_name_or_path") or model.get("model_type") or "config"), dict(model)
    path = Path(model).expanduser()
    if path.is_file():
        candidates = [path]
    elif path.is_dir():
        candidates = [path / "config.json", path / "ckpt" / "config.json"]
    else:
        candidates = []
    for c in candidates:
        if c.is_file():
            try:
                return str(model), json.loads(c.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
                raise CheckpointError(f"{c} is not a readable config.json: {e}") from e
    if path.exists():
        raise CheckpointError(f"{path} holds no config.json")
    from .fetch import download_config

    return str(model), download_config(str(model), token=token)


def _check_positive(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    return value


def _instructions(
    run: Any, program: Any, names: dict[int, str], preset: Any
) -> list[InstructionEstimate]:
    lines = program.disassemble(names).splitlines()[1:]  # the first line is the header
    cycle_ns = 1000.0 / preset.clock_mhz
    out = []
    for c in run.instructions:
        m = _LINE.match(lines[c.index]) if c.index < len(lines) else None
        text = m.group(1) if m else c.opcode
        region = ""
        m = re.search(r"hbm\[([^ @\]]+) @", text)
        if m:
            region = m.group(1)
        out.append(
            InstructionEstimate(
                index=c.index,
                opcode=c.opcode,
                region=region,
                text=text,
                start_us=c.start_ns / 1000.0,
                time_us=c.duration_ns / 1000.0,
                cycles=int(round(c.duration_ns / cycle_ns)),
                wait_us=c.wait_ns / 1000.0,
                bound=c.bound,
                hbm_bytes=c.hbm_bytes,
                macs=c.macs,
            )
        )
    return out


def estimate(
    model: ModelArg,
    num_device: int = 1,
    type_device: str = "u55c",
    quantization: Any = None,
    prompt_len: int = DEFAULT_PROMPT_LEN,
    max_length: Optional[int] = None,
    new_tokens: int = DEFAULT_NEW_TOKENS,
    passes: PassesArg = None,
    token: Optional[str] = None,
    keep_timeline: bool = True,
) -> Estimate:
    """Estimates how a device built to ``type_device`` (a preset name or a preset JSON file)
    would run ``model`` at batch 1: the prompt's prefill and ``new_tokens`` decode steps.

    ``model`` is a Hugging Face id, a model folder, a ``config.json`` path or its dict; only
    the config is read. ``num_device`` devices split the model tensor-parallel (their
    all-reduces priced on the ring link). ``max_length`` (the KV cache, as in ``compile``)
    defaults to the model's positions, at most 2048. ``passes`` as in ``compile``.
    """
    num_device = _check_positive("num_device", num_device)
    if num_device & (num_device - 1):
        raise ConfigError(
            f"num_device must be a power of two (1, 2, 4, 8, ...): the devices form a ring; "
            f"got {num_device}"
        )
    qconfig = resolve_quantization(quantization)  # ConfigError for an unknown scheme
    prompt_len = _check_positive("prompt_len", prompt_len)
    new_tokens = _check_positive("new_tokens", new_tokens)
    settings = pass_options(passes)
    name, config = read_model_config(model, token)
    hf_name, _, traits = model_traits(config)
    limit, why = max_length_limit(traits)
    if max_length is None:
        max_length = max(min(limit, 2048), min(limit, prompt_len + new_tokens))
    max_length = _check_positive("max_length", max_length)
    if max_length > limit:
        raise ConfigError(f"max_length={max_length} exceeds the model's {limit} positions ({why})")
    if prompt_len + new_tokens > max_length:
        raise ConfigError(
            f"prompt_len + new_tokens = {prompt_len + new_tokens} exceed max_length={max_length}"
        )
    preset_data = load_preset(type_device)
    preset = device_preset(preset_data)
    quant = qconfig.to_dict() if qconfig is not None else None
    spec = _core.shard_spec(
        model_spec({"architecture": hf_name, "model": traits, "quantization": quant}), num_device
    )
    core = core_passes(settings)
    max_tokens = _core.choose_max_tokens(spec, preset, max_length)
    plan = _core.plan_memory(spec, preset, max_length, max_tokens, core)  # CapacityError
    prefill, decode = _core.generate_programs(spec, plan, core, num_device)
    names = {r.base: r.name for r in plan.regions}

    prof = _core.cost.Profiler(prefill, decode, preset, num_device)
    prof.set_region_names(names)
    prof.keep_timeline = keep_timeline
    last_chunk = prof.prefill(0, prompt_len)
    totals = prof.totals
    prefill_ns = totals.prefill_ns + totals.overhead_ns
    prof.decode_range(prompt_len, new_tokens)
    totals = prof.totals
    device_ns = totals.decode_ns / new_tokens
    overhead_ns = preset.run_overhead_us * 1000.0
    decode_bytes = totals.decode_hbm_bytes / new_tokens
    peak = preset.hbm_bandwidth_gbps  # bytes per ns

    model_ = _core.cost.CostModel(decode, preset)
    middle = model_.run(prompt_len + new_tokens // 2, 1)
    floors = _core.cost.floors(decode, preset)
    busy = dict(zip(_core.cost.ENGINE_NAMES, middle.busy_ns))
    return Estimate(
        model=name,
        architecture=hf_name,
        type_device=preset_data["name"],
        num_device=num_device,
        quantization=qconfig.scheme if qconfig is not None else None,
        passes=settings,
        prompt_len=prompt_len,
        new_tokens=new_tokens,
        max_length=max_length,
        prefill_chunk=prof.prefill_chunk,
        decode_ms_per_token=(device_ns + overhead_ns) / 1e6,
        device_decode_ms_per_token=device_ns / 1e6,
        tokens_per_s=1e9 / (device_ns + overhead_ns),
        bandwidth_utilization=decode_bytes / device_ns / peak,
        decode_hbm_gb_per_s=decode_bytes / device_ns,
        decode_hbm_bytes_per_token=int(decode_bytes),
        weight_bytes_per_token=floors.weight_bytes,
        bandwidth_floor_ms=floors.bandwidth_ns / 1e6,
        compute_floor_ms=floors.compute_ns / 1e6,
        prefill_ms=prefill_ns / 1e6,
        time_to_first_token_ms=prefill_ns / 1e6,
        engine_busy={k: v / middle.time_ns for k, v in busy.items()},
        instructions=_instructions(middle, decode, names, preset),
        prefill_instructions=_instructions(last_chunk, prefill, names, preset),
        _profiler=prof,
    )


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="hdex-estimate",
        description="Estimate how fast an LPU device would run a Hugging Face model "
        "(from its config.json alone)",
        epilog="Exit codes: 0 ok, 1 rejected, 2 usage",
    )
    parser.add_argument("model", help="Hub id, model folder, or config.json")
    parser.add_argument("--type-device", default="u55c", help="preset name or preset JSON file")
    parser.add_argument("--num-device", type=int, default=1, help="devices in the ring")
    parser.add_argument("--prompt-len", type=int, default=DEFAULT_PROMPT_LEN)
    parser.add_argument("--new-tokens", type=int, default=DEFAULT_NEW_TOKENS)
    parser.add_argument("--max-length", type=int, help="KV cache length (as for compile)")
    parser.add_argument(
        "--quantization", help="weight format: none, w4a16, w8a16, rtn-w4a16 (as for compile)"
    )
    for name, what in PASSES.items():
        parser.add_argument(
            f"--no-{name.replace('_', '-')}", action="store_true", help=f"turn off: {what}"
        )
    parser.add_argument("--top", type=int, default=15, help="slowest instructions to list")
    parser.add_argument("--all", action="store_true", help="list every decode instruction")
    parser.add_argument("--trace", help="write a Chrome/Perfetto trace of the runs here")
    parser.add_argument("--json", action="store_true", help="print the estimate as JSON")
    parser.add_argument("--token", help="Hugging Face token for private models")
    args = parser.parse_args(argv)
    passes = {n: not getattr(args, "no_" + n) for n in PASSES}
    try:
        e = estimate(
            args.model,
            num_device=args.num_device,
            type_device=args.type_device,
            quantization=args.quantization,
            prompt_len=args.prompt_len,
            new_tokens=args.new_tokens,
            max_length=args.max_length,
            passes=passes,
            token=args.token,
            keep_timeline=bool(args.trace),
        )
        if args.trace:
            e.write_trace(args.trace)
    except HyperdexError as err:
        print(f"hdex-estimate: {err}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(e.to_dict(), indent=2))
        return 0
    print(e.summary())
    print("\nDecode step by instruction kind:")
    print(e.role_table())
    if args.all:
        print("\nEvery decode instruction:")
        print(e.table())
    else:
        print(f"\nSlowest {args.top} decode instructions:")
        print(e.table(top=args.top))
    if args.trace:
        print(f"\nTrace written to {args.trace} (open in chrome://tracing or ui.perfetto.dev)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
