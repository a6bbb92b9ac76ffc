"""``/v1/webhooks/{webhook_id}/deliveries``: every message sent to an endpoint with every
attempt; resending one; sending a test message."""

from __future__ import annotations

from typing import Any

from darkroom_kit.clock import datetime_to_ms, ms_to_iso, now_ms
from darkroom_kit.statuses import DeliveryStatus
from darkroom_kit.stored.deliveries import DeliveryRecord

from darkroom_ingest.api.declare import Call, Reply, RouteTable
from darkroom_ingest.errors import (
    COMMAND_NOT_SENT,
    DELIVERY_IN_PROGRESS,
    DELIVERY_NOT_FOUND,
    WEBHOOK_NOT_FOUND,
)
from darkroom_ingest.schemas.webhooks import Attempt, DeliveryOut, DeliveryPage, DeliveryQuery
from darkroom_ingest.tokens import Scope

routes = RouteTable("webhooks")
MANAGE = Scope.WEBHOOKS_MANAGE


def delivery_out(delivery: DeliveryRecord) -> DeliveryOut:
    attempts = [
        Attempt(
            attempt=a.attempt,
            at=ms_to_iso(a.at_ms) or "",
            status_code=a.status_code,
            error=a.error,
            duration_ms=a.duration_ms,
            response_headers=a.response_headers,
            response_body=a.response_body,
            response_truncated=a.response_truncated,
        )
        for a in delivery.attempt_log()
    ]
    return DeliveryOut(
        id=delivery.id,
        endpoint_id=delivery.endpoint_id,
        message_id=delivery.message_id,
        event_type=delivery.event_type,
        status=delivery.status,
        attempt_count=delivery.attempt_count,
        attempts=attempts,
        created_at=ms_to_iso(delivery.created_ms) or "",
        last_attempt_at=ms_to_iso(delivery.last_attempt_ms),
    )


@routes.get(
    "/v1/webhooks/{webhook_id}/deliveries",
    operation_id="listDeliveries",
    summary="List an endpoint's deliveries",
    scope=MANAGE,
    query=DeliveryQuery,
    response=DeliveryPage,
    errors=(WEBHOOK_NOT_FOUND,),
)
async def list_deliveries(call: Call, query: DeliveryQuery) -> DeliveryPage:
    """Newest first, each with every attempt; filtered by status, event type and time range."""
    endpoint = await call.deps.endpoints.get(call.principal, call.path("webhook_id"))
    filters: dict[str, Any] = {}
    if query.status is not None:
        filters["status"] = query.status.value
    if query.event_type is not None:
        filters["event_type"] = query.event_type
    created: dict[str, int] = {}
    if query.since is not None:
        created["$gte"] = datetime_to_ms(query.since)
    if query.until is not None:
        created["$lt"] = datetime_to_ms(query.until)
    if created:
        filters["created_ms"] = created
    deliveries, total = await call.deps.deliveries.page(
        endpoint.id, query.limit, query.offset, filters
    )
    return DeliveryPage(
        items=[delivery_out(d) for d in deliveries],
        total=total,
        limit=query.limit,
        offset=query.offset,
    )


@routes.get(
    "/v1/webhooks/{webhook_id}/deliveries/{delivery_id}",
    operation_id="getDelivery",
    summary="Read a delivery",
    scope=MANAGE,
    response=DeliveryOut,
    errors=(WEBHOOK_NOT_FOUND, DELIVERY_NOT_FOUND),
)
async def get_delivery(call: Call) -> DeliveryOut:
    """One delivery with every attempt: time, duration, status or error, response headers and
    (truncated) body."""
    endpoint = await call.deps.endpoints.get(call.principal, call.path("webhook_id"))
    return delivery_out(await call.deps.deliveries.get(endpoint.id, call.path("delivery_id")))


@routes.post(
    "/v1/webhooks/{webhook_id}/deliveries/{delivery_id}/resend",
    operation_id="resendDelivery",
    summary="Send a delivery again",
    scope=MANAGE,
    response=DeliveryOut,
    status=202,
    errors=(WEBHOOK_NOT_FOUND, DELIVERY_NOT_FOUND, DELIVERY_IN_PROGRESS, COMMAND_NOT_SENT),
)
async def resend_delivery(call: Call) -> Reply[DeliveryOut]:
    """Send a finished delivery again with the same webhook-id (receivers dedupe on it) and a
    fresh retry schedule; its attempts keep counting in the same log."""
    endpoint = await call.deps.endpoints.get(call.principal, call.path("webhook_id"))
    delivery = await call.deps.deliveries.resend(endpoint.id, call.path("delivery_id"))
    return Reply(delivery_out(delivery), status=202)


@routes.post(
    "/v1/webhooks/{webhook_id}/test",
    operation_id="sendTestMessage",
    summary="Send a test message",
    scope=MANAGE,
    response=DeliveryOut,
    status=200,
    also={202: "Not attempted within the wait: the delivery, still pending"},
    errors=(WEBHOOK_NOT_FOUND, COMMAND_NOT_SENT),
)
async def send_test_message(call: Call) -> Reply[DeliveryOut]:
    """Send a signed ``webhook.test`` message to the endpoint now and answer with the attempt
    (202 and the pending delivery if it takes longer than the wait). A test is tried once."""
    endpoint = await call.deps.endpoints.get(call.principal, call.path("webhook_id"))
    command, delivery_id, delivery = await call.deps.deliveries.send_test(endpoint.id)
    if delivery is None:  # not made yet: the command waits for webhook-dispatch
        pending = DeliveryOut(
            id=delivery_id,
            endpoint_id=endpoint.id,
            message_id=command.id,
            event_type="webhook.test",
            status=DeliveryStatus.PENDING,
            attempt_count=0,
            attempts=[],
            created_at=ms_to_iso(now_ms()) or "",
            last_attempt_at=None,
        )
        return Reply(pending, status=202)
    return Reply(delivery_out(delivery), status=200 if delivery.final else 202)
