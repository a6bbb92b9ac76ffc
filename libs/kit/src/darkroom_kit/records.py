"""The shared record and message vocabulary: message types, object keys and the public view of a
photo (the same in API answers and webhook payloads)."""

from __future__ import annotations

from typing import Any

from darkroom_kit.stored.photos import PhotoRecord
from darkroom_kit.views import PhotoView

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
# Sent by upload-ingest, carried out by metadata-repair (it reads stored files already).
ARCHIVE_REQUESTED = "archive.requested"
WEBHOOK_ATTEMPT = "webhook.attempt"
WEBHOOK_RECOVER = "webhook.recover"
# Sent by upload-ingest, carried out by webhook-dispatch (the one writer of deliveries).
WEBHOOK_RESEND = "webhook.resend"
WEBHOOK_SEND_TEST = "webhook.send_test"
# The event type of a test send's delivery (not a public event: nobody subscribes to it).
WEBHOOK_TEST = "webhook.test"
# A storage server's bucket notification (MinIO's AMQP target publishes it; not an envelope
# and not darkroom's own type): upload-ingest's consumer wraps each in an envelope of this type.
BUCKET_NOTIFICATION = "s3.bucket_notification"


def attempt_data(delivery_id: str, endpoint_id: str) -> dict[str, Any]:
    """The data of a ``webhook.attempt`` command: the endpoint lets webhook-dispatch check its
    limits before it reads anything."""
    return {"delivery_id": delivery_id, "endpoint_id": endpoint_id}


# Collections and their one writer.
EVENTS = "events"  # upload-ingest
PHOTOS = "photos"  # upload-ingest; thumbnailing and metadata-repair $set the fields they own
TOKENS = "tokens"  # upload-ingest (CLI)
# upload-ingest; webhook-dispatch $sets the health fields (failing_since_ms, enabled,
# disabled_reason, disabled_ms) with the notice in its own outbox
WEBHOOK_ENDPOINTS = "webhook_endpoints"
WEBHOOK_DELIVERIES = "webhook_deliveries"  # webhook-dispatch
IDEMPOTENCY = "idempotency_keys"  # upload-ingest
OPERATIONS = "operations"  # upload-ingest creates; metadata-repair, webhook-dispatch progress


def original_key(event_id: str, photo_id: str) -> str:
    return f"events/{event_id}/originals/{photo_id}"


def archive_key(event_id: str, operation_id: str) -> str:
    """Where an event's ZIP archive is written: outside ``events/``, so the orphan sweep of
    photo objects never takes it for one."""
    return f"archives/{event_id}/{operation_id}.zip"


def variant_key(event_id: str, photo_id: str, variant: str, ext: str = "jpg") -> str:
    return f"events/{event_id}/{variant}/{photo_id}.{ext}"


def piece_key(event_id: str, photo_id: str, name: str) -> str:
    """A temporary object of an unfinished upload (a tus upload's piece under S3's part minimum,
    a partial upload's bytes): the upload record names it while it lives."""
    return f"events/{event_id}/{PIECES}/{photo_id}.{name}"


# What photo_of_key says an object is.
ORIGINAL = "original"
VARIANT = "variant"
PIECE = "piece"
PIECES = "pieces"


def photo_of_key(key: str) -> tuple[str, str] | None:
    """(photo id, ORIGINAL, VARIANT or PIECE) of a key made by :func:`original_key`,
    :func:`variant_key` or :func:`piece_key`; None for any other key."""
    parts = key.split("/")
    if len(parts) != 4 or parts[0] != "events" or not parts[1] or not parts[2]:
        return None
    if parts[2] == "originals":
        return (parts[3], ORIGINAL) if parts[3] else None
    photo_id, dot, ext = parts[3].rpartition(".")
    if parts[2] == PIECES:
        return (photo_id, PIECE) if photo_id and dot and ext else None
    return (photo_id, VARIANT) if photo_id and dot and ext else None


def photo_object_keys(doc: dict[str, Any]) -> list[str]:
    return PhotoRecord.of(doc).object_keys()


def photo_public(doc: dict[str, Any], base_url: str) -> dict[str, Any]:
    """The public view of a stored photo document, as JSON data (a message's ``photo``)."""
    return PhotoView.of_document(doc, base_url).model_dump(mode="json")
