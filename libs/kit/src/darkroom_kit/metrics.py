"""Prometheus metrics. Each app owns its registry, so several apps can live in one test process."""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


def register_runtime_collectors(registry: CollectorRegistry) -> None:
    """The process's own metrics (``process_*``: memory, CPU, open files; ``python_gc_*``;
    ``python_info``) on ``registry``: prometheus_client puts them on its default registry only,
    which no service serves. Each registry gets its own collectors, so two apps in one process
    do not clash (both report the one process)."""
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)  # registers nothing but on CPython


class HttpMetrics:
    def __init__(self, registry: CollectorRegistry, service: str) -> None:
        self.requests = Counter(
            "http_requests_total",
            "HTTP requests served",
            ["service", "route", "method", "status"],
            registry=registry,
        )
        self.latency = Histogram(
            "http_request_duration_seconds",
            "HTTP request handling time",
            ["service", "route", "method"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.in_flight = Gauge(
            "http_requests_in_flight",
            "HTTP requests being handled",
            ["service"],
            registry=registry,
        )
        self.service = service


class ConsumerMetrics:
    def __init__(self, registry: CollectorRegistry, service: str) -> None:
        self.consumed = Counter(
            "messages_consumed_total",
            "Messages consumed, by outcome",
            ["service", "queue", "outcome"],
            registry=registry,
        )
        self.handling = Histogram(
            "message_handling_seconds",
            "Time to handle one message",
            ["service", "queue"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.queue_messages = Gauge(
            "queue_messages",
            "Messages waiting in a consumer queue (ready, not yet delivered to a consumer), "
            "measured by its consumer every few seconds",
            ["service", "queue"],
            registry=registry,
        )
        self.queue_oldest_age = Gauge(
            "queue_oldest_message_age_seconds",
            "How long the oldest message this replica holds from the queue has been in it (0: "
            "none held); while a consumer runs, the age of the queue's oldest message",
            ["service", "queue"],
            registry=registry,
        )
        self.published = Counter(
            "messages_published_total",
            "Messages published with a broker confirm",
            ["service", "exchange"],
            registry=registry,
        )
        self.service = service


class OperationMetrics:
    """Operations that reached a final state, counted by whoever ended them (see
    :class:`darkroom_kit.operations.Operations`)."""

    def __init__(self, registry: CollectorRegistry, service: str) -> None:
        self.finished = Counter(
            "operations_finished_total",
            "Operations that reached a final state (done, failed), by kind",
            ["service", "kind", "state"],
            registry=registry,
        )
        self.service = service

    def ended(self, kind: str, state: str) -> None:
        self.finished.labels(self.service, kind, state).inc()
