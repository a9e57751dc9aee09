"""Prometheus metrics of one gateway (its own registry, so several apps can share a process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("embed_requests", "HTTP requests by route and status", ["route", "status"], registry=r)
        self.latency = Histogram("embed_request_latency_seconds", "latency of POST /v1/embeddings", registry=r,
                                 buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30))
        self.batch = Histogram("embed_batch_size", "texts per request", registry=r,
                               buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
        self.tokens = Counter("embed_tokens", "tokens embedded (after truncation)", registry=r)
        self.queue_depth = Gauge("embed_queue_depth", "requests admitted and not yet answered", registry=r)
        self.triton_up = Gauge("embed_triton_up", "1 when the last call to Triton succeeded", registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
