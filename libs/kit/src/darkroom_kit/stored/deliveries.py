"""The webhook delivery record (collection ``webhook_deliveries``; webhook-dispatch writes it,
upload-ingest reads it for the delivery log). Every delivery is built by :meth:`DeliveryRecord.new`
and its body by :func:`delivery_body`, so a test send and an event's delivery are encoded alike."""

from __future__ import annotations

import json
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from darkroom_kit.statuses import DELIVERY_FINAL, DeliveryStatus
from darkroom_kit.stored._base import Record

ATTEMPTS = "attempts"  # the field that holds a delivery's attempts, a map by attempt number


# The shape of the bodies below and of their ``data`` (GET /v1/webhook-event-types says what
# each holds). 2: ``id`` and ``schema_version`` added, storage keys gone, signed ``urls`` added.
SCHEMA_VERSION = 2


def delivery_body(event_id: str, event_type: str, timestamp: str, data: dict[str, Any]) -> str:
    """The JSON body a receiver gets (``{"id", "type", "timestamp", "schema_version",
    "data"}``), compact and in UTF-8 (not \\u-escaped): the bytes signed and sent are these, on
    every attempt. ``id`` is the event's (the same for every endpoint; the ``webhook-id``
    header is the delivery's)."""
    return json.dumps(
        {
            "id": event_id,
            "type": event_type,
            "timestamp": timestamp,
            "schema_version": SCHEMA_VERSION,
            "data": data,
        },
        separators=(",", ":"),
        ensure_ascii=False,
    )


class StoredAttempt(BaseModel):
    """One attempt, as logged in its delivery."""

    model_config = ConfigDict(extra="ignore")

    delivery_id: str
    endpoint_id: str
    attempt: int
    at_ms: int
    status_code: int | None = None
    error: str | None = None
    duration_ms: int = 0
    response_headers: dict[str, str] = Field(default_factory=dict)
    response_body: str | None = None
    response_truncated: bool = False


class DeliveryRecord(Record):
    endpoint_id: str
    message_id: str
    event_type: str
    # The body as sent; a list read may leave it out (projection), a dispatcher never does.
    payload: str | None = None
    status: DeliveryStatus
    attempt_count: int = 0
    event_ms: int
    created_ms: int
    # Until when a dispatcher holds it (attempting it, or until its retry is due).
    lease_until_ms: int = 0
    last_attempt_ms: int | None = None
    # A test send: tried once, never retried, says nothing about the endpoint's health.
    single_attempt: bool = False
    attempts: dict[str, StoredAttempt] = Field(default_factory=dict)
    # The recovery Operation that reopened it, if any.
    recovered_by: str | None = None
    # The id of the last webhook.resend command that reopened it.
    last_resend_id: str | None = None

    @classmethod
    def new(
        cls,
        *,
        delivery_id: str,
        endpoint_id: str,
        message_id: str,
        event_type: str,
        body: str,
        event_ms: int,
        now_ms: int,
        lease_until_ms: int = 0,
        single_attempt: bool = False,
    ) -> DeliveryRecord:
        """A new pending delivery, not attempted yet."""
        return cls(
            id=delivery_id,
            endpoint_id=endpoint_id,
            message_id=message_id,
            event_type=event_type,
            payload=body,
            status=DeliveryStatus.PENDING,
            event_ms=event_ms,
            created_ms=now_ms,
            lease_until_ms=lease_until_ms,
            single_attempt=single_attempt,
        )

    def to_document(self) -> dict[str, Any]:
        """As stored. Optional fields that are unset stay out (a delivery names its reopening
        Operation or resend only once it has one)."""
        doc = self.document()
        for name in ("recovered_by", "last_resend_id"):
            if doc.get(name) is None:
                doc.pop(name, None)
        return doc

    @classmethod
    def from_document(cls, doc: dict[str, Any]) -> DeliveryRecord:
        return cls.of(doc)

    @property
    def final(self) -> bool:
        return self.status in DELIVERY_FINAL

    @property
    def body(self) -> bytes:
        if self.payload is None:
            raise ValueError(f"delivery {self.id} was read without its payload")
        return self.payload.encode()

    def attempt_log(self) -> list[StoredAttempt]:
        """Its attempts in order of their number."""
        return [a for _, a in sorted(self.attempts.items(), key=lambda kv: int(kv[0]))]


class DeliveryState(Record):
    """What a dispatcher checks of a delivery before it takes it (read with
    :attr:`PROJECTION`, without the payload and the attempts)."""

    endpoint_id: str
    status: DeliveryStatus
    lease_until_ms: int = 0
    last_resend_id: str | None = None

    PROJECTION: ClassVar[dict[str, int]] = {
        "endpoint_id": 1,
        "status": 1,
        "lease_until_ms": 1,
        "last_resend_id": 1,
    }

    @property
    def final(self) -> bool:
        return self.status in DELIVERY_FINAL
