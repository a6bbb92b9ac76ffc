"""The webhook event catalogue: every message a webhook endpoint can receive, generated from the
payload models (:data:`darkroom_kit.payloads.PAYLOADS`), so the catalogue the API lists, the
``webhooks`` section of its OpenAPI document and what consumers validate cannot disagree.

A webhook message is what webhook-dispatch POSTs (``Dispatcher.fan_out``, and the API's test
send): ``{"id": ..., "type": ..., "timestamp": ..., "schema_version": ..., "data": ...}``,
where ``id`` is the event's id (the envelope's), ``timestamp`` the time of the event (the
envelope's ``time``, the same in every attempt) and ``data`` the envelope's data with only the
fields its models declare (:func:`darkroom_kit.payloads.declared`) and signed media ``urls``.
Its description is the payload model's docstring (or a ``description`` it declares in
``json_schema_extra``): one text, in the code, for developers and for the public.
"""

from __future__ import annotations

import copy
import functools
import re
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field, create_model
from pydantic.json_schema import models_json_schema

from darkroom_kit import records
from darkroom_kit.payloads import PAYLOADS, Endpoint, Payload
from darkroom_kit.stored.deliveries import SCHEMA_VERSION

JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


class WebhookTest(Payload):
    """``webhook.test``: a test message an operator sent to this endpoint
    (``POST /v1/webhooks/{webhook_id}/test``). Sent to that endpoint only, whatever it
    subscribes to, and tried once; it cannot be subscribed to."""

    endpoint: Endpoint = Field(description="The endpoint the test was sent to (id and url).")


Model = type[BaseModel]


@dataclass(frozen=True, slots=True)
class EventType:
    """A message type webhook endpoints receive."""

    type: str
    description: str
    payload: Model
    """The model of the message's ``data``."""
    schema: dict[str, Any]
    """JSON Schema (2020-12, self-contained) of the whole message as POSTed."""
    subscribable: bool
    """Whether an endpoint can subscribe to it (``webhook.test`` comes unasked)."""
    message: Model
    """The model of the whole message (its ``timestamp`` a datetime)."""


def delivered_types() -> dict[str, tuple[type[BaseModel], bool]]:
    """Every type an endpoint can receive: its payload model, and whether it is subscribable."""
    kinds: dict[str, tuple[type[BaseModel], bool]] = {
        t: (PAYLOADS[t], True) for t in records.PUBLIC_EVENT_TYPES
    }
    # Not on the events exchange: a test send creates its delivery directly.
    kinds[records.WEBHOOK_TEST] = (WebhookTest, False)
    return kinds


def describe(model: type[BaseModel]) -> str:
    """The public description of a message type: the first paragraph of its payload model's
    description, without the leading ``type``: and with reST literals as Markdown ones."""
    text = model.model_json_schema().get("description")
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"{model.__name__} has no description (a docstring) to publish")
    first = text.strip().split("\n\n")[0]
    first = re.sub(r"^``[^`]+``:\s*", "", first)
    first = re.sub(r":[a-z]+:`~?([^`]+)`", r"`\1`", first)  # :class:`X` -> `X`
    first = first.replace("``", "`")
    first = " ".join(first.split())
    return first[:1].upper() + first[1:]


def _message_model(event_type: str, payload: type[BaseModel], description: str) -> type[BaseModel]:
    name = payload.__name__.removesuffix("Payload") + "Message"
    kind: Any = Literal[event_type]
    version: Any = Literal[SCHEMA_VERSION]
    model: type[BaseModel] = create_model(
        name,
        __doc__=f"The ``{event_type}`` webhook message as POSTed: {description}",
        __module__=__name__,
        id=(
            str,
            Field(
                description="The event's id: the same for every endpoint and attempt (the "
                "webhook-id header is the delivery's)."
            ),
        ),
        type=(kind, Field(description="The message type.")),
        timestamp=(
            datetime,
            Field(
                description="When the event happened (ISO 8601, UTC); the same in every "
                "attempt, so a receiver can order and age messages by it."
            ),
        ),
        schema_version=(
            version,
            Field(
                description="The version of this message's shape. 2: id and schema_version "
                "added, storage keys removed, signed media urls added."
            ),
        ),
        data=(payload, Field(description="The event's data.")),
    )
    return model


@functools.cache
def _catalogue() -> tuple[EventType, ...]:
    found = []
    for name, (payload, subscribable) in delivered_types().items():
        description = describe(payload)
        message = _message_model(name, payload, description)
        schema = {"$schema": JSON_SCHEMA_DIALECT, **message.model_json_schema()}
        found.append(EventType(name, description, payload, schema, subscribable, message))
    return tuple(found)


def event_types() -> list[EventType]:
    """The catalogue: the public event types in their order, then ``webhook.test``. Each call
    gets its own copy of the schemas, free to change."""
    return [replace(e, schema=copy.deepcopy(e.schema)) for e in _catalogue()]


# Standard Webhooks (https://www.standardwebhooks.com), as webhook-dispatch's Sender sends them.
WEBHOOK_HEADERS: tuple[dict[str, Any], ...] = (
    {
        "name": "webhook-id",
        "in": "header",
        "required": True,
        "description": "The delivery's id: the same in every attempt and resend of it; "
        "receivers dedupe on it.",
        "schema": {"type": "string", "pattern": "^msg_[0-9a-z]+$"},
    },
    {
        "name": "webhook-timestamp",
        "in": "header",
        "required": True,
        "description": "When this attempt was signed, in seconds since the Unix epoch; reject "
        "attempts too far from your clock (replays).",
        "schema": {"type": "string", "pattern": "^[0-9]+$"},
    },
    {
        "name": "webhook-signature",
        "in": "header",
        "required": True,
        "description": "Space-separated `v1,<base64 HMAC-SHA256>` signatures of "
        "`{webhook-id}.{webhook-timestamp}.{body}`, one per active secret (two during a secret "
        "rotation); accept the message if any one verifies.",
        "schema": {"type": "string", "pattern": "^v1,[A-Za-z0-9+/=]+( v1,[A-Za-z0-9+/=]+)*$"},
    },
)


def _operation(event: EventType, body_schema: dict[str, Any]) -> dict[str, Any]:
    return {
        "operationId": "webhook_" + re.sub(r"[^A-Za-z0-9]+", "_", event.type),
        "summary": event.type,
        "description": event.description,
        "tags": ["webhooks"],
        "parameters": [dict(h) for h in WEBHOOK_HEADERS],
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": body_schema}},
        },
        "responses": {
            "2XX": {
                "description": "Received. Any 2xx acknowledges the message; the body is kept "
                "(truncated) in the delivery log and otherwise ignored."
            },
            "410": {
                "description": "Gone: the endpoint is disabled and receives nothing more until "
                "it is enabled again."
            },
            "default": {
                "description": "Any other answer, a redirect, or none within the timeout: the "
                "attempt failed and is retried with backoff (after Retry-After, if a 429 or 503 "
                "gives one); webhook.test is tried once."
            },
        },
    }


def openapi_webhooks(
    ref_template: str = "#/components/schemas/{model}",
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The OpenAPI 3.1 ``webhooks`` section (one POST per type an endpoint receives) and the
    component schemas it refers to through ``ref_template``, to merge into ``components.schemas``.

    The component names are the model names (``PhotoUploadedMessage``, ``Photo`` ...): when
    merging, a name the API's own schemas use too must be the same schema."""
    catalogue = _catalogue()
    refs, top = models_json_schema(
        [(e.message, "validation") for e in catalogue], ref_template=ref_template
    )
    webhooks = {
        e.type: {"post": _operation(e, dict(refs[(e.message, "validation")]))} for e in catalogue
    }
    return webhooks, dict(top.get("$defs", {}))
