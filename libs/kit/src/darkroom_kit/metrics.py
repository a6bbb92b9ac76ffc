"""Prometheus metrics. Each app owns its registry, so several apps can live in one test process."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


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
        self.published = Counter(
            "messages_published_total",
            "Messages published with a broker confirm",
            ["service", "exchange"],
            registry=registry,
        )
        self.service = service
