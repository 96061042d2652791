"""
How long a device built to a preset takes to run a program
"""
from __future__ import annotations
import collections.abc
import hyperdex._core
import typing
__all__: list[str] = ['CostModel', 'ENGINE_NAMES', 'Floors', 'InstructionCost', 'Profiler', 'RunCost', 'Totals', 'floors']
class InstructionCost:
    @property
    def bound(self) -> str:
        ...
    @property
    def duration_ns(self) -> float:
        ...
    @property
    def end_ns(self) -> float:
        ...
    @property
    def engines(self) -> dict:
        """
        {engine name: (begin_ns, end_ns)} for the engines it occupies
        """
    @property
    def hbm_bytes(self) -> int:
        ...
    @property
    def index(self) -> int:
        ...
    @property
    def issue_ns(self) -> float:
        ...
    @property
    def macs(self) -> int:
        ...
    @property
    def opcode(self) -> str:
        ...
    @property
    def ring_bytes(self) -> int:
        ...
    @property
    def start_ns(self) -> float:
        ...
    @property
    def vector_ops(self) -> int:
        ...
    @property
    def wait_ns(self) -> float:
        ...
    @property
    def weight_bytes(self) -> int:
        ...
class RunCost:
    def bandwidth_gbps(self) -> float:
        ...
    @property
    def busy_ns(self) -> list[float]:
        ...
    @property
    def hbm_bytes(self) -> int:
        ...
    @property
    def instructions(self) -> list[InstructionCost]:
        ...
    @property
    def macs(self) -> int:
        ...
    @property
    def ring_bytes(self) -> int:
        ...
    @property
    def time_ns(self) -> float:
        ...
    @property
    def weight_bytes(self) -> int:
        ...
class Floors:
    @property
    def bandwidth_ns(self) -> float:
        ...
    @property
    def compute_ns(self) -> float:
        ...
    @property
    def macs(self) -> int:
        ...
    @property
    def weight_bytes(self) -> int:
        ...
class CostModel:
    def __init__(self, program: hyperdex._core.Program, preset: hyperdex._core.DevicePreset) -> None:
        ...
    def run(self, start_pos: typing.SupportsInt | typing.SupportsIndex = 0, n_tokens: typing.SupportsInt | typing.SupportsIndex = 1, logits_all: bool = False, want_logits: bool = True) -> RunCost:
        ...
    @property
    def dependencies(self) -> list[list[int]]:
        ...
class Totals:
    @property
    def busy_ns(self) -> list[float]:
        ...
    @property
    def decode_hbm_bytes(self) -> int:
        ...
    @property
    def decode_ns(self) -> float:
        ...
    @property
    def decode_runs(self) -> int:
        ...
    @property
    def hbm_bytes(self) -> int:
        ...
    @property
    def macs(self) -> int:
        ...
    @property
    def overhead_ns(self) -> float:
        ...
    @property
    def prefill_ns(self) -> float:
        ...
    @property
    def prefill_runs(self) -> int:
        ...
    @property
    def prefill_tokens(self) -> int:
        ...
    @property
    def ring_bytes(self) -> int:
        ...
    @property
    def weight_bytes(self) -> int:
        ...
class Profiler:
    keep_timeline: bool
    def __init__(self, prefill: hyperdex._core.Program, decode: hyperdex._core.Program, preset: hyperdex._core.DevicePreset, devices: typing.SupportsInt | typing.SupportsIndex = 1) -> None:
        ...
    def chrome_trace(self) -> str:
        ...
    def decode(self, position: typing.SupportsInt | typing.SupportsIndex) -> RunCost:
        ...
    def decode_range(self, first: typing.SupportsInt | typing.SupportsIndex, count: typing.SupportsInt | typing.SupportsIndex) -> None:
        """
        One decode run per position in [first, first + count).
        """
    def prefill(self, start_pos: typing.SupportsInt | typing.SupportsIndex, n: typing.SupportsInt | typing.SupportsIndex, logits_all: bool = False) -> RunCost:
        """
        Prices a prompt of n tokens in prefill chunks, as the runtime runs it.
        """
    def reset(self) -> None:
        ...
    def set_region_names(self, names: collections.abc.Mapping[typing.SupportsInt | typing.SupportsIndex, str]) -> None:
        ...
    def write_chrome_trace(self, path: str) -> None:
        ...
    @property
    def devices(self) -> int:
        ...
    @property
    def prefill_chunk(self) -> int:
        ...
    @property
    def totals(self) -> Totals:
        ...
def floors(program: hyperdex._core.Program, preset: hyperdex._core.DevicePreset, start_pos: typing.SupportsInt | typing.SupportsIndex = 0, n_tokens: typing.SupportsInt | typing.SupportsIndex = 1, logits_all: bool = False, want_logits: bool = True) -> Floors:
    ...
ENGINE_NAMES: tuple = ('HBM stream', 'matrix engine', 'vector engine', 'ring link')
