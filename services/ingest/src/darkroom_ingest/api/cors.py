"""CORS on the public API (aiohttp-cors), so that a page on another origin (a guest upload page,
Uppy in a customer's site) can call it: preflights answered, and the headers a browser script
must read exposed. Only the origins in ``CORS_ALLOWED_ORIGINS`` (none by default; ``*`` for any):
the token travels in ``Authorization``, never in a cookie, so no credentials mode is needed.
"""

from __future__ import annotations

import aiohttp_cors
from aiohttp import web

from darkroom_ingest.tus import protocol

EXPOSED_HEADERS = (
    "ETag",
    "Location",
    "Retry-After",
    "Idempotent-Replayed",
    "X-Request-Id",
    "X-Darkroom-Photo-Id",
    "X-Darkroom-Duplicate-Of",
    "RateLimit-Limit",
    "RateLimit-Remaining",
    "RateLimit-Reset",
    *protocol.EXPOSED_HEADERS,
)
# How long a browser may keep a preflight's answer.
PREFLIGHT_MAX_AGE_S = 600


def enable_cors(app: web.Application, origins: list[str]) -> None:
    """Every route registered so far answers the allowed origins; call it after the routes."""
    # aiohttp-cors ships no annotations for this constructor.
    options = aiohttp_cors.ResourceOptions(  # type: ignore[no-untyped-call]
        allow_credentials=False,
        expose_headers=EXPOSED_HEADERS,
        allow_headers="*",
        allow_methods="*",
        max_age=PREFLIGHT_MAX_AGE_S,
    )
    cors = aiohttp_cors.setup(app, defaults=dict.fromkeys(origins, options))
    for route in list(app.router.routes()):
        cors.add(route)
