"""The log lines: JSON, a UTC timestamp to the microsecond, the ids bound in scope, the trace."""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Iterator

import pytest
from darkroom_kit.logs import bind, bound, ids_in
from opentelemetry.sdk.trace import TracerProvider

from tests.factories.logs import captured_log_lines, parsed


@pytest.fixture
def lines() -> Iterator[io.StringIO]:
    with captured_log_lines("thumbnailing") as stream:
        yield stream


def test_ids_in_scope_are_on_every_line_and_gone_after_it(lines: io.StringIO) -> None:
    log = logging.getLogger("darkroom.test")
    with bound(request_id="req_1", event_id="ev_1"):
        bind(token_id="tok_1")
        log.info("inside %s", "scope", extra={"route": "/v1/x"})
    log.info("outside")
    inside, outside = parsed(lines)
    assert inside["msg"] == "inside scope"
    assert (inside["request_id"], inside["event_id"], inside["token_id"]) == (
        "req_1",
        "ev_1",
        "tok_1",
    )
    assert inside["route"] == "/v1/x"
    assert inside["service"] == "thumbnailing"
    assert inside["level"] == "info"
    assert inside["logger"] == "darkroom.test"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", inside["time"])
    assert not {"request_id", "event_id", "token_id"} & set(outside)


def test_an_error_is_one_line_with_its_traceback(lines: io.StringIO) -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("darkroom.test").exception("failed")
    (line,) = parsed(lines)
    assert line["level"] == "error"
    assert "Traceback" in line["exception"]
    assert "ValueError: boom" in line["exception"]


def test_the_current_span_gives_the_trace_id(lines: io.StringIO) -> None:
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("work") as span:
        logging.getLogger("darkroom.test").info("in a span")
    logging.getLogger("darkroom.test").info("no span")
    inside, outside = parsed(lines)
    assert inside["trace_id"] == format(span.get_span_context().trace_id, "032x")
    assert "trace_id" not in outside


def test_ids_of_a_message_or_a_route() -> None:
    data = {"photo": {"id": "ph_1", "event_id": "ev_1", "other": "x"}, "delivery_id": "d_1"}
    assert ids_in(data) == {"photo_id": "ph_1", "event_id": "ev_1", "delivery_id": "d_1"}
    assert ids_in({"secret": "s", "photo": "not a dict"}) == {}
