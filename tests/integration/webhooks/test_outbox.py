"""webhook-dispatch writes each endpoint notice with the health change that causes it (its own
outbox in the endpoint record), and its own relay publishes a notice the broker refused."""

from __future__ import annotations

from typing import Any

from darkroom_ingest.settings import IngestSettings
from darkroom_kit import records
from darkroom_kit.clock import now_ms
from darkroom_kit.messaging import Envelope
from darkroom_kit.mongo import MONGO_DB
from darkroom_kit.outbox import pending_of
from darkroom_webhooks.app import DISPATCHER, SERVICE
from standardwebhooks import Webhook

from tests.factories.api import Client, TokenMaker
from tests.factories.messaging import eventually
from tests.factories.webhooks import (
    Serve,
    StartDispatch,
    publish_photo_events,
    register,
    register_limited,
)


async def test_a_refused_notice_is_published_by_the_dispatchers_relay(
    api: Client,
    start_dispatch: StartDispatch,
    serve: Serve,
    make_token: TokenMaker,
    ingest_settings: IngestSettings,
) -> None:
    dispatch = await start_dispatch(
        retry_delays_ms=(), outbox_grace_ms=300, outbox_relay_interval_seconds=0.2
    )
    outbox = dispatch.app[DISPATCHER]._outbox
    real = outbox._publisher
    refused: list[str] = []

    class RefusesTheFirstNotice:
        async def publish(self, exchange: str, envelope: Envelope, **kwargs: Any) -> None:
            if envelope.type == records.ENDPOINT_FAILING and not refused:
                refused.append(envelope.id)
                raise ConnectionError("broker away")
            await real.publish(exchange, envelope, **kwargs)

    outbox._publisher = RefusesTheFirstNotice()
    token = await make_token()
    operator, operator_url = await serve([(204, {}, b"")])
    _, failing_url = await serve([(500, {}, b"")])
    ep_operator = await register(api, token, operator_url, ["endpoint.failing"])
    event_id = f"ev_notice{now_ms()}"
    ep_failing = await register_limited(api, token, failing_url, event_id)
    await publish_photo_events(ingest_settings, event_id, 1)

    async def told() -> bool:
        verify = Webhook(ep_operator["secret"]).verify
        return any(
            verify(body, headers)["data"]["endpoint"]["id"] == ep_failing["id"]
            for _, headers, body in operator.requests
        )

    await eventually(told, timeout=20)
    assert refused  # the notice's first publish failed; the relay published it
    stored = await dispatch.app[MONGO_DB][records.WEBHOOK_ENDPOINTS].find_one(
        {"_id": ep_failing["id"]}
    )
    assert stored is not None
    assert stored["failing_since_ms"] is not None
    assert pending_of(stored, SERVICE) == {}
