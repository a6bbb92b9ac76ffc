"""Structured logging: one JSON object per line (structlog over the standard library), with a
precise UTC timestamp, the level, the service, and the ids in scope.

The ids come from context variables, bound where they become known (the HTTP middleware binds
the request id and the route's ids, authentication the token id, the consumer the message's
ids) and unbound when that scope ends, so every line logged in that scope carries them, from
our code or a library's, without being passed down. The trace id comes from the current
OpenTelemetry span. A call's own ``extra`` fields are kept too.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator, Mapping
from typing import Any, TextIO

import structlog
from opentelemetry import trace
from structlog.typing import EventDict, Processor, WrappedLogger

# The ids a log line may carry, as bound in context. Only these are bound from a route's
# parameters or a message's data; anything else stays out of the context.
ID_FIELDS = (
    "request_id",
    "token_id",
    "event_id",
    "photo_id",
    "upload_id",
    "operation_id",
    "import_id",
    "endpoint_id",
    "delivery_id",
    "message_id",
)

# These are chatty at INFO and say nothing an operator needs (aiohttp's access log is replaced
# by our own line, which has the route template and the ids).
_QUIET = ("aiormq", "aio_pika", "aiobotocore", "botocore", "aiohttp.access", "pymongo")


def _add_trace_ids(_: WrappedLogger, __: str, event: EventDict) -> EventDict:
    context = trace.get_current_span().get_span_context()
    if context.is_valid:
        event.setdefault("trace_id", format(context.trace_id, "032x"))
        event.setdefault("span_id", format(context.span_id, "016x"))
    return event


def _service(name: str) -> Processor:
    def add(_: WrappedLogger, __: str, event: EventDict) -> EventDict:
        event.setdefault("service", name)
        return event

    return add


def configure_logging(
    service: str, level: str = "INFO", as_json: bool = True, stream: TextIO | None = None
) -> logging.Handler:
    """Every record of the process, through the standard library's root logger, rendered by
    structlog: JSON lines on ``stream`` (stderr), or readable lines for a terminal
    (``as_json=False``). Answers the handler it installed."""
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.ExtraAdder(),
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="time"),
        _service(service),
        _add_trace_ids,
    ]
    renderer: Processor = (
        structlog.processors.JSONRenderer(default=str)
        if as_json
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    final: list[Processor] = [
        structlog.stdlib.ProcessorFormatter.remove_processors_meta,
        # "event" is structlog's name for the message; here an event is a darkroom event.
        structlog.processors.EventRenamer("msg"),
    ]
    if as_json:
        # The traceback as one string field of the same line: an error with its traceback is
        # one line, logged once.
        final.append(structlog.processors.format_exc_info)
    final.append(renderer)
    formatter = structlog.stdlib.ProcessorFormatter(foreign_pre_chain=shared, processors=final)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in _QUIET:
        logging.getLogger(noisy).setLevel(logging.WARNING)
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared[:2],
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    return handler


def ids_in(data: Mapping[str, Any]) -> dict[str, str]:
    """The ids a message's data or a route's parameters name, by their log field: ``photo.id``
    and ``photo.event_id`` of a photo, and any top-level ``*_id`` field in :data:`ID_FIELDS`."""
    found: dict[str, str] = {}
    for key in ID_FIELDS:
        value = data.get(key)
        if isinstance(value, str) and value:
            found[key] = value
    for kind in ("photo", "event", "endpoint", "operation", "upload"):
        nested = data.get(kind)
        if isinstance(nested, Mapping):
            nested_id = nested.get("id")
            if isinstance(nested_id, str) and nested_id:
                found.setdefault(f"{kind}_id", nested_id)
            event_id = nested.get("event_id")
            if isinstance(event_id, str) and event_id:
                found.setdefault("event_id", event_id)
    return found


def bind(**ids: str) -> None:
    """Adds ids to the current scope (a request, a message) until that scope's
    :func:`bound` block ends."""
    structlog.contextvars.bind_contextvars(**ids)


@contextlib.contextmanager
def bound(**ids: str) -> Iterator[None]:
    """A scope of its own: what is bound inside (here or by :func:`bind`) is gone after it."""
    before = structlog.contextvars.get_contextvars()
    structlog.contextvars.bind_contextvars(**ids)
    try:
        yield
    finally:
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(**before)
