"""One photo followed across three services in one process: its trace (spans recorded by an
in-memory exporter) and its log lines (ids in scope), over the real servers."""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import pytest
from darkroom_ingest.settings import IngestSettings
from darkroom_kit.messaging import QueueSpec, Topology
from darkroom_kit.tracing import TRACER_PREFIX
from darkroom_thumbnailing.app import create_app as create_thumbnailing
from darkroom_thumbnailing.app import queue_spec
from darkroom_thumbnailing.settings import ThumbnailSettings
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from tests.factories.api import Client, TokenMaker, auth, form, make_event
from tests.factories.logs import captured_log_lines, parsed
from tests.factories.media import jpeg_bytes
from tests.factories.messaging import eventually
from tests.factories.servers import QueueJanitor
from tests.factories.webhooks import Serve, StartDispatch, deliveries, register_limited

_EXPORTER = InMemorySpanExporter()


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """The process's tracer provider records into memory (it can be set once per process;
    later tests keep it, their spans cleared here)."""
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(_EXPORTER))
        trace.set_tracer_provider(provider)
    _EXPORTER.clear()
    yield _EXPORTER
    _EXPORTER.clear()


@pytest.fixture
def log_lines() -> Iterator[io.StringIO]:
    with captured_log_lines("in-process") as stream:
        yield stream


async def _finished(spans: InMemorySpanExporter) -> tuple[ReadableSpan, ...] | None:
    """The spans recorded, once both consumers' have ended: the fan-out's ends when every
    endpoint's attempt has (other tests' endpoints in the shared database included), after ours
    succeeded; thumbnailing's ends after the photo shows processed (it acknowledges after)."""
    recorded = spans.get_finished_spans()
    consumed = {_service(s) for s in recorded if s.name == "process photo.uploaded"}
    return recorded if {"webhook-dispatch", "thumbnailing"} <= consumed else None


def _service(span: ReadableSpan) -> str:
    scope = span.instrumentation_scope.name if span.instrumentation_scope else ""
    return scope.removeprefix(TRACER_PREFIX)


async def test_one_upload_is_one_trace_across_three_services_and_its_ids_are_logged(
    spans: InMemorySpanExporter,
    log_lines: io.StringIO,
    api: Client,
    aiohttp_client: Any,
    settings_kwargs: dict[str, Any],
    ingest_settings: IngestSettings,
    make_token: TokenMaker,
    janitor: QueueJanitor,
    watch_events: QueueSpec,
    start_dispatch: StartDispatch,
    serve: Serve,
) -> None:
    thumbnailing = ThumbnailSettings(**settings_kwargs, render_processes=1)
    janitor.add(queue_spec(Topology(thumbnailing.amqp_namespace), thumbnailing))
    await aiohttp_client(create_thumbnailing(thumbnailing))
    await start_dispatch()
    receiver, url = await serve([(200, {}, b"")])
    token = await make_token()
    event = await make_event(api, token)
    endpoint = await register_limited(api, token, url, event["id"])

    resp = await api.post(
        f"/v1/events/{event['id']}/photos",
        data=form(("traced.jpg", jpeg_bytes(640, 480))),
        headers={**auth(token), "X-Request-Id": "req-from-the-client-1"},
    )
    assert resp.status == 201, await resp.text()
    assert resp.headers["X-Request-Id"] == "req-from-the-client-1"
    photo = (await resp.json())["uploaded"][0]

    async def delivered() -> bool:
        log = await deliveries(api, token, endpoint["id"])
        return bool(log) and log[0]["status"] == "succeeded"

    await eventually(delivered)

    async def processed() -> bool:
        got = await (await api.get(f"/v1/photos/{photo['id']}", headers=auth(token))).json()
        return bool(got["status"] == "processed")

    await eventually(processed)

    recorded = await eventually(lambda: _finished(spans), timeout=30)
    (upload,) = [
        s
        for s in recorded
        if s.kind == SpanKind.SERVER
        and (s.attributes or {}).get("darkroom.request_id") == "req-from-the-client-1"
    ]
    assert upload.name == "POST /v1/events/{event_id}/photos"
    trace_id = upload.context.trace_id
    in_trace = [s for s in recorded if s.context.trace_id == trace_id]
    by_service: dict[str, set[str]] = {}
    for span in in_trace:
        by_service.setdefault(_service(span), set()).add(span.name)
    # The request publishes photo.uploaded; thumbnailing and the fan-out each consume it, in
    # the same trace; the delivery's POST is a client span of it.
    assert "publish photo.uploaded" in by_service["upload-ingest"]
    assert "process photo.uploaded" in by_service["thumbnailing"]
    assert "process photo.uploaded" in by_service["webhook-dispatch"]
    assert any(s.kind == SpanKind.CLIENT and s.name.startswith("POST") for s in in_trace)
    # The receiver can join the trace too.
    _, headers, _ = receiver.requests[0]
    assert headers["traceparent"].split("-")[1] == format(trace_id, "032x")

    lines = parsed(log_lines)
    access = [
        line
        for line in lines
        if line.get("route") == "/v1/events/{event_id}/photos" and line.get("method") == "POST"
    ]
    assert len(access) == 1
    (line,) = access
    assert line["request_id"] == "req-from-the-client-1"
    assert line["event_id"] == event["id"]
    assert line["token_id"].startswith("tok_")
    assert line["status"] == 201
    assert line["trace_id"] == format(trace_id, "032x")
    assert line["bytes_in"] > 0
    # Probes are neither logged nor counted as API requests.
    for probe in ("/healthz", "/readyz", "/metrics"):
        await api.get(probe)
    text = await (await api.get("/metrics")).text()
    assert 'route="/v1/events/{event_id}/photos"' in text
    assert not any(f'route="{probe}"' in text for probe in ("/healthz", "/readyz", "/metrics"))
    lines = parsed(log_lines)
    assert not any(line.get("route") in ("/healthz", "/readyz", "/metrics") for line in lines)
    # Each consumer's outcome line names the message and the photo, in the upload's trace.
    outcomes = [
        line
        for line in lines
        if line.get("msg") == "message acked" and line.get("photo_id") == photo["id"]
    ]
    queues = {line["queue"] for line in outcomes}
    assert len(queues) >= 2, outcomes  # thumbnailing's and the fan-out's
    assert all(line["trace_id"] == format(trace_id, "032x") for line in outcomes)
    assert all(line["event_id"] == event["id"] for line in outcomes)
