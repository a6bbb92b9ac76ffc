"""``/v1/webhooks``, their deliveries and ``/v1/webhook-event-types``."""

from __future__ import annotations

from typing import Annotated, Any

from darkroom_kit.records import PUBLIC_EVENT_TYPES
from darkroom_kit.statuses import DeliveryStatus
from pydantic import AwareDatetime, BaseModel, Field, HttpUrl, field_validator

from darkroom_ingest.schemas.common import Page, PageQuery, Strict


def _check_event_type(pattern: str) -> str:
    if pattern == "*":
        return pattern
    if pattern.endswith(".*"):
        prefix = pattern[:-1]
        if any(t.startswith(prefix) for t in PUBLIC_EVENT_TYPES):
            return pattern
    elif pattern in PUBLIC_EVENT_TYPES:
        return pattern
    raise ValueError(
        f"unknown event type {pattern!r}; known: {', '.join(PUBLIC_EVENT_TYPES)}, "
        "a prefix wildcard such as photo.*, or * for all"
    )


def _event_types(value: list[str] | None) -> list[str] | None:
    if value is None:
        return None
    return list(dict.fromkeys(_check_event_type(v.strip()) for v in value))


EventTypes = Annotated[
    list[str],
    Field(
        min_length=1,
        max_length=50,
        description="The event types to receive: names (photo.uploaded), prefix wildcards "
        "(photo.*) or * for all; see GET /v1/webhook-event-types.",
    ),
]
EventIdFilter = Annotated[
    list[Annotated[str, Field(min_length=1, max_length=64)]] | None,
    Field(
        max_length=100,
        description="Only messages about these darkroom events (endpoint notices always pass).",
    ),
]
RateLimit = Annotated[
    int | None,
    Field(ge=1, le=10_000, description="At most this many attempts per second (all replicas)."),
]
MaxConcurrency = Annotated[
    int | None,
    Field(
        ge=1, le=1_000, description="At most this many attempts in flight at once (all replicas)."
    ),
]
Description = Annotated[str | None, Field(max_length=500, description="A note for people.")]


class WebhookCreate(Strict):
    """A new webhook endpoint."""

    model_config = Strict.model_config | {
        "json_schema_extra": {
            "examples": [{"url": "https://hooks.example.com/darkroom", "event_types": ["photo.*"]}]
        }
    }

    url: HttpUrl = Field(description="Where deliveries are POSTed (https, a public address).")
    event_types: EventTypes
    description: Description = None
    event_ids: EventIdFilter = None
    rate_limit: RateLimit = None
    max_concurrency: MaxConcurrency = None

    @field_validator("event_types")
    @classmethod
    def _types(cls, value: list[str] | None) -> list[str] | None:
        return _event_types(value)


class WebhookPatch(Strict):
    """Only the fields sent change; url, event_types and enabled cannot be null."""

    url: HttpUrl | None = Field(default=None, description="A new address.")
    event_types: Annotated[
        list[str] | None, Field(min_length=1, max_length=50, description="New event types.")
    ] = None
    description: Description = None
    enabled: bool | None = Field(
        default=None, description="false stops deliveries; true starts them again afresh."
    )
    event_ids: EventIdFilter = None
    rate_limit: RateLimit = None
    max_concurrency: MaxConcurrency = None

    @field_validator("event_types")
    @classmethod
    def _types(cls, value: list[str] | None) -> list[str] | None:
        return _event_types(value)


class RotateSecret(Strict):
    """How long the old secret keeps signing (an empty body: 24 hours)."""

    grace_period_hours: Annotated[
        float,
        Field(
            ge=0,
            le=24 * 14,
            description="How long the old secret keeps signing (a second signature).",
        ),
    ] = 24


class WebhookOut(BaseModel):
    """A webhook endpoint."""

    id: str = Field(description="The endpoint's id.")
    url: str = Field(description="Where deliveries are POSTed.")
    event_types: list[str] = Field(description="The event types it receives.")
    description: str | None = Field(description="A note for people.")
    enabled: bool = Field(description="Whether it receives deliveries.")
    event_ids: list[str] | None = Field(
        default=None, description="Only messages about these darkroom events, if set."
    )
    rate_limit: int | None = Field(default=None, description="Attempts per second at most.")
    max_concurrency: int | None = Field(default=None, description="Attempts in flight at most.")
    failing_since: str | None = Field(
        default=None, description="Set while deliveries fail; cleared by the next success."
    )
    disabled_reason: str | None = Field(default=None, description="gone_410, failing or manual.")
    created_at: str = Field(description="When it was created (ISO 8601, UTC).")
    secret_rotation_ends_at: str | None = Field(
        default=None, description="Until then deliveries also carry the previous signature."
    )


class WebhookWithSecret(WebhookOut):
    """A webhook endpoint with its signing secret: shown once, when the secret is made."""

    secret: str = Field(description="The signing secret (whsec_...), for Standard Webhooks.")


class EventTypeOut(BaseModel):
    """A webhook event type an endpoint can subscribe to."""

    type: str = Field(description="The event type, such as photo.uploaded.")
    description: str = Field(description="When it is sent and what it carries.")
    schema_: dict[str, Any] = Field(
        alias="schema", description="The JSON schema of the message as delivered."
    )


class Attempt(BaseModel):
    """One attempt to deliver a message."""

    attempt: int = Field(description="Its number, from 1.")
    at: str = Field(description="When it was made (ISO 8601, UTC).")
    status_code: int | None = Field(description="The endpoint's HTTP status, if it answered.")
    error: str | None = Field(description="Why it failed without an answer (timeout, ...).")
    duration_ms: int = Field(description="How long it took.")
    response_headers: dict[str, str] = Field(default={}, description="The answer's headers.")
    response_body: str | None = Field(default=None, description="The answer's body (truncated).")
    response_truncated: bool = Field(default=False, description="Whether the body was cut.")


class DeliveryQuery(PageQuery):
    status: DeliveryStatus | None = Field(default=None, description="Only deliveries in it.")
    event_type: Annotated[
        str | None, Field(max_length=64, description="Only deliveries of this type.")
    ] = None
    since: AwareDatetime | None = Field(default=None, description="Created at or after this.")
    until: AwareDatetime | None = Field(default=None, description="Created before this.")


class DeliveryOut(BaseModel):
    """A message to one endpoint, with every attempt to deliver it."""

    id: str = Field(description="The delivery's id.")
    endpoint_id: str = Field(description="The endpoint it goes to.")
    message_id: str = Field(description="The webhook-id header: the same on every attempt.")
    event_type: str = Field(description="The event type.")
    status: DeliveryStatus = Field(description="pending, succeeded, failed or cancelled.")
    attempt_count: int = Field(description="Attempts made.")
    attempts: list[Attempt] = Field(description="Every attempt, oldest first.")
    created_at: str = Field(description="When it was created (ISO 8601, UTC).")
    last_attempt_at: str | None = Field(description="When it was last attempted.")


class RecoverRequest(Strict):
    """The time range whose failed deliveries are sent again."""

    since: AwareDatetime = Field(description="Deliveries created at or after this time.")
    until: AwareDatetime | None = Field(
        default=None, description="... and before this time (default: now)."
    )


class WebhookPage(Page[WebhookOut]):
    """A page of webhook endpoints."""


class DeliveryPage(Page[DeliveryOut]):
    """A page of deliveries."""


class EventTypePage(Page[EventTypeOut]):
    """The webhook event types, all on one page."""
