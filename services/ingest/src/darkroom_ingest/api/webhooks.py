"""``/v1/webhooks``: register, list, read, change, rotate and delete webhook endpoints; and the
catalogue of event types they can subscribe to."""

from __future__ import annotations

from darkroom_kit import catalogue
from darkroom_kit.clock import ms_to_iso, now_ms
from darkroom_kit.stored.endpoints import EndpointRecord

from darkroom_ingest.api.declare import Call, Reply, RouteTable
from darkroom_ingest.errors import WEBHOOK_NOT_FOUND
from darkroom_ingest.schemas.common import PageQuery
from darkroom_ingest.schemas.webhooks import (
    EventTypeOut,
    EventTypePage,
    RotateSecret,
    WebhookCreate,
    WebhookOut,
    WebhookPage,
    WebhookPatch,
    WebhookWithSecret,
)
from darkroom_ingest.tokens import Scope

routes = RouteTable("webhooks")
MANAGE = Scope.WEBHOOKS_MANAGE


def webhook_out(endpoint: EndpointRecord) -> WebhookOut:
    now = now_ms()
    ending = [
        s.expires_ms for s in endpoint.secrets if s.expires_ms is not None and s.valid_at(now)
    ]
    return WebhookOut(
        id=endpoint.id,
        url=endpoint.shown_url,
        event_types=endpoint.event_types,
        description=endpoint.description,
        enabled=endpoint.enabled,
        event_ids=endpoint.event_ids,
        rate_limit=endpoint.rate_limit,
        max_concurrency=endpoint.max_concurrency,
        failing_since=ms_to_iso(endpoint.failing_since_ms),
        disabled_reason=endpoint.disabled_reason,
        created_at=ms_to_iso(endpoint.created_ms) or "",
        secret_rotation_ends_at=ms_to_iso(max(ending)) if ending else None,
    )


def with_secret(endpoint: EndpointRecord, secret: str) -> WebhookWithSecret:
    return WebhookWithSecret(**webhook_out(endpoint).model_dump(), secret=secret)


@routes.post(
    "/v1/webhooks",
    operation_id="createWebhook",
    summary="Register a webhook endpoint",
    scope=MANAGE,
    body=WebhookCreate,
    response=WebhookWithSecret,
    status=201,
    location=True,
)
async def create_webhook(call: Call, body: WebhookCreate) -> Reply[WebhookWithSecret]:
    """Deliveries are signed with Standard Webhooks; the answer carries the signing secret,
    shown only now (and by rotate-secret)."""
    fields = body.model_dump()
    fields["url"] = str(body.url)
    endpoint, secret = await call.deps.endpoints.create(call.principal, fields)
    return Reply(with_secret(endpoint, secret), headers={"Location": f"/v1/webhooks/{endpoint.id}"})


@routes.get(
    "/v1/webhooks",
    operation_id="listWebhooks",
    summary="List webhook endpoints",
    scope=MANAGE,
    query=PageQuery,
    response=WebhookPage,
)
async def list_webhooks(call: Call, query: PageQuery) -> WebhookPage:
    """Every webhook endpoint, newest first."""
    endpoints, total = await call.deps.endpoints.page(call.principal, query.limit, query.offset)
    return WebhookPage(
        items=[webhook_out(e) for e in endpoints],
        total=total,
        limit=query.limit,
        offset=query.offset,
    )


@routes.get(
    "/v1/webhooks/{webhook_id}",
    operation_id="getWebhook",
    summary="Read a webhook endpoint",
    scope=MANAGE,
    response=WebhookOut,
    errors=(WEBHOOK_NOT_FOUND,),
)
async def get_webhook(call: Call) -> WebhookOut:
    """An endpoint, with whether it is failing or disabled and why."""
    return webhook_out(await call.deps.endpoints.get(call.principal, call.path("webhook_id")))


@routes.patch(
    "/v1/webhooks/{webhook_id}",
    operation_id="updateWebhook",
    summary="Change a webhook endpoint",
    scope=MANAGE,
    body=WebhookPatch,
    response=WebhookOut,
    errors=(WEBHOOK_NOT_FOUND,),
)
async def patch_webhook(call: Call, body: WebhookPatch) -> WebhookOut:
    """Change its url, event types, filters, limits, description or enabled flag. Enabling a
    disabled endpoint starts it afresh."""
    fields = {name: getattr(body, name) for name in body.model_fields_set}
    if fields.get("url") is not None:
        fields["url"] = str(fields["url"])
    return webhook_out(
        await call.deps.endpoints.patch(call.principal, call.path("webhook_id"), fields)
    )


@routes.post(
    "/v1/webhooks/{webhook_id}/rotate-secret",
    operation_id="rotateWebhookSecret",
    summary="Rotate a webhook endpoint's signing secret",
    scope=MANAGE,
    body=RotateSecret,
    body_optional=True,
    response=WebhookWithSecret,
    errors=(WEBHOOK_NOT_FOUND,),
)
async def rotate_webhook_secret(call: Call, body: RotateSecret) -> WebhookWithSecret:
    """A new secret at once; the old one also signs (a second signature) during the grace
    period (default 24 h), so receivers can switch without losing a message."""
    endpoint, secret = await call.deps.endpoints.rotate_secret(
        call.principal, call.path("webhook_id"), body.grace_period_hours
    )
    return with_secret(endpoint, secret)


@routes.delete(
    "/v1/webhooks/{webhook_id}",
    operation_id="deleteWebhook",
    summary="Delete a webhook endpoint",
    scope=MANAGE,
    status=204,
    errors=(WEBHOOK_NOT_FOUND,),
)
async def delete_webhook(call: Call) -> None:
    """Delete it: it receives nothing more."""
    await call.deps.endpoints.delete(call.principal, call.path("webhook_id"))


@routes.get(
    "/v1/webhook-event-types",
    operation_id="listWebhookEventTypes",
    summary="List the webhook event types",
    scope=None,
    response=EventTypePage,
)
async def list_event_types(call: Call) -> EventTypePage:
    """The event types endpoints can subscribe to, each with the JSON schema of its message
    (generated from the same payload models the services validate messages with)."""
    items = [
        EventTypeOut(type=t.type, description=t.description, schema=t.schema)
        for t in catalogue.event_types()
        if t.subscribable
    ]
    return EventTypePage(items=items, total=len(items), limit=len(items), offset=0)
