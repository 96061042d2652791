"""``hdex-explore --ray [ADDRESS]``: a sweep's design points as Ray tasks (docs/scale-out.md).

The explorer cuts the points into ranges (the analytical engine: the chunks it prices in one
numpy pass; the cost model: contiguous runs of points, which share device designs and so
cost-model runs); :class:`RayRunner` groups consecutive ranges into tasks, about
``tasks_per_cpu`` per CPU of the cluster, ships what they share once (``ray.put``) and gathers
the results in the ranges' order, so the tables, pickles and plots are a local run's, byte for
byte. The progress bar moves as tasks finish. Ray is imported only here, only when used.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Optional

from ..ray_cluster import connect
from ..tools.progress import progress_bar

TASKS_PER_CPU = 4  # enough tasks to balance uneven ones, few enough to keep overhead low


def _run_ranges(fn: Callable[..., Any], shared: Any, ranges: list[tuple[int, int]]) -> list[Any]:
    """One task: ``fn(shared, start, stop)`` for each range, in order."""
    return [fn(shared, a, b) for a, b in ranges]


class RayRunner:
    """Runs the explorer's ranges of points as Ray tasks on the cluster at ``address``
    (``host:port``, ``auto``, or ``local``: a Ray instance of this process's own, stopped on
    exit). Use it as a context manager; ``explore(..., ray=runner)`` takes it, so several
    sweeps share one connection."""

    def __init__(
        self,
        address: Optional[str] = "local",
        tasks_per_cpu: int = TASKS_PER_CPU,
        num_cpus: Optional[int] = None,
    ) -> None:
        self.address = address
        self.tasks_per_cpu = max(1, int(tasks_per_cpu))
        self.num_cpus = num_cpus  # for a local instance; None: this machine's
        self._started = False

    def __enter__(self) -> RayRunner:
        self._started = connect(self.address, num_cpus=self.num_cpus)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._started:
            import ray

            ray.shutdown()
            self._started = False

    def _tasks(self) -> int:
        import ray

        cpus = int(ray.cluster_resources().get("CPU", 1)) or 1
        return cpus * self.tasks_per_cpu

    def ranges(self, n_points: int) -> list[tuple[int, int]]:
        """Contiguous ranges of the points, one per task."""
        size = max(1, math.ceil(n_points / self._tasks()))
        return [(a, min(n_points, a + size)) for a in range(0, n_points, size)]

    def map(
        self,
        fn: Callable[..., Any],
        shared: Any,
        ranges: list[tuple[int, int]],
        desc: str,
        progress: bool,
    ) -> list[Any]:
        """``fn(shared, start, stop)`` for every range, as Ray tasks; the results in the
        ranges' order. ``fn`` must be importable by the workers (a module-level function)."""
        import ray

        per_task = max(1, math.ceil(len(ranges) / self._tasks()))
        groups = [ranges[i : i + per_task] for i in range(0, len(ranges), per_task)]
        shared_ref = ray.put(shared)  # shipped once, not once per task
        task = ray.remote(_run_ranges)
        futures = {task.remote(fn, shared_ref, g): i for i, g in enumerate(groups)}
        results: list[Optional[list[Any]]] = [None] * len(groups)
        total = sum(b - a for a, b in ranges)
        with progress_bar(total, f"{desc} on Ray", "pt", enabled=progress) as bar:
            pending = list(futures)
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                for ref in done:
                    i = futures.pop(ref)
                    results[i] = ray.get(ref)
                    bar.update(sum(b - a for a, b in groups[i]))
                    bar.refresh()  # each finished task shows, the last one too (few tasks)
        return [r for group in results for r in (group or [])]
