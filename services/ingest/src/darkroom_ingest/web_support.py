"""Request parsing and authentication at the HTTP edge (the route wrapper and the idempotency
middleware use them): bad input becomes problem+json."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any, TypeVar

from aiohttp import web
from darkroom_kit.clock import now_ms
from darkroom_kit.lease import Lease
from darkroom_kit.logs import bind
from darkroom_kit.mongo import MONGO_DB
from darkroom_kit.problems import FieldError, Problem
from pydantic import BaseModel, ValidationError

from darkroom_ingest.errors import BODY_TIMEOUT
from darkroom_ingest.settings import IngestSettings
from darkroom_ingest.stores import TokenStore
from darkroom_ingest.tokens import Principal, hash_token

M = TypeVar("M", bound=BaseModel)

SETTINGS: web.AppKey[IngestSettings] = web.AppKey("settings", IngestSettings)
PRINCIPAL: web.RequestKey[Principal] = web.RequestKey("principal", Principal)
# The lease that holds a write's Idempotency-Key (its ``doc_id``: the key scoped to its token)
# while the request runs. What the write stores carries that key, so a repeat after a crash finds
# what the first attempt already stored.
IDEMPOTENCY_LEASE: web.RequestKey[Lease] = web.RequestKey("idempotency_lease", Lease)
# Set on each declared route's aiohttp handler: how its body is read ("json" bodies are read
# whole; the others are streamed by their handler and must not be read before it).
BODY_KIND_ATTR = "darkroom_body_kind"


async def body_pieces(request: web.Request) -> AsyncIterator[bytes]:
    """The request's body as it arrives, given up (408) once nothing came for
    ``body_idle_timeout_seconds``: aiohttp has no read timeout of its own."""
    idle = request.app[SETTINGS].body_idle_timeout_seconds
    pieces = request.content.iter_any().__aiter__()
    while True:
        try:
            async with asyncio.timeout(idle):
                piece = await anext(pieces)
        except StopAsyncIteration:
            return
        except TimeoutError:
            raise BODY_TIMEOUT.error(
                f"Nothing arrived for {idle:g} s; nothing of it was kept. Send it again."
            ) from None
        yield piece


def _pointer(loc: tuple[int | str, ...]) -> str:
    return "/" + "/".join(str(p) for p in loc) if loc else ""


def validation_problem(exc: ValidationError, *, in_query: bool = False) -> Problem:
    errors = []
    for err in exc.errors(include_url=False):
        loc = tuple(err["loc"])
        where = str(loc[0]) if in_query and loc else _pointer(loc)
        errors.append(FieldError(where, err["msg"], err["type"]))
    return Problem(
        422,
        "validation_failed",
        "The request is not valid",
        "See errors for each field that needs a change.",
        errors=errors,
    )


async def parse_json(request: web.Request, model: type[M]) -> M:
    if request.content_type not in ("application/json", "") and not request.content_type.endswith(
        "+json"
    ):
        raise Problem(
            415,
            "unsupported_media_type",
            "Send JSON",
            f"Content-Type {request.content_type!r} is not application/json.",
        )
    limit = request.app[SETTINGS].max_json_bytes
    if request.content_length is not None and request.content_length > limit:
        raise Problem(
            413,
            "body_too_large",
            "Request body too large",
            f"JSON bodies are limited to {limit} bytes.",
        )
    # read() caches the body (the idempotency check may have read it first) and enforces the
    # app's client_max_size, which is max_json_bytes, for bodies sent without a length.
    raw = await request.read()
    try:
        data: Any = json.loads(raw or b"null")
    except (ValueError, UnicodeDecodeError) as exc:
        # ValueError: also an integer literal past Python's digit limit (4300), not only bad JSON.
        raise Problem(400, "malformed_json", "The body is not valid JSON", str(exc)) from None
    except RecursionError:
        raise Problem(
            400, "malformed_json", "The body is not valid JSON", "It is nested too deeply."
        ) from None
    if not isinstance(data, dict):
        raise Problem(
            400,
            "malformed_json",
            "The body must be a JSON object",
            'Send a JSON object, such as {"name": ...}.',
        )
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise validation_problem(exc) from None


def parse_query(request: web.Request, model: type[M]) -> M:
    try:
        return model.model_validate(dict(request.query))
    except ValidationError as exc:
        raise validation_problem(exc, in_query=True) from None


def bearer_token(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return request.headers.get("X-Auth-Token") or None


async def authenticate(request: web.Request) -> Principal:
    if PRINCIPAL in request:
        return request[PRINCIPAL]
    token = bearer_token(request)
    if token is None:
        raise Problem(
            401,
            "unauthenticated",
            "Authentication required",
            "Send a token as 'Authorization: Bearer <token>' or 'X-Auth-Token'.",
            headers={"WWW-Authenticate": 'Bearer realm="darkroom"'},
        )
    stored = await TokenStore(request.app[MONGO_DB]).by_hash(hash_token(token))
    if stored is None:
        raise Problem(
            401,
            "invalid_token",
            "The token is not valid",
            "The token is unknown or was revoked.",
            headers={"WWW-Authenticate": 'Bearer realm="darkroom", error="invalid_token"'},
        )
    if stored.expires_ms is not None and stored.expires_ms <= now_ms():
        raise Problem(
            401,
            "token_expired",
            "The token has expired",
            "This link or token is no longer valid; ask its owner for a new one.",
            headers={"WWW-Authenticate": 'Bearer realm="darkroom", error="invalid_token"'},
        )
    principal = Principal(
        token_id=stored.id,
        name=stored.name,
        scopes=list(stored.scopes),
        event_id=stored.event_id,
        created_ms=stored.created_ms,
        guest=stored.guest,
        max_files=stored.max_files,
        max_bytes=stored.max_bytes,
    )
    request[PRINCIPAL] = principal
    # The token's id (never the token) on every line logged for the rest of the request.
    bind(token_id=stored.id)
    return principal
