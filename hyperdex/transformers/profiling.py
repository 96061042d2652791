"""What the board would have taken: every run the runtime makes (prefill chunks, one decode
per token) is priced with the cost model (docs/cost-model.md) on the compiled folder's device
preset, on every backend, and summed into ``model.last_stats`` after each ``generate`` or
forward call. ``profile=True`` (or ``HYPERDEX_PROFILE``) also writes a Chrome / Perfetto trace
of those runs: one process per device, one track per engine.
"""

from __future__ import annotations

import functools
import itertools
import logging
import os
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Union

log = logging.getLogger("hyperdex")
ProfileArg = Union[None, bool, str, "os.PathLike[str]"]
_counter = itertools.count()


@dataclass
class GenerationStats:
    """``model.last_stats``: the estimated board time of the last ``generate`` /
    ``generate_yield`` / forward call (the cost model on ``device``), next to the wall time
    this backend took. Estimates cover the runs the device made: prompt tokens taken from the
    prefix cache or prefilled on the GPU (hybrid mode) cost no device time."""

    backend: str  # where it ran: "emu", "xrt"
    device: str  # the preset the estimate is for
    num_device: int
    prompt_tokens: int
    prefilled_tokens: int  # of those, the ones the device prefilled
    new_tokens: int
    prefill_runs: int
    decode_runs: int
    estimated_prefill_ms: float  # device time + run overhead of the prefill chunks
    estimated_decode_ms_per_token: float  # the same per decode run
    estimated_time_to_first_token_ms: float
    estimated_tokens_per_s: float
    estimated_total_ms: float
    estimated_bandwidth_utilization: float  # decode runs: HBM bytes / device time / peak
    wall_s: float  # measured on this backend (the emulator is not the board)
    trace: Optional[str] = None  # the Chrome/Perfetto trace written, with profile=True

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        return (
            f"estimated on {self.num_device} x {self.device}: "
            f"{self.estimated_decode_ms_per_token:.3f} ms/token "
            f"({self.estimated_tokens_per_s:.1f} tokens/s), first token after "
            f"{self.estimated_time_to_first_token_ms:.3f} ms, "
            f"{100 * self.estimated_bandwidth_utilization:.1f}% of peak bandwidth; "
            f"{self.new_tokens} new tokens in {self.wall_s:.3f} s on {self.backend}"
        )


def trace_path(profile: ProfileArg) -> Optional[Path]:
    """Where a trace goes: ``profile`` (True, a file, or a folder), else ``HYPERDEX_PROFILE``
    (1/true or a path); None when not profiling."""
    if profile is None or profile is False:
        env = os.environ.get("HYPERDEX_PROFILE", "").strip()
        if env.lower() in ("", "0", "false", "no", "off"):
            return None
        profile = True if env.lower() in ("1", "true", "yes", "on") else env
    if profile is True:
        profile = Path.cwd()
    path = Path(profile).expanduser()
    if path.is_dir() or str(profile).endswith(os.sep):
        stamp = time.strftime("%Y%m%d-%H%M%S")
        path = path / f"hyperdex-trace-{stamp}-{os.getpid()}-{next(_counter)}.json"
    return path


class RunProfiler:
    """Prices the runs of one loaded model. Programs and preset come from the compiled folder
    (loaded on first use).

    A call's runs are only written down while it runs; they are priced when its stats are
    first read (:meth:`finish` returns a :class:`PendingStats`), so a decode step does not pay
    for the cost model (about 0.1 ms a run for a 30-layer model, 1-2% of an emulated step).
    With a trace (``profile``), they are priced at the end of the call, and the file written.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.num_device = 1
        self._profiler: Any = None
        self._preset: Any = None
        self._lock = threading.Lock()  # the C++ profiler: one pricing at a time
        self._trace: Optional[Path] = None
        self._t0 = 0.0
        self._prompt_tokens = 0
        self._new_tokens = 0
        # (start_pos, n, logits_all) of a prefill run, (position, 0, False) of a decode run
        self._runs: list[tuple[int, int, bool]] = []

    def _ensure(self) -> Any:
        if self._profiler is None:
            from .. import _core
            from ..compiled.folder import read_memory_map
            from ..presets import device_preset

            memory_map = read_memory_map(self.folder)
            self.num_device = int(memory_map.get("num_device", 1))
            self._preset = device_preset(memory_map["device_preset"])
            prefill = _core.load_program(str(self.folder / "inst" / "prefill.bin"))
            decode = _core.load_program(str(self.folder / "inst" / "decode.bin"))
            self._profiler = _core.cost.Profiler(prefill, decode, self._preset, self.num_device)
            self._profiler.set_region_names(
                {int(r["offset"]): r["name"] for r in memory_map["regions"]}
            )
        return self._profiler

    def begin(self, profile: ProfileArg = None) -> None:
        """Starts the accounting of one call (and its timeline when profiling)."""
        self._ensure()  # a broken compiled folder fails here, before the call runs
        self._trace = trace_path(profile)
        self._t0 = time.perf_counter()
        self._prompt_tokens = 0
        self._new_tokens = 0
        self._runs = []

    def prompt(self, tokens: int) -> None:
        self._prompt_tokens += tokens

    def prefill(self, start_pos: int, n: int, logits_all: bool = False) -> None:
        if n > 0:
            self._runs.append((start_pos, n, bool(logits_all)))

    def decode(self, position: int) -> None:
        self._runs.append((position, 0, False))

    def token(self) -> None:
        self._new_tokens += 1

    def finish(self, backend: str) -> PendingStats:
        """The call's stats, priced when first read (now, when a trace is to be written)."""
        pending = PendingStats(
            functools.partial(
                self.price,
                backend,
                self._runs,
                self._prompt_tokens,
                self._new_tokens,
                time.perf_counter() - self._t0,
                self._trace,
            )
        )
        self._runs = []
        if self._trace is not None:
            pending.get()
        return pending

    def price(
        self,
        backend: str,
        runs: list[tuple[int, int, bool]],
        prompt_tokens: int,
        new_tokens: int,
        wall_s: float,
        trace_to: Optional[Path],
    ) -> GenerationStats:
        """Prices `runs` in order on the cost model (writing the trace, if asked)."""
        with self._lock:
            prof = self._ensure()
            prof.reset()
            prof.keep_timeline = trace_to is not None
            try:
                for start, n, logits_all in runs:
                    if n:
                        prof.prefill(start, n, logits_all)
                    else:
                        prof.decode(start)
                t = prof.totals
                trace = None
                if trace_to is not None:
                    trace_to.parent.mkdir(parents=True, exist_ok=True)
                    prof.write_chrome_trace(str(trace_to))
                    trace = str(trace_to)
                    log.info("hyperdex: wrote the estimated timeline to %s", trace)
            finally:
                prof.keep_timeline = False
        overhead_ms = self._preset.run_overhead_us / 1000.0
        prefill_ms = t.prefill_ns / 1e6 + t.prefill_runs * overhead_ms
        decode_ms = t.decode_ns / 1e6 + t.decode_runs * overhead_ms
        per_token = decode_ms / t.decode_runs if t.decode_runs else 0.0
        util = (
            t.decode_hbm_bytes / t.decode_ns / self._preset.hbm_bandwidth_gbps
            if t.decode_ns
            else 0.0
        )
        return GenerationStats(
            backend=backend,
            device=self._preset.name,
            num_device=self.num_device,
            prompt_tokens=prompt_tokens,
            prefilled_tokens=t.prefill_tokens,
            new_tokens=new_tokens,
            prefill_runs=t.prefill_runs,
            decode_runs=t.decode_runs,
            estimated_prefill_ms=prefill_ms,
            estimated_decode_ms_per_token=per_token,
            estimated_time_to_first_token_ms=prefill_ms,
            estimated_tokens_per_s=1000.0 / per_token if per_token else 0.0,
            estimated_total_ms=prefill_ms + decode_ms,
            estimated_bandwidth_utilization=util,
            wall_s=wall_s,
            trace=trace,
        )


class PendingStats:
    """One call's runs, priced into :class:`GenerationStats` on the first :meth:`get`."""

    def __init__(self, price: Callable[[], GenerationStats]) -> None:
        self._price: Optional[Callable[[], GenerationStats]] = price
        self._stats: Optional[GenerationStats] = None

    def get(self) -> GenerationStats:
        if self._stats is None:
            assert self._price is not None
            self._stats = self._price()
            self._price = None  # the runs are no longer needed
        return self._stats
