"""HTTP handlers: parse, call the domain, serialize. Each names the scope it needs."""

from __future__ import annotations

import base64
import json
import secrets
from typing import Any

from aiohttp import web
from darkroom_kit import outbox, records
from darkroom_kit.clock import datetime_to_ms, ms_to_iso, now_ms
from darkroom_kit.ids import new_id
from darkroom_kit.messaging import PUBLISHER, TOPOLOGY, Envelope
from darkroom_kit.mongo import MONGO_DB, Document
from darkroom_kit.outbox import Outbox
from darkroom_kit.problems import FieldError, Problem, not_found
from darkroom_kit.storage import OBJECT_STORE, ObjectNotFound
from prometheus_client import Counter

from darkroom_ingest import models
from darkroom_ingest.chunked import ChunkedUploads, parse_digest_headers, upload_out
from darkroom_ingest.photos import PhotoService, ensure_accepts_uploads
from darkroom_ingest.stores import Conflict, EventStore, WebhookStore
from darkroom_ingest.tokens import Principal, Scope, effective_scopes
from darkroom_ingest.uploads import BatchReceiver, batch_too_large
from darkroom_ingest.web_support import (
    IDEMPOTENCY_LEASE,
    SETTINGS,
    authenticate,
    json_response,
    page_response,
    parse_json,
    parse_query,
    poll_until,
    require,
)

PHOTO_SERVICE: web.AppKey[PhotoService] = web.AppKey("photo_service", PhotoService)
CHUNKED: web.AppKey[ChunkedUploads] = web.AppKey("chunked_uploads", ChunkedUploads)
UPLOAD_BYTES: web.AppKey[Counter] = web.AppKey("upload_bytes_counter", Counter)


# ---- me -------------------------------------------------------------------------------------


async def get_me(request: web.Request) -> web.Response:
    principal = await authenticate(request)
    return json_response(
        models.MeOut(
            id=principal.token_id,
            name=principal.name,
            scopes=principal.scopes,
            effective_scopes=sorted(effective_scopes(principal.scopes)),
            event_id=principal.event_id,
            created_at=ms_to_iso(principal.created_ms) or "",
        ).model_dump()
    )


# ---- events ---------------------------------------------------------------------------------


def event_out(doc: Document) -> dict[str, Any]:
    return models.EventOut(
        id=doc["_id"],
        name=doc["name"],
        slug=doc["slug"],
        photo_cap=doc.get("photo_cap"),
        photo_count=doc.get("photo_count", 0),
        categories=[models.Category(**c) for c in doc.get("categories", [])],
        status=doc.get("status", "active"),
        created_at=ms_to_iso(doc["created_ms"]) or "",
    ).model_dump()


def _visible_event(principal: Principal, event_id: str) -> None:
    if principal.event_id is not None and principal.event_id != event_id:
        raise not_found("event", event_id)


async def load_event(request: web.Request, principal: Principal) -> Document:
    event_id = request.match_info["event_id"]
    _visible_event(principal, event_id)
    event = await EventStore(request.app[MONGO_DB]).get(event_id)
    if event is None:
        raise not_found("event", event_id)
    return event


async def create_event(request: web.Request) -> web.Response:
    await require(request, Scope.EVENTS_WRITE)
    body = await parse_json(request, models.EventCreate)
    doc: Document = {
        "_id": new_id("ev"),
        "name": body.name,
        "slug": body.slug,
        "photo_cap": body.photo_cap,
        "photo_count": 0,
        "status": "active",
        "created_ms": now_ms(),
        "categories": [{"id": new_id("cat"), "name": c.name} for c in body.categories],
    }
    try:
        await EventStore(request.app[MONGO_DB]).create(doc)
    except Conflict:
        raise Problem(
            409,
            "slug_taken",
            "The slug is taken",
            f"Another event uses the slug {body.slug!r}.",
            errors=[FieldError("/slug", "choose another slug", "slug_taken")],
        ) from None
    return json_response(
        event_out(doc), status=201, headers={"Location": f"/v1/events/{doc['_id']}"}
    )


async def list_events(request: web.Request) -> web.Response:
    principal = await require(request, Scope.EVENTS_READ)
    query = parse_query(request, models.EventListQuery)
    docs, total = await EventStore(request.app[MONGO_DB]).page(
        query.limit, query.offset, slug=query.slug, event_id=principal.event_id
    )
    return page_response([event_out(d) for d in docs], total, query)


async def get_event(request: web.Request) -> web.Response:
    principal = await require(request, Scope.EVENTS_READ)
    return json_response(event_out(await load_event(request, principal)))


async def patch_event(request: web.Request) -> web.Response:
    principal = await require(request, Scope.EVENTS_WRITE)
    event = await load_event(request, principal)
    body = await parse_json(request, models.EventPatch)
    fields = {name: getattr(body, name) for name in body.model_fields_set}
    if "name" in fields and fields["name"] is None:
        raise Problem(
            422,
            "validation_failed",
            "The request is not valid",
            errors=[FieldError("/name", "an event needs a name", "required")],
        )
    if not fields:
        return json_response(event_out(event))
    updated = await EventStore(request.app[MONGO_DB]).patch(event["_id"], fields)
    if updated is None:
        current = await EventStore(request.app[MONGO_DB]).get(event["_id"])
        count = (current or event).get("photo_count", 0)
        raise Problem(
            409,
            "photo_cap_below_count",
            "The cap is below the photos held",
            f"The event holds {count} photos; a cap must be at least that.",
            errors=[FieldError("/photo_cap", f"at least {count}", "too_small")],
        )
    return json_response(event_out(updated))


async def archive_event(request: web.Request) -> web.Response:
    """Archive: no new uploads, its photos stay; event.archived is announced once."""
    principal = await require(request, Scope.EVENTS_WRITE)
    event = await load_event(request, principal)
    settings = request.app[SETTINGS]
    store = EventStore(request.app[MONGO_DB])
    topology = request.app[TOPOLOGY]

    def message(doc: Document) -> Envelope:
        return Envelope.new(records.EVENT_ARCHIVED, {"event": event_out(doc)})

    archived = await store.archive(event["_id"], message, topology.events, settings.outbox_grace_ms)
    if archived is None:  # already archived: the same answer, nothing announced twice
        current = await store.get(event["_id"])
        return json_response(event_out(current or event))
    await Outbox(request.app[PUBLISHER]).flush(store.col, event["_id"], outbox.pending_of(archived))
    return json_response(event_out(archived))


# ---- photos ---------------------------------------------------------------------------------


def photo_out(request: web.Request, doc: Document) -> dict[str, Any]:
    return records.photo_public(doc, request.app[SETTINGS].public_base_url)


async def upload_batch(request: web.Request) -> web.Response:
    principal = await require(request, Scope.PHOTOS_WRITE)
    event = await load_event(request, principal)
    settings = request.app[SETTINGS]
    if not request.content_type.startswith("multipart/form-data"):
        raise Problem(
            415,
            "unsupported_media_type",
            "Send multipart/form-data",
            "Upload files as multipart/form-data parts named 'photos'.",
        )
    if request.content_length is not None and request.content_length > settings.max_batch_bytes:
        raise batch_too_large(settings.max_batch_bytes)
    ensure_accepts_uploads(event)
    receiver = BatchReceiver(
        request.app[OBJECT_STORE], settings, event["_id"], request.app[UPLOAD_BYTES]
    )
    try:
        reader = await request.multipart()
    except (ValueError, AssertionError) as exc:
        raise Problem(
            400, "malformed_multipart", "The multipart body is not valid", str(exc)
        ) from None
    batch = await receiver.receive(reader)
    category_ids = {c["id"] for c in event.get("categories", [])}
    if batch.category_id is not None and batch.category_id not in category_ids:
        await receiver.discard(batch.stored)
        raise Problem(
            422,
            "unknown_category",
            "Unknown category",
            errors=[
                FieldError("category_id", "not one of the event's category ids", "unknown_category")
            ],
        )
    if not batch.stored:
        raise Problem(
            400,
            "no_valid_files",
            "No file of the batch could be stored",
            "See errors for why each file was skipped."
            if batch.skipped
            else "The request has no file parts; send files in the 'photos' field.",
            errors=[
                FieldError(s.field, f"{s.filename}: {s.detail}", s.code) for s in batch.skipped
            ],
            extra={"skipped": [s.as_dict() for s in batch.skipped]},
        )
    lease = request.get(IDEMPOTENCY_LEASE)
    if lease is not None and not await lease.confirm():
        # Another request with this key took over while this one's body arrived (this one's
        # renewals failed for longer than the lease): only one of them may store the files.
        await receiver.discard(batch.stored)
        raise Problem(
            409,
            "idempotency_key_in_use",
            "Another request with this key took over",
            "This request lost its hold on the Idempotency-Key and kept nothing; ask again "
            "with the same key for the answer of the one that took over.",
            headers={"Retry-After": "1"},
        )
    docs = await request.app[PHOTO_SERVICE].commit_batch(
        event,
        batch.stored,
        batch.category_id,
        request_key=str(lease.doc_id) if lease is not None else None,
    )
    return json_response(
        {
            "uploaded": [photo_out(request, d) for d in docs],
            "skipped": [s.as_dict() for s in batch.skipped],
        },
        status=201,
    )


async def list_photos(request: web.Request) -> web.Response:
    principal = await require(request, Scope.PHOTOS_READ)
    event = await load_event(request, principal)
    query = parse_query(request, models.PhotoListQuery)
    is_hidden = query.is_hidden
    if principal.event_id is not None:
        if is_hidden:  # a gallery token never sees hidden photos
            return page_response([], 0, query)
        is_hidden = False
    docs, total = await request.app[PHOTO_SERVICE].photos.page(
        event["_id"],
        query.limit,
        query.offset,
        category_id=query.category_id,
        is_hidden=is_hidden,
        sort=query.sort,
    )
    return page_response([photo_out(request, d) for d in docs], total, query)


async def _load_photo(request: web.Request, principal: Principal) -> Document:
    photo_id = request.match_info["photo_id"]
    doc = await request.app[PHOTO_SERVICE].photos.get(photo_id)
    if doc is None or not _visible(principal, doc):
        raise not_found("photo", photo_id)
    return doc


def _visible(principal: Principal, photo: Document) -> bool:
    """A gallery token (bound to one event) sees that event's photos, never hidden ones."""
    if principal.event_id is None:
        return True
    return photo["event_id"] == principal.event_id and not photo.get("is_hidden", False)


async def patch_photo(request: web.Request) -> web.Response:
    principal = await require(request, Scope.PHOTOS_WRITE)
    doc = await _load_photo(request, principal)
    body = await parse_json(request, models.PhotoPatch)
    # Only the fields sent change; an explicit null clears one.
    fields = {name: getattr(body, name) for name in body.model_fields_set}
    if fields.get("category_id") is not None:
        event = await EventStore(request.app[MONGO_DB]).get(doc["event_id"])
        if fields["category_id"] not in {c["id"] for c in (event or {}).get("categories", [])}:
            raise Problem(
                422,
                "unknown_category",
                "Unknown category",
                errors=[
                    FieldError(
                        "/category_id", "not one of the event's category ids", "unknown_category"
                    )
                ],
            )
    if "is_hidden" in fields and fields["is_hidden"] is None:
        fields["is_hidden"] = False
    updated = await request.app[PHOTO_SERVICE].photos.patch(doc["_id"], fields) if fields else doc
    if updated is None:
        raise not_found("photo", doc["_id"])
    return json_response(photo_out(request, updated))


async def bulk_delete_photos(request: web.Request) -> web.Response:
    principal = await require(request, Scope.PHOTOS_WRITE)
    body = await parse_json(request, models.BulkDelete)
    service = request.app[PHOTO_SERVICE]
    deleted: list[str] = []
    failed: list[dict[str, str]] = []
    for photo_id in dict.fromkeys(body.photo_ids):
        doc = await service.photos.get(photo_id)
        if doc is None or not _visible(principal, doc) or not await service.delete(doc):
            failed.append({"id": photo_id, "code": "photo_not_found"})
        else:
            deleted.append(photo_id)
    return json_response({"deleted": deleted, "failed": failed})


async def get_photo(request: web.Request) -> web.Response:
    principal = await require(request, Scope.PHOTOS_READ)
    return json_response(photo_out(request, await _load_photo(request, principal)))


async def delete_photo(request: web.Request) -> web.Response:
    principal = await require(request, Scope.PHOTOS_WRITE)
    doc = await _load_photo(request, principal)
    if not await request.app[PHOTO_SERVICE].delete(doc):
        raise not_found("photo", doc["_id"])
    return web.Response(status=204)


# ---- serving --------------------------------------------------------------------------------


async def _serve(request: web.Request, variant: str | None) -> web.StreamResponse:
    principal = await require(request, Scope.PHOTOS_READ)
    slug, filename = request.match_info["slug"], request.match_info["filename"]
    event = await EventStore(request.app[MONGO_DB]).by_slug(slug)
    if event is None or (principal.event_id is not None and principal.event_id != event["_id"]):
        raise not_found("photo", f"{slug}/{filename}")
    photo = await request.app[PHOTO_SERVICE].photos.by_name(event["_id"], filename)
    if photo is None or not _visible(principal, photo):
        raise not_found("photo", f"{slug}/{filename}")
    if variant is None:
        # An original never changes under its photo id, so the id is a valid ETag without a hash.
        key, content_type = photo["original_key"], photo["content_type"]
        etag = photo.get("sha256") or photo["_id"]
    else:
        info = (photo.get("variants") or {}).get(variant)
        if info is None:
            if photo["status"] == "failed":
                raise Problem(
                    404,
                    "variant_unavailable",
                    f"No {variant} for this photo",
                    f"Processing failed: {photo.get('status_reason')}.",
                )
            raise Problem(
                404,
                f"{variant}_processing",
                f"The {variant} is not ready yet",
                "It is being made; try again in a moment.",
                headers={"Retry-After": "1"},
            )
        key, etag, content_type = info["key"], info["etag"], info["content_type"]
    quoted = f'"{etag}"'
    headers = {
        "ETag": quoted,
        "Cache-Control": "private, max-age=3600",
        "X-Content-Type-Options": "nosniff",
    }
    if quoted in request.headers.get("If-None-Match", ""):
        return web.Response(status=304, headers=headers)
    try:
        async with request.app[OBJECT_STORE].open_stream(key) as (obj, chunks):
            response = web.StreamResponse(headers=headers)
            response.content_type = content_type
            response.content_length = obj.size
            await response.prepare(request)
            async for chunk in chunks:
                await response.write(chunk)
            await response.write_eof()
    except ObjectNotFound:
        raise not_found("photo", f"{slug}/{filename}") from None
    if variant is None:
        await request.app[PHOTO_SERVICE].photos.count_download(photo["_id"])
    return response


async def serve_original(request: web.Request) -> web.StreamResponse:
    return await _serve(request, None)


async def serve_thumbnail(request: web.Request) -> web.StreamResponse:
    return await _serve(request, "thumbnail")


async def serve_hero(request: web.Request) -> web.StreamResponse:
    return await _serve(request, "hero")


# ---- chunked uploads -------------------------------------------------------------------------


def _upload_out(request: web.Request, doc: Document) -> dict[str, Any]:
    return upload_out(doc, request.app[SETTINGS].public_base_url)


async def _load_upload(
    request: web.Request, principal: Principal, *, with_parts: bool = True
) -> Document:
    upload_id = request.match_info["upload_id"]
    doc = await request.app[CHUNKED].get(upload_id, with_parts=with_parts)
    if principal.event_id is not None and doc["event_id"] != principal.event_id:
        raise not_found("upload", upload_id)
    return doc


async def create_upload(request: web.Request) -> web.Response:
    principal = await require(request, Scope.PHOTOS_WRITE)
    event = await load_event(request, principal)
    body = await parse_json(request, models.UploadCreate)
    doc = await request.app[CHUNKED].create(
        event, body.filename, body.size, body.mime_type, body.sha256
    )
    return json_response(
        _upload_out(request, doc), status=201, headers={"Location": f"/v1/uploads/{doc['_id']}"}
    )


async def get_upload(request: web.Request) -> web.Response:
    principal = await require(request, Scope.PHOTOS_WRITE)
    return json_response(_upload_out(request, await _load_upload(request, principal)))


async def put_chunk(request: web.Request) -> web.Response:
    principal = await require(request, Scope.PHOTOS_WRITE)
    doc = await _load_upload(request, principal, with_parts=False)
    try:
        index = int(request.match_info["index"])
    except ValueError:
        raise Problem(
            400,
            "invalid_chunk_index",
            "The chunk index is not a number",
            errors=[FieldError("index", "a whole number from 0", "invalid")],
        ) from None
    digests = parse_digest_headers(
        request.headers.get("Content-Digest"), request.headers.get("X-Checksum-CRC32C")
    )
    part = await request.app[CHUNKED].put_chunk(
        doc, index, request.content_length, digests, request.content.iter_any()
    )
    request.app[UPLOAD_BYTES].inc(part["size"])
    return json_response(part)


async def complete_upload(request: web.Request) -> web.Response:
    principal = await require(request, Scope.PHOTOS_WRITE)
    doc = await _load_upload(request, principal)
    photo = await request.app[CHUNKED].complete(doc["_id"])
    return json_response(photo_out(request, photo))


async def delete_upload(request: web.Request) -> web.Response:
    principal = await require(request, Scope.PHOTOS_WRITE)
    doc = await _load_upload(request, principal)
    await request.app[CHUNKED].cancel(doc["_id"])
    return web.Response(status=204)


# ---- webhooks -------------------------------------------------------------------------------


# The test endpoint waits this long for the attempt (the default delivery timeout, and a bit).
TEST_WAIT_SECONDS = 20.0


def new_webhook_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def webhook_out(doc: Document, secret: str | None = None) -> dict[str, Any]:
    now = now_ms()
    ending = [
        s["expires_ms"]
        for s in doc.get("secrets", [])
        if s.get("expires_ms") is not None and s["expires_ms"] > now
    ]
    out = models.WebhookOut(
        id=doc["_id"],
        url=doc["url"],
        event_types=doc["event_types"],
        description=doc.get("description"),
        enabled=doc.get("enabled", True),
        event_ids=doc.get("event_ids"),
        rate_limit=doc.get("rate_limit"),
        max_concurrency=doc.get("max_concurrency"),
        failing_since=ms_to_iso(doc.get("failing_since_ms")),
        disabled_reason=doc.get("disabled_reason"),
        created_at=ms_to_iso(doc["created_ms"]) or "",
        secret=secret,
        secret_rotation_ends_at=ms_to_iso(max(ending)) if ending else None,
    ).model_dump()
    if secret is None:
        del out["secret"]  # a secret is shown only when it is made
    return out


async def create_webhook(request: web.Request) -> web.Response:
    await require(request, Scope.WEBHOOKS_MANAGE)
    body = await parse_json(request, models.WebhookCreate)
    secret = new_webhook_secret()
    doc: Document = {
        "_id": new_id("wh"),
        "url": str(body.url),
        "event_types": body.event_types,
        "description": body.description,
        "event_ids": body.event_ids,
        "rate_limit": body.rate_limit,
        "max_concurrency": body.max_concurrency,
        "enabled": True,
        "failing_since_ms": None,
        "created_ms": now_ms(),
        "secrets": [{"secret": secret, "created_ms": now_ms(), "expires_ms": None}],
    }
    await WebhookStore(request.app[MONGO_DB]).create(doc)
    return json_response(
        webhook_out(doc, secret), status=201, headers={"Location": f"/v1/webhooks/{doc['_id']}"}
    )


async def list_webhooks(request: web.Request) -> web.Response:
    await require(request, Scope.WEBHOOKS_MANAGE)
    query = parse_query(request, models.PageQuery)
    docs, total = await WebhookStore(request.app[MONGO_DB]).page(query.limit, query.offset)
    return page_response([webhook_out(d) for d in docs], total, query)


async def _load_webhook(request: web.Request) -> Document:
    endpoint_id = request.match_info["webhook_id"]
    doc = await WebhookStore(request.app[MONGO_DB]).get(endpoint_id)
    if doc is None:
        raise not_found("webhook", endpoint_id)
    return doc


async def get_webhook(request: web.Request) -> web.Response:
    await require(request, Scope.WEBHOOKS_MANAGE)
    return json_response(webhook_out(await _load_webhook(request)))


async def delete_webhook(request: web.Request) -> web.Response:
    await require(request, Scope.WEBHOOKS_MANAGE)
    doc = await _load_webhook(request)
    await WebhookStore(request.app[MONGO_DB]).delete(doc["_id"])
    return web.Response(status=204)


async def patch_webhook(request: web.Request) -> web.Response:
    await require(request, Scope.WEBHOOKS_MANAGE)
    doc = await _load_webhook(request)
    body = await parse_json(request, models.WebhookPatch)
    fields: Document = {name: getattr(body, name) for name in body.model_fields_set}
    for required in ("url", "event_types", "enabled"):
        if required in fields and fields[required] is None:
            raise Problem(
                422,
                "validation_failed",
                "The request is not valid",
                errors=[FieldError(f"/{required}", "cannot be null", "required")],
            )
    if "url" in fields:
        fields["url"] = str(fields["url"])
    unset: Document = {}
    if fields.get("enabled") is True:
        unset = {"disabled_reason": "", "disabled_ms": ""}
        fields["failing_since_ms"] = None  # a fresh start: the auto-disable clock restarts
    elif fields.get("enabled") is False:
        fields["disabled_reason"] = "manual"
        fields["disabled_ms"] = now_ms()
    updated = await WebhookStore(request.app[MONGO_DB]).patch(doc["_id"], fields, unset)
    if updated is None:
        raise not_found("webhook", doc["_id"])
    return json_response(webhook_out(updated))


async def rotate_webhook_secret(request: web.Request) -> web.Response:
    """A new secret now; the old one keeps signing (a second signature) for the grace period."""
    await require(request, Scope.WEBHOOKS_MANAGE)
    doc = await _load_webhook(request)
    body = (
        await parse_json(request, models.RotateSecret)
        if await request.read()
        else models.RotateSecret()
    )
    now = now_ms()
    grace_ends = now + int(body.grace_period_hours * 3600 * 1000)
    kept = [
        {**s, "expires_ms": min(s["expires_ms"] or grace_ends, grace_ends)}
        for s in doc.get("secrets", [])
        if s.get("expires_ms") is None or s["expires_ms"] > now
    ]
    secret = new_webhook_secret()
    secrets = [s for s in kept if s["expires_ms"] > now] + [
        {"secret": secret, "created_ms": now, "expires_ms": None}
    ]
    updated = await WebhookStore(request.app[MONGO_DB]).patch(doc["_id"], {"secrets": secrets})
    if updated is None:
        raise not_found("webhook", doc["_id"])
    return json_response(webhook_out(updated, secret))


async def list_event_types(request: web.Request) -> web.Response:
    await authenticate(request)
    photo = {"photo": models.PhotoOut.model_json_schema()}
    event = {"event": models.EventOut.model_json_schema()}
    endpoint = {"endpoint": models.EndpointNotice.model_json_schema()}
    items: list[dict[str, Any]] = []
    for name, description in records.EVENT_TYPE_DESCRIPTIONS.items():
        properties = (
            event
            if name == records.EVENT_ARCHIVED
            else endpoint
            if name in records.ENDPOINT_NOTICES
            else photo
        )
        data = {"type": "object", "properties": properties}
        schema = {
            "type": "object",
            "properties": {
                "type": {"const": name},
                "timestamp": {"type": "string", "format": "date-time"},
                "data": data,
            },
            "required": ["type", "timestamp", "data"],
        }
        items.append(
            models.EventTypeOut(type=name, description=description, schema=schema).model_dump(
                by_alias=True
            )
        )
    return json_response({"items": items, "total": len(items), "limit": len(items), "offset": 0})


def delivery_out(doc: Document) -> dict[str, Any]:
    attempts = [
        models.Attempt(
            attempt=a.get("attempt", i + 1),
            at=ms_to_iso(a["at_ms"]) or "",
            status_code=a.get("status_code"),
            error=a.get("error"),
            duration_ms=a.get("duration_ms", 0),
            response_headers=a.get("response_headers") or {},
            response_body=a.get("response_body"),
            response_truncated=bool(a.get("response_truncated", False)),
        )
        for i, a in enumerate(doc.get("attempts", []))
    ]
    return models.DeliveryOut(
        id=doc["_id"],
        endpoint_id=doc["endpoint_id"],
        message_id=doc["message_id"],
        event_type=doc["event_type"],
        status=doc["status"],
        attempt_count=doc.get("attempt_count", len(attempts)),
        attempts=attempts,
        created_at=ms_to_iso(doc["created_ms"]) or "",
        last_attempt_at=ms_to_iso(doc.get("last_attempt_ms")),
    ).model_dump()


async def list_deliveries(request: web.Request) -> web.Response:
    """An endpoint's deliveries, newest first, filtered by status, event type and time range."""
    await require(request, Scope.WEBHOOKS_MANAGE)
    doc = await _load_webhook(request)
    query = parse_query(request, models.DeliveryQuery)
    filters: Document = {}
    if query.status is not None:
        filters["status"] = query.status
    if query.event_type is not None:
        filters["event_type"] = query.event_type
    created: Document = {}
    if query.since is not None:
        created["$gte"] = datetime_to_ms(query.since)
    if query.until is not None:
        created["$lt"] = datetime_to_ms(query.until)
    if created:
        filters["created_ms"] = created
    docs, total = await WebhookStore(request.app[MONGO_DB]).deliveries(
        doc["_id"], query.limit, query.offset, filters
    )
    return page_response([delivery_out(d) for d in docs], total, query)


async def get_delivery(request: web.Request) -> web.Response:
    await require(request, Scope.WEBHOOKS_MANAGE)
    endpoint = await _load_webhook(request)
    delivery_id = request.match_info["delivery_id"]
    doc = await WebhookStore(request.app[MONGO_DB]).delivery(endpoint["_id"], delivery_id)
    if doc is None:
        raise not_found("delivery", delivery_id)
    return json_response(delivery_out(doc))


async def _send_attempt(request: web.Request, delivery_id: str, endpoint_id: str) -> None:
    await request.app[PUBLISHER].publish(
        request.app[TOPOLOGY].commands,
        Envelope.new(records.WEBHOOK_ATTEMPT, records.attempt_data(delivery_id, endpoint_id)),
    )


async def resend_delivery(request: web.Request) -> web.Response:
    """Send a finished delivery again, with the same webhook-id (receivers dedupe on it) and a
    fresh retry schedule; its attempts keep counting in the same log."""
    await require(request, Scope.WEBHOOKS_MANAGE)
    endpoint = await _load_webhook(request)
    delivery_id = request.match_info["delivery_id"]
    store = WebhookStore(request.app[MONGO_DB])
    reopened = await store.reopen(endpoint["_id"], delivery_id)
    if reopened is None:
        current = await store.delivery(endpoint["_id"], delivery_id)
        if current is None:
            raise not_found("delivery", delivery_id)
        raise Problem(
            409,
            "delivery_in_progress",
            "The delivery is still being attempted",
            "A pending delivery is retried on its own schedule; resend it once it is final.",
        )
    try:
        await _send_attempt(request, delivery_id, endpoint["_id"])
    except Exception:
        await store.set_status(delivery_id, "failed")  # not sent: final again, resend later
        raise
    doc = await store.delivery(endpoint["_id"], delivery_id)
    assert doc is not None
    return json_response(delivery_out(doc), status=202)


async def send_test_message(request: web.Request) -> web.Response:
    """Send a signed ``webhook.test`` message to the endpoint now and answer with the attempt
    (or 202 and the pending delivery if the dispatcher has not answered within the timeout)."""
    await require(request, Scope.WEBHOOKS_MANAGE)
    endpoint = await _load_webhook(request)
    message = Envelope.new(
        "webhook.test", {"endpoint": {"id": endpoint["_id"], "url": endpoint["url"]}}
    )
    now = now_ms()
    delivery_id = new_id("msg")
    payload = json.dumps(
        {"type": message.type, "timestamp": message.time, "data": message.data},
        separators=(",", ":"),
    )
    store = WebhookStore(request.app[MONGO_DB])
    await store.create_delivery(
        {
            "_id": delivery_id,
            "endpoint_id": endpoint["_id"],
            "message_id": message.id,
            "event_type": message.type,
            "payload": payload,
            "status": "pending",
            "attempt_count": 0,
            "event_ms": now,
            "created_ms": now,
            "lease_until_ms": 0,
            "last_attempt_ms": None,
            # A test is tried once: no retries of a message nobody subscribed to.
            "single_attempt": True,
        }
    )
    await _send_attempt(request, delivery_id, endpoint["_id"])
    deliveries = request.app[MONGO_DB][records.WEBHOOK_DELIVERIES]
    await poll_until(
        lambda: deliveries.find_one({"_id": delivery_id}, {"status": 1}),
        lambda d: d["status"] != "pending",
        TEST_WAIT_SECONDS,
    )
    doc = await store.delivery(endpoint["_id"], delivery_id)  # with its attempt, read once
    assert doc is not None
    return json_response(delivery_out(doc), status=200 if doc["status"] != "pending" else 202)


# ---- operations -----------------------------------------------------------------------------


def operation_out(doc: Document) -> dict[str, Any]:
    return models.OperationOut(
        id=doc["_id"],
        kind=doc["kind"],
        state=doc["state"],
        created_at=ms_to_iso(doc["created_ms"]) or "",
        updated_at=ms_to_iso(doc.get("updated_ms")),
        progress=doc.get("progress") or {},
        result=doc.get("result"),
    ).model_dump()


OPERATION_FINAL = ("done", "failed")


async def _wait_for_operation(request: web.Request, op_id: str, wait: float) -> Document:
    operations = request.app[MONGO_DB][records.OPERATIONS]
    doc = await poll_until(
        lambda: operations.find_one({"_id": op_id}, {outbox.OUTBOX: 0}),
        lambda d: d["state"] in OPERATION_FINAL,
        wait,
        interval=0.2,
    )
    if doc is None:
        raise not_found("operation", op_id)
    return doc


async def _start_operation(
    request: web.Request, kind: str, params: Document, progress: dict[str, int], command: Envelope
) -> web.Response:
    """Store an Operation with its command in the same write (outbox), publish the command, and
    answer 202 with it, or 200 with the result when it ends within ?wait=N seconds."""
    wait = parse_query(request, models.WaitQuery).wait
    op_id = command.data["operation_id"]
    doc: Document = {
        "_id": op_id,
        "kind": kind,
        "state": "queued",
        "created_ms": now_ms(),
        "params": params,
        "progress": progress,
        "result": None,
        **outbox.fields(
            request.app[TOPOLOGY].commands, [command], request.app[SETTINGS].outbox_grace_ms
        ),
    }
    operations = request.app[MONGO_DB][records.OPERATIONS]
    await operations.insert_one(doc)
    await Outbox(request.app[PUBLISHER]).flush(operations, op_id, outbox.pending_of(doc))
    current = await _wait_for_operation(request, op_id, wait)
    status = 200 if current["state"] in OPERATION_FINAL else 202
    return json_response(
        operation_out(current), status=status, headers={"Location": f"/v1/operations/{op_id}"}
    )


async def repair_dimensions(request: web.Request) -> web.Response:
    """Start a repair of missing dimensions (and capture dates, if asked)."""
    principal = await require(request, Scope.PHOTOS_WRITE)
    body = await parse_json(request, models.RepairRequest)
    event_id = body.event_id or principal.event_id
    if event_id is not None:
        _visible_event(principal, event_id)
        if await EventStore(request.app[MONGO_DB]).get(event_id) is None:
            raise not_found("event", event_id)
    params = {"event_id": event_id, "include_capture_date": body.include_capture_date}
    command = Envelope.new(records.REPAIR_REQUESTED, {"operation_id": new_id("op"), **params})
    progress = {"scanned": 0, "repaired": 0, "failed": 0}
    return await _start_operation(request, "repair_dimensions", params, progress, command)


async def recover_webhook(request: web.Request) -> web.Response:
    """Send every failed delivery of an endpoint created in [since, until) again, each with
    its own webhook-id unchanged and a fresh retry schedule."""
    await require(request, Scope.WEBHOOKS_MANAGE)
    endpoint = await _load_webhook(request)
    body = await parse_json(request, models.RecoverRequest)
    since_ms = datetime_to_ms(body.since)
    until_ms = datetime_to_ms(body.until) if body.until is not None else now_ms()
    if until_ms <= since_ms:
        raise Problem(
            422,
            "validation_failed",
            "The request is not valid",
            errors=[FieldError("/until", "must be after since", "range")],
        )
    params = {"endpoint_id": endpoint["_id"], "since_ms": since_ms, "until_ms": until_ms}
    command = Envelope.new(records.WEBHOOK_RECOVER, {"operation_id": new_id("op")})
    # The total is counted when the recovery starts (the range may still be filling up).
    progress = {"resent": 0}
    return await _start_operation(request, "webhook_recover", params, progress, command)


# Who may read an Operation: whoever may start one of its kind (read side).
OPERATION_SCOPES = {
    "repair_dimensions": Scope.PHOTOS_READ,
    "webhook_recover": Scope.WEBHOOKS_MANAGE,
}


async def get_operation(request: web.Request) -> web.Response:
    await authenticate(request)
    wait = parse_query(request, models.WaitQuery).wait
    op_id = request.match_info["operation_id"]
    # Read once: its kind says who may see it, and without ?wait it is the answer.
    doc = await _wait_for_operation(request, op_id, 0)
    await require(request, OPERATION_SCOPES.get(doc["kind"], Scope.ADMIN))
    if wait and doc["state"] not in OPERATION_FINAL:
        doc = await _wait_for_operation(request, op_id, wait)
    return json_response(operation_out(doc))
