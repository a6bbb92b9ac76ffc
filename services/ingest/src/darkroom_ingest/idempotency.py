"""``Idempotency-Key`` on every write: a repeat with the same key and body replays the first
answer; the same key with another body is a 422; a repeat while the first still runs is a 409.

Keys are scoped to the token that sent them. For JSON bodies the fingerprint is the method, path and
the body's bytes. A streamed body (a batch, a chunk) is not read twice, so its fingerprint is the
method, path and Content-Length.
"""

from __future__ import annotations

import base64
import hashlib

from aiohttp import web
from darkroom_kit.errors import ServiceError
from darkroom_kit.httpapp import Handler
from darkroom_kit.mongo import MONGO_DB
from darkroom_kit.problems import Problem, problem_response
from darkroom_kit.statuses import IdempotencyState

from darkroom_ingest.stores import IdempotencyStore
from darkroom_ingest.web_support import (
    BODY_KIND_ATTR,
    IDEMPOTENCY_LEASE,
    SETTINGS,
    authenticate,
)

WRITES = {"POST", "PATCH", "DELETE", "PUT"}
MAX_KEY_LENGTH = 255
# A claim is a lease its request's process renews while the request runs (lock_lease_seconds), so
# a crashed request's key is free within seconds. A claim written before leases existed carries
# only ``started_ms``: its process (the previous version, still draining in a rolling deploy) does
# not renew, so it keeps the old rule: taken over once this old.
STALE_MS = 15 * 60 * 1000


async def _fingerprint(request: web.Request) -> str:
    digest = hashlib.sha256(f"{request.method} {request.path}?{request.query_string}\n".encode())
    # By the route's body, not the request's Content-Type: a chunk sent as application/json
    # must reach its handler whole, not be read (and cut at the JSON size limit) here.
    if getattr(request.match_info.handler, BODY_KIND_ATTR, "json") in ("json", None):
        # JSON handlers parse with request.read(), which caches the body for them.
        digest.update(await request.read())
    else:
        # Streamed bodies (batches, chunks) are not read twice: method, path, type and length.
        digest.update(f"type={request.content_type} length={request.content_length}".encode())
    return base64.urlsafe_b64encode(digest.digest()).decode()


@web.middleware
async def idempotency_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    key = request.headers.get("Idempotency-Key")
    if key is None or request.method not in WRITES:
        return await handler(request)
    if not key or len(key) > MAX_KEY_LENGTH:
        raise Problem(
            400,
            "invalid_idempotency_key",
            "Idempotency-Key is not valid",
            f"Use 1 to {MAX_KEY_LENGTH} characters, such as a UUID.",
        )
    principal = await authenticate(request)
    store = IdempotencyStore(request.app[MONGO_DB])
    scoped = f"{principal.token_id}:{key}"
    fingerprint = await _fingerprint(request)
    ttl_ms = request.app[SETTINGS].idempotency_ttl_hours * 3600 * 1000
    lease = store.lease(scoped, int(request.app[SETTINGS].lock_lease_seconds * 1000))
    existing = await store.begin(scoped, fingerprint, ttl_ms, lease, STALE_MS)
    request[IDEMPOTENCY_LEASE] = lease
    if existing is not None:
        if existing.fingerprint != fingerprint:
            raise Problem(
                422,
                "idempotency_key_reused",
                "Idempotency-Key was used for another request",
                "This key came with a different request; use a new key.",
            )
        if existing.state is IdempotencyState.RUNNING:
            raise Problem(
                409,
                "idempotency_key_in_use",
                "The first request is still running",
                "Retry after it has finished to get its answer.",
                headers={"Retry-After": "1"},
            )
        status, body, content_type = existing.answer()
        return web.Response(
            status=status,
            body=body,
            headers={"Content-Type": content_type, "Idempotent-Replayed": "true"},
        )
    # The lease is renewed only while the handler runs; the final write comes after, so no
    # renewal races it (the lease still has two thirds of its length left then).
    try:
        async with lease:
            response = await handler(request)
    except (Problem, ServiceError) as error:
        problem = error.problem() if isinstance(error, ServiceError) else error
        if problem.status >= 500:
            await store.abandon(lease)
            raise
        response = problem_response(problem, request.path)
    except BaseException:
        # Nothing durable to replay: let the client try again with the same key.
        await store.abandon(lease)
        raise
    if isinstance(response, web.Response) and response.status < 500:
        body = response.body if isinstance(response.body, bytes) else b""
        await store.finish(lease, response.status, body, response.content_type)
    else:
        await store.abandon(lease)
    return response
