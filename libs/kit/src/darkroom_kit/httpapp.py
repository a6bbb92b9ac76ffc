"""The base aiohttp application every service starts from: problem+json errors, request metrics,
``/healthz``, ``/readyz`` and ``/metrics``, and a serve loop that drains on SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import re
import signal
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from aiohttp import web
from opentelemetry.trace import SpanKind, StatusCode, Tracer
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from pymongo.errors import ConnectionFailure, ExecutionTimeout, PyMongoError

from darkroom_kit.errors import ServiceError
from darkroom_kit.ids import new_id
from darkroom_kit.logs import ID_FIELDS, bound, configure_logging
from darkroom_kit.metrics import HttpMetrics, register_runtime_collectors
from darkroom_kit.problems import Problem, problem_response
from darkroom_kit.settings import CommonSettings
from darkroom_kit.storage import StorageError
from darkroom_kit.tracing import configure_tracing, context_of, tracer

log = logging.getLogger(__name__)

ReadyCheck = Callable[[], Awaitable[None]]

REGISTRY: web.AppKey[CollectorRegistry] = web.AppKey("registry", CollectorRegistry)
HTTP_METRICS: web.AppKey[HttpMetrics] = web.AppKey("http_metrics", HttpMetrics)
# Each dependency's check by its name (``mongo``, ``amqp``, ``s3``), as /readyz reports it.
READY_CHECKS: web.AppKey[dict[str, ReadyCheck]] = web.AppKey("ready_checks", dict)
READY_TIMEOUT: web.AppKey[float] = web.AppKey("ready_timeout", float)
# Checks that are reported but do not make the service unready: a dependency it can do its work
# without for a while (upload-ingest writes every message to its outbox first).
READY_OPTIONAL: web.AppKey[frozenset[str]] = web.AppKey("ready_optional", frozenset)
TRACER: web.AppKey[Tracer] = web.AppKey("tracer", Tracer)


class Drain:
    """Whether the service is draining (SIGTERM received), and the requests it is handling."""

    def __init__(self) -> None:
        self.draining = False
        self.in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        # Called with the grace period when draining starts, alongside the requests' drain:
        # consumers stop taking messages at once and share the one grace period, instead of
        # each waiting its own in turn while the cleanup contexts close.
        self.stoppers: list[Callable[[float], Awaitable[None]]] = []

    def enter(self) -> None:
        self.in_flight += 1
        self._idle.clear()

    def leave(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0:
            self._idle.set()

    async def idle(self, within_seconds: float) -> bool:
        """Wait until no request is in flight; False if some still are after that long."""
        try:
            await asyncio.wait_for(self._idle.wait(), within_seconds)
        except TimeoutError:
            return False
        return True


DRAIN: web.AppKey[Drain] = web.AppKey("drain", Drain)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _route_label(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


@web.middleware
async def drain_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    drain = request.app[DRAIN]
    drain.enter()
    try:
        return await handler(request)
    finally:
        drain.leave()


async def _close_when_draining(request: web.Request, response: web.StreamResponse) -> None:
    # A keep-alive connection would carry the client's next request to a process that is
    # leaving: answer with "Connection: close" so the client opens its next one elsewhere.
    if request.app[DRAIN].draining:
        response.force_close()
        # The headers are already prepared when this signal runs: say it too.
        response.headers["Connection"] = "close"


# Health and metrics probes: no access log line, no request metrics, no span (a probe every few
# seconds from each of several watchers would drown what the operator looks for).
PROBES = frozenset({"/healthz", "/readyz", "/metrics"})
REQUEST_ID_HEADER = "X-Request-Id"
# A client's own request id is kept when it looks like one (no room for log injection).
_CLIENT_REQUEST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@/+=-]{0,127}")
REQUEST_ID: web.RequestKey[str] = web.RequestKey("request_id", str)
# Route parameters whose log field has another name.
_ROUTE_ID_FIELDS = {"op_id": "operation_id", "webhook_id": "endpoint_id"}


def _route_ids(request: web.Request) -> dict[str, str]:
    named = {_ROUTE_ID_FIELDS.get(k, k): v for k, v in request.match_info.items()}
    return {k: v for k, v in named.items() if k in ID_FIELDS}


@web.middleware
async def observe_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The request's id (the client's ``X-Request-Id`` or a new one, echoed), the ids its route
    names, its server span, its metrics and its access log line, all from the one status it
    ended with; every line logged while it is handled carries the ids and the trace id."""
    route = _route_label(request)
    if route in PROBES:
        return await handler(request)
    given = request.headers.get(REQUEST_ID_HEADER, "")
    request_id = given if _CLIENT_REQUEST_ID.fullmatch(given) else new_id("req")
    request[REQUEST_ID] = request_id
    metrics = request.app[HTTP_METRICS]
    started = time.perf_counter()
    status = 500
    response: web.StreamResponse | None = None
    metrics.in_flight.labels(metrics.service).inc()
    with (
        bound(request_id=request_id, **_route_ids(request)),
        request.app[TRACER].start_as_current_span(
            f"{request.method} {route}",
            context=context_of(request.headers),
            kind=SpanKind.SERVER,
            attributes={
                "http.request.method": request.method,
                "http.route": route,
                "url.path": request.path,
                "darkroom.request_id": request_id,
            },
        ) as span,
    ):
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        except (asyncio.CancelledError, ConnectionResetError):
            if request.transport is None or request.transport.is_closing():
                # The client went away (nginx's 499): nothing failed here, and a 500 would page
                # whoever watches the error ratio.
                status = CLIENT_CLOSED
            raise
        finally:
            elapsed = time.perf_counter() - started
            metrics.in_flight.labels(metrics.service).dec()
            metrics.requests.labels(metrics.service, route, request.method, str(status)).inc()
            metrics.latency.labels(metrics.service, route, request.method).observe(elapsed)
            span.set_attribute("http.response.status_code", status)
            if status >= 500 and status != CLIENT_CLOSED:
                span.set_status(StatusCode.ERROR)
            sent = 0
            if response is not None:
                sent = response.body_length if response.prepared else response.content_length or 0
            log.info(
                "%s %s %d",
                request.method,
                route,
                status,
                extra={
                    "method": request.method,
                    "route": route,
                    "status": status,
                    "duration_ms": round(elapsed * 1000, 3),
                    "bytes_in": request.content_length or 0,
                    "bytes_out": sent,
                },
            )


async def _echo_request_id(request: web.Request, response: web.StreamResponse) -> None:
    request_id = request.get(REQUEST_ID)
    if request_id is not None:
        response.headers[REQUEST_ID_HEADER] = request_id


# What a request whose client disconnected counts as (no answer reaches anyone).
CLIENT_CLOSED = 499

_HTTP_CODES = {
    404: ("not_found", "Not found"),
    405: ("method_not_allowed", "Method not allowed"),
    413: ("body_too_large", "Request body too large"),
}


def _database_outage(exc: PyMongoError) -> bool:
    """MongoDB unreachable, failing over or too slow: not the request's fault and worth a retry.
    Errors of the request itself (a duplicate key, a bad query) are bugs, not outages."""
    return isinstance(exc, (ConnectionFailure, ExecutionTimeout)) or exc.timeout


_INTERNAL_ERROR = Problem(
    500, "internal_error", "Internal server error", "The server failed; the request can be retried."
)


@web.middleware
async def problem_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except Problem as problem:
        return problem_response(problem, request.path)
    except ServiceError as error:
        return problem_response(error.problem(), request.path)
    except StorageError:
        # Object storage failing under any handler is the same answer: not our bug, not the
        # client's, try again. (Handlers that stream uploads discard what they stored first.)
        log.warning("object storage failed", extra={"path": request.path}, exc_info=True)
        return problem_response(
            Problem(
                503,
                "storage_unavailable",
                "Object storage is not answering",
                "The request was not completed and nothing of it was kept; retry it shortly.",
                headers={"Retry-After": "5"},
            ),
            request.path,
        )
    except PyMongoError as exc:
        if not _database_outage(exc):
            log.exception("unhandled error", extra={"path": request.path, "method": request.method})
            return problem_response(_INTERNAL_ERROR, request.path)
        log.warning(
            "database unavailable: %s: %s",
            type(exc).__name__,
            exc,
            extra={"path": request.path, "method": request.method},
        )
        return problem_response(
            Problem(
                503,
                "database_unavailable",
                "The database is not answering",
                "The database did not answer in time; retry the request shortly.",
                headers={"Retry-After": "5"},
            ),
            request.path,
        )
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code, title = _HTTP_CODES.get(exc.status, (f"http_{exc.status}", exc.reason))
        return problem_response(
            Problem(
                exc.status,
                code,
                title,
                exc.text if exc.text != exc.reason else None,
                headers={k: v for k, v in exc.headers.items() if k.lower() == "allow"},
            ),
            request.path,
        )
    except ConnectionResetError:
        if request.transport is not None and not request.transport.is_closing():
            log.exception("unhandled error", extra={"path": request.path, "method": request.method})
            return problem_response(_INTERNAL_ERROR, request.path)
        log.info(
            "client went away mid-request", extra={"path": request.path, "method": request.method}
        )
        return web.Response(status=CLIENT_CLOSED)
    except Exception:
        log.exception("unhandled error", extra={"path": request.path, "method": request.method})
        return problem_response(_INTERNAL_ERROR, request.path)


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def _run_check(check: ReadyCheck, within_seconds: float) -> str:
    try:
        await asyncio.wait_for(check(), within_seconds)
    except TimeoutError:
        return f"down: no answer within {within_seconds:g}s"
    except Exception as exc:
        return f"down: {type(exc).__name__}: {exc}"[:300]
    return "ok"


async def readyz(request: web.Request) -> web.Response:
    """Ready: every dependency answered its check within the timeout, and not draining. The
    checks run concurrently, so one dependency that hangs costs its own timeout, not the sum."""
    app = request.app
    if app[DRAIN].draining:
        return web.json_response({"ready": False, "draining": True, "checks": {}}, status=503)
    checks = app[READY_CHECKS]
    results = await asyncio.gather(*(_run_check(c, app[READY_TIMEOUT]) for c in checks.values()))
    answers = dict(zip(checks, results, strict=True))
    optional = app[READY_OPTIONAL]
    degraded = sorted(name for name, r in answers.items() if r != "ok" and name in optional)
    # No checks yet: the cleanup contexts are still starting.
    ready = bool(answers) and all(r == "ok" or n in optional for n, r in answers.items())
    body: dict[str, object] = {"ready": ready, "checks": answers}
    if degraded:
        body["degraded"] = degraded
    return web.json_response(body, status=200 if ready else 503)


async def metrics_endpoint(request: web.Request) -> web.Response:
    body = generate_latest(request.app[REGISTRY])
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def create_base_app(
    service: str,
    *,
    client_max_size: int = 1024 * 1024,
    middlewares: tuple[Callable[..., Awaitable[web.StreamResponse]], ...] = (),
) -> web.Application:
    app = web.Application(
        middlewares=[
            observe_middleware,
            drain_middleware,
            problem_middleware,
            *middlewares,
        ],
        client_max_size=client_max_size,
    )
    registry = CollectorRegistry()
    # The process's own metrics (memory, CPU, GC) on the registry every service serves.
    register_runtime_collectors(registry)
    app[REGISTRY] = registry
    app[HTTP_METRICS] = HttpMetrics(registry, service)
    app[TRACER] = tracer(service)
    # Not ready until a cleanup context adds its checks: /readyz is false while starting.
    app[READY_CHECKS] = {}
    app[READY_TIMEOUT] = CommonSettings.model_fields["ready_check_timeout_seconds"].default
    app[READY_OPTIONAL] = frozenset()
    app[DRAIN] = Drain()
    app.on_response_prepare.append(_close_when_draining)
    app.on_response_prepare.append(_echo_request_id)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_endpoint)
    return app


SettingsT = TypeVar("SettingsT", bound=CommonSettings)


def serve(
    service: str, settings: SettingsT, create_app: Callable[[SettingsT], web.Application]
) -> None:
    """A service's whole ``main()``: logging, the app from its settings, serve until SIGTERM."""
    configure_logging(service, settings.log_level, settings.log_json)
    stop_tracing = configure_tracing(service, settings.otel_exporter_otlp_endpoint)
    app = create_app(settings)
    app[READY_TIMEOUT] = settings.ready_check_timeout_seconds
    try:
        run(app, settings.http_host, settings.http_port, settings.shutdown_grace_seconds)
    finally:
        # The spans of the last moments are exported before the process goes.
        stop_tracing()


def run(app: web.Application, host: str, port: int, grace_seconds: float) -> None:
    """Serve until SIGTERM or SIGINT, then drain (see :func:`_drain`) and run the cleanup
    contexts in reverse."""
    asyncio.run(_serve(app, host, port, grace_seconds))


# After the drain, how long aiohttp may take to write the last responses and cancel a request
# that outlived the grace period.
_CLOSE_SECONDS = 1.0


async def _serve(app: web.Application, host: str, port: int, grace_seconds: float) -> None:
    # Not web.run_app: its shutdown closes every connection before waiting for the requests on
    # them, and aiohttp's protocol discards what arrives on a closed connection, so a request
    # whose body was still arriving (an upload) stalled until it was cancelled.
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=_CLOSE_SECONDS)
    try:
        if not await _unless(stop, runner.setup()):
            log.info("stopped while starting")
            return
        site = web.TCPSite(runner, host, port)
        await site.start()
        log.info("listening on %s:%d", host, port)
        await stop.wait()
        await _drain(app, runner, grace_seconds)
    finally:
        await runner.cleanup()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)


async def _unless(stop: asyncio.Event, work: Coroutine[Any, Any, None]) -> bool:
    """Run ``work`` unless ``stop`` is set first (then cancel it): False if stopped."""
    task = asyncio.ensure_future(work)
    stopped = asyncio.ensure_future(stop.wait())
    await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
    stopped.cancel()
    if task.done():
        task.result()
        return True
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    return False


async def _drain(app: web.Application, runner: web.AppRunner, grace_seconds: float) -> None:
    """Not ready at once; no new connection (the listener closes, so a load balancer's next
    connection goes to another replica); the requests in flight, bodies still arriving
    included, finish within the grace period. Each response says ``Connection: close``."""
    drain = app[DRAIN]
    drain.draining = True
    log.info(
        "draining: %d request(s) in flight, up to %gs",
        drain.in_flight,
        grace_seconds,
        extra={"in_flight": drain.in_flight},
    )
    started = time.monotonic()
    for site in list(runner.sites):
        await site.stop()
    finished, *_ = await asyncio.gather(
        drain.idle(grace_seconds), *(stop(grace_seconds) for stop in drain.stoppers)
    )
    log.info(
        "drained in %.1fs%s",
        time.monotonic() - started,
        "" if finished else f"; {drain.in_flight} request(s) still running are cancelled",
        extra={"in_flight": drain.in_flight},
    )
