"""OpenTelemetry traces: one upload is one trace, from its HTTP request through every message it
causes to each webhook delivery attempt.

The trace context crosses the broker in each message's AMQP headers (W3C ``traceparent``), and
the outbox keeps it beside the message it stores, so a relayed message joins the trace of the
request that wrote it. Spans are exported over OTLP when ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set;
either way they are recorded, and their trace id is on every log line written inside them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from yarl import URL

TRACER_PREFIX = "darkroom."


def configure_tracing(service: str, otlp_endpoint: str | None) -> Callable[[], None]:
    """Installs the process's tracer provider; answers what flushes and stops it at exit.
    Spans are recorded whether or not they are exported, so every log line carries the trace
    id that ties one upload's lines together across the services; they leave the process only
    when an OTLP endpoint is set."""
    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: service}))
    if otlp_endpoint:
        # The exporter reads the endpoint (and headers, timeout) from the environment itself,
        # and adds /v1/traces to it as the specification says.
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    return provider.shutdown


def tracer(service: str) -> trace.Tracer:
    """The tracer of one service's code. Its name says the service, which tells spans apart
    when several services share one process (the tests)."""
    return trace.get_tracer(f"{TRACER_PREFIX}{service}")


def carrier() -> dict[str, str]:
    """The current trace context as message headers (empty outside a recorded span)."""
    headers: dict[str, str] = {}
    propagate.inject(headers)
    return headers


def context_of(headers: Mapping[str, Any] | None) -> Context:
    """The trace context that message headers (or HTTP headers) carry."""
    found = {
        str(k): v.decode() if isinstance(v, bytes) else str(v)
        for k, v in (headers or {}).items()
        if isinstance(v, str | bytes)
    }
    return propagate.extract(found)


def url_without_secrets(url: URL) -> str:
    """A URL as a span may record it: no credentials, no query (where receivers put tokens)."""
    return str(url.with_user(None).with_query(None).with_fragment(None))
