"""Prometheus metrics: requests, latency, micro-batch sizes, tokens, queue depth.

Each app owns its registry (not prometheus_client's global one), so two servers in one process (tests, an
embedding application) neither collide nor count each other's requests.
"""

from __future__ import annotations

import time

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from .batcher import BatchStats

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "embedkit_requests", "HTTP requests by route and status.", ["route", "status"], registry=r
        )
        self.latency = Histogram(
            "embedkit_request_seconds", "Time to answer, by route.", ["route"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.batch_requests = Histogram(
            "embedkit_batch_requests",
            "Requests merged into one model run.",
            ["model"],
            buckets=SIZE_BUCKETS,
            registry=r,
        )
        self.batch_inputs = Histogram(
            "embedkit_batch_inputs", "Inputs (texts) in one model run.", ["model"], buckets=SIZE_BUCKETS, registry=r
        )
        self.batch_seconds = Histogram(
            "embedkit_batch_seconds", "Time of one model run.", ["model"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.tokens = Counter("embedkit_tokens", "Tokens embedded (special tokens included).", ["model"], registry=r)
        self.inputs = Counter("embedkit_inputs", "Inputs embedded.", ["model"], registry=r)
        self.queue_depth = Gauge("embedkit_queue_depth", "Requests waiting for the model.", ["model"], registry=r)

    def batch_observer(self, model: str):
        """The callback a model's worker thread calls after each run."""

        def observe(stats: BatchStats) -> None:
            self.batch_requests.labels(model).observe(stats.requests)
            self.batch_inputs.labels(model).observe(stats.inputs)
            self.batch_seconds.labels(model).observe(stats.seconds)
            self.tokens.labels(model).inc(stats.tokens)
            self.inputs.labels(model).inc(stats.inputs)

        return observe

    def track_queue(self, model: str, depth) -> None:
        """Read ``depth()`` whenever metrics are scraped (a gauge that is never stale)."""
        self.queue_depth.labels(model).set_function(depth)

    def observe_request(self, route: str, status: int, started: float) -> None:
        self.requests.labels(route, str(status)).inc()
        self.latency.labels(route).observe(time.perf_counter() - started)

    def render(self) -> bytes:
        return generate_latest(self.registry)
