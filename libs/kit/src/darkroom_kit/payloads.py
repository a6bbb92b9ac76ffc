"""The ``data`` of every message type, as pydantic models: what a consumer validates before its
handler runs (a message that does not validate is dead-lettered at once, see
:class:`darkroom_kit.messaging.Consumer`), and what the event catalogue documents.

Types are checked strictly (an id is a string, a size an integer, a flag a boolean: nothing is
coerced), because a value of the wrong type can only come from a broken or foreign producer.

Required: each payload's own fields, and of the photo, event or endpoint it carries only the id
(see :class:`Photo` for why); every other field, when it is there, must have its type.

Unknown fields: the public payloads (photos, events, endpoints) allow them. Those payloads grow
(the photo's public fields have grown several times), and during a rolling deploy a consumer
still on the older version must pass a newer producer's message on, not dead-letter it; the
extra fields are kept, so a payload re-serialised from its model loses nothing. Commands say
per model.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from darkroom_kit import records

PhotoKind = Literal["image", "video"]
PhotoStatus = Literal["uploaded", "processed", "failed", "deleting"]
EventStatus = Literal["active", "archived"]


class Payload(BaseModel):
    """A message's data, or a part of it: strict types, unknown fields kept."""

    model_config = ConfigDict(strict=True, extra="allow", frozen=True)


# ---- parts ---------------------------------------------------------------------------------


class VariantSize(Payload):
    """A rendered variant of a photo (``thumbnail``, ``hero``) as the public sees it."""

    width: int | None = Field(default=None, description="Width in pixels.")
    height: int | None = Field(default=None, description="Height in pixels.")
    size: int | None = Field(default=None, description="Size in bytes.")


class Feedback(Payload):
    """Guest feedback on a photo (all zero until guest feedback exists)."""

    likes: int | None = Field(default=None, description="How many guests liked the photo.")
    average_rating: float | None = Field(default=None, description="The guests' mean rating.")
    comment_count: int | None = Field(default=None, description="How many comments it has.")


class Photo(Payload):
    """A photo or video as the public sees it, the same fields as the API's photo (darkroom
    sends every one of them: ``records.photo_public``).

    Only ``id`` is required of a message: it is all the consumers need (thumbnailing reads the
    record by it; the fan-out filters on ``event_id`` when there is one), fields were added over
    time (a message written before them may still wait in an outbox), and tools and tests
    announce photos with a few fields. Every field that is there must have its type."""

    id: str = Field(min_length=1, description="The photo's id.")
    event_id: str | None = Field(
        default=None, min_length=1, description="The event the photo belongs to."
    )
    filename: str | None = Field(
        default=None, description="Its file name within the event (unique per event)."
    )
    original_filename: str | None = Field(default=None, description="The name as uploaded.")
    content_type: str | None = Field(
        default=None, description="The media type sniffed from its bytes."
    )
    kind: PhotoKind | None = Field(
        default=None, description="An image, or a video (with a poster frame)."
    )
    size: int | None = Field(default=None, ge=0, description="Size of the original in bytes.")
    sha256: str | None = Field(default=None, description="Hex SHA-256 of the original.")
    width: int | None = Field(default=None, description="Width in pixels, once known.")
    height: int | None = Field(default=None, description="Height in pixels, once known.")
    captured_at: str | None = Field(
        default=None, description="Capture time from its metadata (ISO 8601, UTC), if any."
    )
    uploaded_at: str | None = Field(default=None, description="When it was stored (ISO 8601, UTC).")
    category_id: str | None = Field(
        default=None, description="The event category it is filed under, if any."
    )
    status: PhotoStatus | None = Field(
        default=None,
        description="uploaded (variants pending), processed, failed (see status_reason), or "
        "deleting.",
    )
    status_reason: str | None = Field(
        default=None, description="Why processing failed (a stable code)."
    )
    url: str | None = Field(default=None, description="The original.")
    thumbnail_url: str | None = Field(default=None, description="The thumbnail variant.")
    hero_url: str | None = Field(default=None, description="The hero (large preview) variant.")
    variants: dict[str, VariantSize] | None = Field(
        default=None, description="Rendered variants by name."
    )
    duration_ms: int | None = Field(default=None, description="A video's length.")
    title: str | None = Field(default=None, description="Its title, if set.")
    description: str | None = Field(default=None, description="Its description, if set.")
    rating: int | None = Field(default=None, description="The owner's rating, 1 to 5.")
    keywords: list[str] | None = Field(default=None, description="Keywords, in order.")
    is_hidden: bool | None = Field(default=None, description="Hidden from gallery tokens.")
    feedback: Feedback | None = Field(default=None, description="Guest feedback aggregates.")
    download_count: int | None = Field(
        default=None, description="How often the original was served."
    )


class Category(Payload):
    """A category of an event (photos are filed under one)."""

    id: str = Field(min_length=1, description="The category's id.")
    name: str | None = Field(default=None, description="Its display name.")


class Event(Payload):
    """An event (a wedding, a match, a conference), the same fields as the API's event
    (darkroom sends every one). Only ``id`` is required, for the reasons given at
    :class:`Photo`."""

    id: str = Field(min_length=1, description="The event's id.")
    name: str | None = Field(default=None, description="Its display name.")
    slug: str | None = Field(default=None, description="Its URL slug (in the photos' URLs).")
    photo_cap: int | None = Field(
        default=None, description="How many photos it may hold; null: no cap."
    )
    photo_count: int | None = Field(default=None, description="How many photos it holds.")
    categories: list[Category] | None = Field(default=None, description="Its categories.")
    status: EventStatus | None = Field(default=None, description="active, or archived.")
    created_at: str | None = Field(default=None, description="When it was created (ISO 8601, UTC).")


class Endpoint(Payload):
    """A webhook endpoint, in a notice about its health (darkroom sends every field). Only
    ``id`` is required: the fan-out reads it, so that the notice never goes to the endpoint
    it is about."""

    id: str = Field(min_length=1, description="The endpoint's id.")
    url: str | None = Field(default=None, description="Where it receives deliveries.")
    description: str | None = Field(default=None, description="Its description, if set.")
    enabled: bool | None = Field(default=None, description="Whether it still receives deliveries.")
    failing_since: str | None = Field(
        default=None,
        description="When its current run of failures began (ISO 8601, UTC), if failing.",
    )
    disabled_reason: str | None = Field(
        default=None,
        description="Why it was disabled: gone (410), failing (auto-disable), or manual.",
    )


class VariantObject(Payload):
    """A stored variant in ``photo.processed``."""

    key: str = Field(min_length=1, description="Its storage key.")
    size: int = Field(ge=0, description="Its size in bytes.")


# ---- public events -------------------------------------------------------------------------


class PhotoUploaded(Payload):
    """``photo.uploaded``: a photo or video was stored. Thumbnailing renders its variants;
    webhook endpoints hear about it."""

    photo: Photo = Field(description="The photo, status uploaded.")
    original_key: str | None = Field(
        default=None, description="The original's storage key (internal; do not rely on it)."
    )


class PhotoProcessed(Payload):
    """``photo.processed``: thumbnail and hero are ready; the photo has its dimensions."""

    photo: Photo = Field(description="The photo, status processed.")
    variants: dict[str, VariantObject] = Field(description="The stored variants by name.")


class PhotoDeleted(Payload):
    """``photo.deleted``: a photo, its variants and its record were deleted."""

    photo: Photo = Field(description="The photo as it was before the deletion.")


class PhotoRepaired(Payload):
    """``photo.repaired``: missing dimensions (or capture date) were re-read from the file."""

    photo: Photo = Field(description="The photo with the restored fields.")
    repaired_fields: list[str] = Field(
        min_length=1,
        description="The record fields restored: width, height, duration_ms, captured_at_ms.",
    )


class EventArchived(Payload):
    """``event.archived``: an event was archived. No ``photo.deleted`` follows."""

    event: Event = Field(description="The event, status archived.")


class EndpointNotice(Payload):
    """A webhook endpoint's health changed. Never sent to that endpoint itself."""

    endpoint: Endpoint = Field(description="The endpoint the notice is about.")


class EndpointFailing(EndpointNotice):
    """``endpoint.failing``: a webhook endpoint failed a delivery after succeeding (or for
    the first time); ``endpoint.failing_since`` says since when."""


class EndpointDisabled(EndpointNotice):
    """``endpoint.disabled``: a webhook endpoint was disabled (410 Gone, or only failures for
    the auto-disable period); ``endpoint.disabled_reason`` says which."""


class EndpointRecovered(EndpointNotice):
    """``endpoint.recovered``: a failing webhook endpoint succeeded again."""


# ---- commands ------------------------------------------------------------------------------


class RepairRequested(Payload):
    """``repair.requested``: re-read missing dimensions (and capture dates) from stored files.

    The scope must be said, never implied: ``sweep: true`` (every event; the service's own
    periodic sweep), or ``event_id`` an event, or, within an Operation, ``event_id`` null for
    every event (the API allows that only to tokens that see every event). A message with no
    scope, or with fields this version does not know, is refused rather than read as "repair
    everything": an unknown field may be a narrower scope that would be ignored."""

    model_config = ConfigDict(extra="forbid")

    operation_id: str | None = Field(
        default=None, min_length=1, description="The Operation that reports the progress."
    )
    event_id: str | None = Field(
        default=None, min_length=1, description="The event to repair; null: every event."
    )
    include_capture_date: bool = Field(
        default=False, description="Also restore missing capture dates."
    )
    sweep: bool = Field(default=False, description="The periodic sweep of every event.")

    @model_validator(mode="after")
    def _scope_is_explicit(self) -> Self:
        if self.sweep:
            if self.operation_id is not None or self.event_id is not None:
                raise ValueError("a sweep covers every event: no operation_id or event_id")
        elif self.operation_id is not None:
            if "event_id" not in self.model_fields_set:
                raise ValueError("event_id is required (null for every event)")
        elif self.event_id is None:
            raise ValueError("no scope: give event_id, an operation_id with event_id, or sweep")
        return self


class WebhookAttempt(Payload):
    """``webhook.attempt``: make the next attempt of a delivery (a retry, a resend, a test, or
    a first attempt that a limit held back). Unknown fields are allowed: the delivery record
    holds everything that matters, a hint added later can be ignored safely."""

    delivery_id: str = Field(min_length=1, description="The delivery to attempt.")
    endpoint_id: str | None = Field(
        default=None,
        min_length=1,
        description="Its endpoint, so limits are checked before anything is read (commands "
        "from before it was added are still accepted: the delivery names it).",
    )


class WebhookRecover(Payload):
    """``webhook.recover``: send an endpoint's failed deliveries in a time range again. The
    Operation holds the parameters; unknown fields are allowed for the same reason."""

    operation_id: str = Field(min_length=1, description="The Operation to carry out.")


PAYLOADS: dict[str, type[BaseModel]] = {
    records.PHOTO_UPLOADED: PhotoUploaded,
    records.PHOTO_PROCESSED: PhotoProcessed,
    records.PHOTO_DELETED: PhotoDeleted,
    records.PHOTO_REPAIRED: PhotoRepaired,
    records.EVENT_ARCHIVED: EventArchived,
    records.ENDPOINT_FAILING: EndpointFailing,
    records.ENDPOINT_DISABLED: EndpointDisabled,
    records.ENDPOINT_RECOVERED: EndpointRecovered,
    records.REPAIR_REQUESTED: RepairRequested,
    records.WEBHOOK_ATTEMPT: WebhookAttempt,
    records.WEBHOOK_RECOVER: WebhookRecover,
}
"""Every message type and the model of its ``data``: the public events (the webhook event
catalogue, :data:`records.PUBLIC_EVENT_TYPES`) and the commands."""


def payloads_for(types: Iterable[str]) -> dict[str, type[BaseModel]]:
    """The models of ``types`` (a queue's routing keys); a type without a model is an error at
    start, not a queue that dead-letters everything."""
    types = list(types)
    unknown = [t for t in types if t not in PAYLOADS]
    if unknown:
        raise KeyError(f"no payload model for message types {unknown}")
    return {t: PAYLOADS[t] for t in types}
