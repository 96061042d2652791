"""The server's Prometheus metrics (``GET /metrics``), with vLLM's names so dashboards and
alerts written for vLLM work unchanged.

Every server has its own ``CollectorRegistry`` (no global state: two servers in one process,
as in the tests, keep separate counts). Labels are vLLM's ``model_name`` and ``engine``
(always "0": one engine per server).

Counters (of tokens): ``vllm:prompt_tokens_total``, ``vllm:generation_tokens_total``,
``vllm:prefix_cache_queries_total`` (prompt tokens looked up) and
``vllm:prefix_cache_hits_total`` (those the prefix cache supplied),
``vllm:request_success_total{finished_reason}``. Gauges: ``vllm:num_requests_running``,
``vllm:num_requests_waiting``. Histograms (seconds, vLLM's buckets):
``vllm:time_to_first_token_seconds`` (arrival to first token),
``vllm:inter_token_latency_seconds`` (between consecutive tokens: vLLM's newer name for what
it called ``vllm:time_per_output_token_seconds``), ``vllm:e2e_request_latency_seconds``
(arrival to last token), ``vllm:request_queue_time_seconds`` (arrival to start).
"""

from __future__ import annotations

from typing import Any, Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from .engine import GenerationResult, Job

__all__ = ["CONTENT_TYPE_LATEST", "ServerMetrics"]

# vLLM's buckets (vllm/v1/metrics/loggers.py)
TTFT_BUCKETS = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
)  # fmt: skip
ITL_BUCKETS = (
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0,
)  # fmt: skip
LATENCY_BUCKETS = (
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0,
    240.0, 480.0, 960.0, 1920.0, 7680.0,
)  # fmt: skip


class ServerMetrics:
    """The metrics of one server; :meth:`finished` records a request that ran, the gauges are
    read at scrape time from ``running()`` and ``waiting()``."""

    def __init__(
        self, model_name: str, running: Callable[[], int], waiting: Callable[[], int]
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        labels = {"model_name": model_name, "engine": "0"}
        names = list(labels)

        def counter(name: str, doc: str) -> Any:
            return Counter(name, doc, names, registry=self.registry).labels(**labels)

        def histogram(name: str, doc: str, buckets: tuple[float, ...]) -> Any:
            metric = Histogram(name, doc, names, registry=self.registry, buckets=buckets)
            return metric.labels(**labels)

        self.prompt_tokens = counter("vllm:prompt_tokens", "Number of prefill tokens processed.")
        self.generation_tokens = counter(
            "vllm:generation_tokens", "Number of generation tokens processed."
        )
        self.cache_queries = counter(
            "vllm:prefix_cache_queries",
            "Prefix cache queries, in terms of number of queried tokens.",
        )
        self.cache_hits = counter(
            "vllm:prefix_cache_hits", "Prefix cache hits, in terms of number of cached tokens."
        )
        self.success = Counter(
            "vllm:request_success",
            "Count of successfully processed requests.",
            [*names, "finished_reason"],
            registry=self.registry,
        )
        self.ttft = histogram(
            "vllm:time_to_first_token_seconds",
            "Histogram of time to first token in seconds.",
            TTFT_BUCKETS,
        )
        self.itl = histogram(
            "vllm:inter_token_latency_seconds",
            "Histogram of inter-token latency in seconds.",
            ITL_BUCKETS,
        )
        self.e2e = histogram(
            "vllm:e2e_request_latency_seconds",
            "Histogram of e2e request latency in seconds.",
            LATENCY_BUCKETS,
        )
        self.queue_time = histogram(
            "vllm:request_queue_time_seconds",
            "Histogram of time spent in WAITING phase for request.",
            LATENCY_BUCKETS,
        )
        Gauge(
            "vllm:num_requests_running",
            "Number of requests in model execution batches.",
            names,
            registry=self.registry,
        ).labels(**labels).set_function(lambda: float(running()))
        Gauge(
            "vllm:num_requests_waiting",
            "Number of requests waiting to be processed.",
            names,
            registry=self.registry,
        ).labels(**labels).set_function(lambda: float(waiting()))
        self._labels = labels

    def finished(self, job: Job, result: GenerationResult) -> None:
        """Records a request that ran (on the engine's worker thread)."""
        self.prompt_tokens.inc(result.prompt_tokens)
        self.generation_tokens.inc(result.completion_tokens)
        self.cache_queries.inc(result.prompt_tokens)
        self.cache_hits.inc(result.cached_tokens)
        reason = "abort" if result.finish_reason == "cancelled" else result.finish_reason
        self.success.labels(**self._labels, finished_reason=reason).inc()
        if job.started_at is not None:
            self.queue_time.observe(job.started_at - job.enqueued_at)
        times = result.token_times
        if times:
            self.ttft.observe(times[0] - job.enqueued_at)
            for before, after in zip(times, times[1:]):
                self.itl.observe(after - before)
            self.e2e.observe(times[-1] - job.enqueued_at)

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)
