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

import operator
from collections.abc import Iterable
from enum import Enum
from functools import reduce
from types import UnionType
from typing import TYPE_CHECKING, Any, Literal, Self, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, create_model, model_validator

from darkroom_kit import records
from darkroom_kit.views import EventView, PhotoView


class Payload(BaseModel):
    """A message's data, or a part of it: strict types, unknown fields kept."""

    model_config = ConfigDict(strict=True, extra="allow", frozen=True)


def _lenient_type(annotation: Any) -> Any:
    """``annotation`` with every public view in it replaced by its lenient twin, and enums by
    the literal strings they stand for (strict validation takes a string for a literal, not for
    an enum)."""
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        return Literal[tuple(m.value for m in annotation)]
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return lenient(annotation, required=())
    args = get_args(annotation)
    if not args:
        return annotation
    origin = get_origin(annotation)
    converted = tuple(_lenient_type(a) for a in args)
    if origin in (Union, UnionType):
        return reduce(operator.or_, converted)
    if origin is list:
        return list[converted[0]]  # type: ignore[valid-type]
    if origin is dict:
        return dict[converted[0], converted[1]]  # type: ignore[valid-type]
    return annotation


def lenient(view: type[BaseModel], required: tuple[str, ...] = ("id",)) -> type[Payload]:
    """The public view ``view`` as a message part: the same fields, names and descriptions (the
    view is the one definition), but only ``required`` must be there.

    Only the id is required of a message: it is all the consumers need (thumbnailing reads the
    record by it; the fan-out filters on ``event_id`` when there is one), fields were added over
    time (a message written before them may still wait in an outbox), and tools and tests
    announce photos with a few fields. Every field that is there must have its type."""
    fields: dict[str, Any] = {}
    for name, info in view.model_fields.items():
        kind = _lenient_type(info.annotation)
        if name in required:
            fields[name] = (kind, Field(min_length=1, description=info.description))
        else:
            fields[name] = (kind | None, Field(default=None, description=info.description))
    model: type[Payload] = create_model(
        view.__name__.removesuffix("View"),
        __base__=Payload,
        __doc__=view.__doc__,
        __module__=__name__,
        **fields,
    )
    return model


# ---- parts ---------------------------------------------------------------------------------

if TYPE_CHECKING:
    # The lenient twins are made at import; to a type checker they are their id plus fields
    # of any type (the view says which).

    class _Part(Payload):
        id: str

        def __getattr__(self, name: str) -> Any: ...

    class Photo(_Part): ...

    class Event(_Part): ...

else:
    Photo = lenient(PhotoView)
    """A photo or video as a message carries it: :class:`darkroom_kit.views.PhotoView`, which
    darkroom always sends whole, read leniently (see :func:`lenient`)."""

    Event = lenient(EventView)
    """An event as ``event.archived`` carries it: :class:`darkroom_kit.views.EventView`."""


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
        description="Why it was disabled: gone_410 (it answered 410 Gone), failing "
        "(auto-disable), or manual.",
    )


class VariantObject(Payload):
    """A rendered variant in ``photo.processed`` (its file: the photo's ``urls``)."""

    size: int = Field(ge=0, description="Its size in bytes.")
    width: int | None = Field(default=None, description="Width in pixels.")
    height: int | None = Field(default=None, description="Height in pixels.")
    content_type: str | None = Field(default=None, description="What it is (image/jpeg).")


# ---- public events -------------------------------------------------------------------------


class PhotoUploaded(Payload):
    """``photo.uploaded``: a photo or video was stored. Thumbnailing renders its variants;
    webhook endpoints hear about it."""

    photo: Photo = Field(description="The photo, status uploaded.")


class PhotoProcessed(Payload):
    """``photo.processed``: thumbnail and hero are ready; the photo has its dimensions."""

    photo: Photo = Field(description="The photo, status processed.")
    variants: dict[str, VariantObject] = Field(description="The rendered variants by name.")


class PhotoDeleted(Payload):
    """``photo.deleted``: a photo, its variants and its record were deleted."""

    photo: Photo = Field(description="The photo as it was before the deletion.")


class PhotoRepaired(Payload):
    """``photo.repaired``: missing dimensions (or capture date) were re-read from the file."""

    photo: Photo = Field(description="The photo with the restored fields.")
    repaired_fields: list[str] = Field(
        min_length=1,
        description="The fields restored, as the photo names them: width, height, duration_ms, "
        "captured_at.",
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


class ArchiveRequested(Payload):
    """``archive.requested``: write the ZIP archive an Operation describes. The Operation holds
    the selection; unknown fields are allowed (a hint added later can be ignored safely)."""

    operation_id: str = Field(min_length=1, description="The archive Operation to carry out.")


class WebhookAttempt(Payload):
    """``webhook.attempt``: make the next attempt of a delivery (a retry, or a first attempt
    that a limit held back). Unknown fields are allowed: the delivery record holds everything
    that matters, a hint added later can be ignored safely."""

    delivery_id: str = Field(min_length=1, description="The delivery to attempt.")
    endpoint_id: str = Field(
        min_length=1,
        description="Its endpoint, so limits are checked before anything is read.",
    )


class WebhookResend(Payload):
    """``webhook.resend``: send a final delivery again (same webhook-id, a fresh retry
    schedule, its attempts counting on in the same log). webhook-dispatch reopens it once per
    command (the delivery's ``last_resend_id`` becomes this message's id), then attempts it; a
    delivery still pending, or unknown, is left alone (counted and logged)."""

    delivery_id: str = Field(min_length=1, description="The delivery to send again.")
    endpoint_id: str = Field(min_length=1, description="The endpoint it belongs to.")


class WebhookSendTest(Payload):
    """``webhook.send_test``: create a ``webhook.test`` delivery to an endpoint (once per
    ``delivery_id``, however often the command comes) and attempt it once, now."""

    delivery_id: str = Field(
        min_length=1, description="The id of the test delivery (chosen by the sender)."
    )
    endpoint_id: str = Field(min_length=1, description="The endpoint to test.")


class WebhookRecover(Payload):
    """``webhook.recover``: send an endpoint's failed deliveries in a time range again. The
    Operation holds the parameters; unknown fields are allowed for the same reason."""

    operation_id: str = Field(min_length=1, description="The Operation to carry out.")


# ---- foreign messages ----------------------------------------------------------------------


class NotifiedBucket(Payload):
    """The bucket of a bucket notification's record."""

    name: str = Field(min_length=1, description="The bucket's name.")


class NotifiedObject(Payload):
    """The object of a bucket notification's record."""

    key: str = Field(
        min_length=1,
        description="The object's key, URL-encoded as a query string is (MinIO encodes it "
        "with Go's url.QueryEscape: a space is '+', a '/' is %2F).",
    )
    size: int | None = Field(default=None, ge=0, description="Its size (MinIO omits 0).")
    eTag: str | None = Field(default=None, description="Its ETag.")


class NotifiedS3(Payload):
    bucket: NotifiedBucket
    object: NotifiedObject


class NotificationRecord(Payload):
    """One record of a bucket notification, in the layout of S3's event notifications."""

    eventName: str | None = Field(
        default=None, description="What happened, e.g. s3:ObjectCreated:Put."
    )
    s3: NotifiedS3


class BucketNotification(Payload):
    """What MinIO's AMQP notification target publishes for each bucket event (``event.Log``:
    ``{"EventName", "Key": "bucket/key", "Records": [...]}``, one record per message). It is
    not an envelope: upload-ingest's notification consumer wraps it in one of type
    :data:`records.BUCKET_NOTIFICATION` and validates it with this model, so it is not in
    :data:`PAYLOADS` (the catalogue of darkroom's own envelopes). Only what the consumer reads
    is required; MinIO's other fields are kept."""

    EventName: str | None = Field(default=None, description="The event's name.")
    Key: str | None = Field(default=None, description="bucket/key, the key not encoded.")
    Records: list[NotificationRecord] = Field(min_length=1, description="The event's records.")


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
    records.ARCHIVE_REQUESTED: ArchiveRequested,
    records.WEBHOOK_ATTEMPT: WebhookAttempt,
    records.WEBHOOK_RECOVER: WebhookRecover,
    records.WEBHOOK_RESEND: WebhookResend,
    records.WEBHOOK_SEND_TEST: WebhookSendTest,
}
"""Every message type and the model of its ``data``: the public events (the webhook event
catalogue, :data:`records.PUBLIC_EVENT_TYPES`) and the commands."""


def declared(value: Any) -> Any:
    """``value`` (a payload) as JSON with only the fields its models declare, at every level:
    what a webhook receiver gets. Fields a producer added that the models do not know (storage
    keys of messages written by earlier versions, fields of a newer producer) are dropped, so a
    receiver gets exactly what the catalogue documents."""
    if isinstance(value, BaseModel):
        return {name: declared(getattr(value, name)) for name in type(value).model_fields}
    if isinstance(value, dict):
        return {k: declared(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [declared(v) for v in value]
    if isinstance(value, Enum):
        return value.value
    return value


def payloads_for(types: Iterable[str]) -> dict[str, type[BaseModel]]:
    """The models of ``types`` (a queue's routing keys); a type without a model is an error at
    start, not a queue that dead-letters everything."""
    types = list(types)
    unknown = [t for t in types if t not in PAYLOADS]
    if unknown:
        raise KeyError(f"no payload model for message types {unknown}")
    return {t: PAYLOADS[t] for t in types}
