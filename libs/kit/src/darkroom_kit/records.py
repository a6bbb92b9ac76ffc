"""The shared record and message vocabulary: message types, object keys and the public view of a
photo (the same in API answers and webhook payloads)."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from darkroom_kit.clock import ms_to_iso

# Public facts on the events exchange; webhook endpoints subscribe to these.
PHOTO_UPLOADED = "photo.uploaded"
PHOTO_PROCESSED = "photo.processed"
PHOTO_DELETED = "photo.deleted"
PHOTO_REPAIRED = "photo.repaired"
EVENT_ARCHIVED = "event.archived"
# Endpoint status notices, for an operator's own endpoint (webhook-dispatch emits them).
ENDPOINT_FAILING = "endpoint.failing"
ENDPOINT_DISABLED = "endpoint.disabled"
ENDPOINT_RECOVERED = "endpoint.recovered"
PUBLIC_EVENT_TYPES = (
    PHOTO_UPLOADED,
    PHOTO_PROCESSED,
    PHOTO_DELETED,
    PHOTO_REPAIRED,
    EVENT_ARCHIVED,
    ENDPOINT_FAILING,
    ENDPOINT_DISABLED,
    ENDPOINT_RECOVERED,
)
ENDPOINT_NOTICES = (ENDPOINT_FAILING, ENDPOINT_DISABLED, ENDPOINT_RECOVERED)

EVENT_TYPE_DESCRIPTIONS = {
    PHOTO_UPLOADED: "A photo or video was stored; data.photo has its public fields and URLs.",
    PHOTO_PROCESSED: "Thumbnail and hero are ready; data.photo has dimensions, data.variants "
    "their keys and sizes.",
    PHOTO_DELETED: "A photo, its variants and its record were deleted; data.photo is how it was.",
    PHOTO_REPAIRED: "Missing dimensions or capture date were restored; data.repaired_fields "
    "names them.",
    EVENT_ARCHIVED: "An event was archived; data.event is the event. No photo.deleted follows.",
    ENDPOINT_FAILING: "A webhook endpoint failed a delivery after succeeding (or for the first "
    "time); data.endpoint says which and since when. Never sent to that endpoint itself.",
    ENDPOINT_DISABLED: "A webhook endpoint was disabled (410 Gone, or only failures for the "
    "auto-disable period); data.endpoint has the reason. Never sent to that endpoint itself.",
    ENDPOINT_RECOVERED: "A failing webhook endpoint succeeded again. Never sent to that endpoint "
    "itself.",
}

# Commands.
REPAIR_REQUESTED = "repair.requested"
WEBHOOK_ATTEMPT = "webhook.attempt"
WEBHOOK_RECOVER = "webhook.recover"


def attempt_data(delivery_id: str, endpoint_id: str) -> dict[str, Any]:
    """The data of a ``webhook.attempt`` command: the endpoint lets webhook-dispatch check its
    limits before it reads anything."""
    return {"delivery_id": delivery_id, "endpoint_id": endpoint_id}


# Collections and their one writer.
EVENTS = "events"  # upload-ingest
PHOTOS = "photos"  # upload-ingest; thumbnailing and metadata-repair $set the fields they own
TOKENS = "tokens"  # upload-ingest (CLI)
WEBHOOK_ENDPOINTS = "webhook_endpoints"  # upload-ingest
WEBHOOK_DELIVERIES = "webhook_deliveries"  # webhook-dispatch
WEBHOOK_ATTEMPTS = "webhook_attempts"  # webhook-dispatch
IDEMPOTENCY = "idempotency_keys"  # upload-ingest
OPERATIONS = "operations"  # upload-ingest creates; metadata-repair, webhook-dispatch progress


def original_key(event_id: str, photo_id: str) -> str:
    return f"events/{event_id}/originals/{photo_id}"


def variant_key(event_id: str, photo_id: str, variant: str, ext: str = "jpg") -> str:
    return f"events/{event_id}/{variant}/{photo_id}.{ext}"


# What photo_of_key says an object is.
ORIGINAL = "original"
VARIANT = "variant"


def photo_of_key(key: str) -> tuple[str, str] | None:
    """(photo id, ORIGINAL or VARIANT) of a key made by :func:`original_key` or
    :func:`variant_key`; None for any other key."""
    parts = key.split("/")
    if len(parts) != 4 or parts[0] != "events" or not parts[1] or not parts[2]:
        return None
    if parts[2] == "originals":
        return (parts[3], ORIGINAL) if parts[3] else None
    photo_id, dot, ext = parts[3].rpartition(".")
    return (photo_id, VARIANT) if photo_id and dot and ext else None


def photo_object_keys(doc: dict[str, Any]) -> list[str]:
    keys = [doc["original_key"]]
    keys.extend(v["key"] for v in (doc.get("variants") or {}).values() if v.get("key"))
    return keys


def photo_public(doc: dict[str, Any], base_url: str) -> dict[str, Any]:
    """The public fields of a photo record, with absolute URLs."""
    slug = doc["event_slug"]
    name = quote(doc["filename"], safe="")
    variants = doc.get("variants") or {}
    return {
        "id": doc["_id"],
        "event_id": doc["event_id"],
        "filename": doc["filename"],
        "original_filename": doc.get("original_filename", doc["filename"]),
        "content_type": doc["content_type"],
        "kind": doc.get("kind", "image"),
        "size": doc["size"],
        "sha256": doc["sha256"],
        "width": doc.get("width"),
        "height": doc.get("height"),
        "captured_at": ms_to_iso(doc.get("captured_at_ms")),
        "duration_ms": doc.get("duration_ms"),
        "uploaded_at": ms_to_iso(doc["created_ms"]),
        "category_id": doc.get("category_id"),
        "status": doc["status"],
        "status_reason": doc.get("status_reason"),
        "title": doc.get("title"),
        "description": doc.get("description"),
        "rating": doc.get("rating"),
        "keywords": doc.get("keywords") or [],
        "is_hidden": bool(doc.get("is_hidden", False)),
        # Guest feedback does not exist yet: the aggregates are zero until it does.
        "feedback": {"likes": 0, "average_rating": None, "comment_count": 0},
        "download_count": int(doc.get("download_count", 0)),
        "url": f"{base_url}/photos/{slug}/{name}",
        "thumbnail_url": f"{base_url}/thumbnails/{slug}/{name}",
        "hero_url": f"{base_url}/heroes/{slug}/{name}",
        "variants": {
            k: {"width": v.get("width"), "height": v.get("height"), "size": v.get("size")}
            for k, v in variants.items()
        },
    }
