"""The base aiohttp application every service starts from: problem+json errors, request metrics,
``/healthz``, ``/readyz`` and ``/metrics``."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from darkroom_kit.logs import configure_logging
from darkroom_kit.metrics import HttpMetrics
from darkroom_kit.problems import Problem, problem_response
from darkroom_kit.settings import CommonSettings
from darkroom_kit.storage import StorageError

log = logging.getLogger(__name__)

ReadyCheck = Callable[[], Awaitable[None]]

REGISTRY: web.AppKey[CollectorRegistry] = web.AppKey("registry", CollectorRegistry)
HTTP_METRICS: web.AppKey[HttpMetrics] = web.AppKey("http_metrics", HttpMetrics)
READY_CHECKS: web.AppKey[list[ReadyCheck]] = web.AppKey("ready_checks", list)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _route_label(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


@web.middleware
async def metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    metrics = request.app[HTTP_METRICS]
    started = time.perf_counter()
    status = 500
    metrics.in_flight.labels(metrics.service).inc()
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        metrics.in_flight.labels(metrics.service).dec()
        route = _route_label(request)
        metrics.requests.labels(metrics.service, route, request.method, str(status)).inc()
        metrics.latency.labels(metrics.service, route, request.method).observe(
            time.perf_counter() - started
        )


_HTTP_CODES = {
    404: ("not_found", "Not found"),
    405: ("method_not_allowed", "Method not allowed"),
    413: ("body_too_large", "Request body too large"),
}


@web.middleware
async def problem_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except Problem as problem:
        return problem_response(problem, request.path)
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
    except Exception:
        log.exception("unhandled error", extra={"path": request.path, "method": request.method})
        return problem_response(
            Problem(
                500,
                "internal_error",
                "Internal server error",
                "The server failed; the request can be retried.",
            ),
            request.path,
        )


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    failures: list[str] = []
    for check in request.app[READY_CHECKS]:
        try:
            await check()
        except Exception as exc:
            failures.append(f"{getattr(check, '__name__', 'check')}: {exc}")
    if failures:
        return web.json_response({"ready": False, "failures": failures}, status=503)
    return web.json_response({"ready": True})


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
        middlewares=[metrics_middleware, problem_middleware, *middlewares],
        client_max_size=client_max_size,
    )
    registry = CollectorRegistry()
    app[REGISTRY] = registry
    app[HTTP_METRICS] = HttpMetrics(registry, service)
    # Not ready until a cleanup context appends its checks: /readyz is false while starting.
    app[READY_CHECKS] = []
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
    run(create_app(settings), settings.http_host, settings.http_port)


def run(app: web.Application, host: str, port: int) -> None:
    # aiohttp turns SIGINT and SIGTERM into a graceful shutdown that runs the cleanup contexts in
    # reverse; shutdown_timeout bounds how long open requests may finish.
    web.run_app(app, host=host, port=port, access_log=None, shutdown_timeout=20, print=None)
