"""webhook-dispatch carries out the commands upload-ingest sends it (it is the one writer of
deliveries): ``webhook.resend`` reopens a final delivery once per command and attempts it;
``webhook.send_test`` makes one test delivery per delivery id and attempts it once."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from darkroom_ingest.settings import IngestSettings
from darkroom_kit import records
from darkroom_kit.clock import now_ms
from darkroom_kit.ids import new_id
from darkroom_kit.messaging import Envelope, Topology
from darkroom_kit.mongo import MONGO_DB
from darkroom_kit.payloads import WebhookResend, WebhookSendTest
from darkroom_kit.statuses import DeliveryStatus
from darkroom_kit.stored.deliveries import DeliveryRecord
from standardwebhooks import Webhook

from tests.factories.api import Client, TokenMaker
from tests.factories.messaging import eventually, publish
from tests.factories.webhooks import (
    Serve,
    StartDispatch,
    consumed,
    metric,
    publish_photo_events,
    register_limited,
)


async def stored(dispatch: Client, delivery_id: str) -> DeliveryRecord | None:
    doc = await dispatch.app[MONGO_DB][records.WEBHOOK_DELIVERIES].find_one({"_id": delivery_id})
    return None if doc is None else DeliveryRecord.from_document(doc)


async def final(dispatch: Client, delivery_id: str) -> DeliveryRecord:
    async def check() -> DeliveryRecord | None:
        got = await stored(dispatch, delivery_id)
        return got if got is not None and got.final else None

    result: DeliveryRecord = await eventually(check, timeout=20)
    return result


async def handled(dispatch: Client, namespace: str, count: int) -> None:
    """Until the attempts queue has handled ``count`` messages in all."""
    queue = Topology(namespace).queue("webhook-dispatch", "attempts")

    async def check() -> bool:
        return consumed(await (await dispatch.get("/metrics")).text(), queue) >= count

    await eventually(check, timeout=20)


async def test_resend_reopens_a_final_delivery_once_per_command(
    api: Client,
    start_dispatch: StartDispatch,
    serve: Serve,
    make_token: TokenMaker,
    ingest_settings: IngestSettings,
) -> None:
    dispatch = await start_dispatch(retry_delays_ms=())  # one attempt, then final
    token = await make_token()
    answers: list[Any] = [(500, {}, b"down")]
    hook, url = await serve(answers)
    event_id = f"ev_resend{now_ms()}"
    endpoint = await register_limited(api, token, url, event_id)
    await publish_photo_events(ingest_settings, event_id, 1)

    async def the_delivery() -> str | None:
        doc = await dispatch.app[MONGO_DB][records.WEBHOOK_DELIVERIES].find_one(
            {"endpoint_id": endpoint["id"]}
        )
        return None if doc is None else str(doc["_id"])

    did = await eventually(the_delivery)
    failed = await final(dispatch, did)
    assert failed.status is DeliveryStatus.FAILED
    answers[0] = (200, {}, b"back")

    commands = Topology(ingest_settings.amqp_namespace).commands
    resend = Envelope.new(
        records.WEBHOOK_RESEND,
        WebhookResend(delivery_id=did, endpoint_id=endpoint["id"]).model_dump(),
    )
    # The same command twice (a redelivery): one reopening, one more attempt.
    await publish(ingest_settings.amqp_url, commands, resend, resend)
    await handled(dispatch, ingest_settings.amqp_namespace, 2)
    done = await final(dispatch, did)
    assert done.status is DeliveryStatus.SUCCEEDED
    assert done.last_resend_id == resend.id  # what upload-ingest waits for
    assert [(a.attempt, a.status_code) for a in done.attempt_log()] == [(1, 500), (2, 200)]
    assert len(hook.requests) == 2
    assert len({h["webhook-id"] for _, h, _ in hook.requests}) == 1  # the same webhook-id
    # The same command once more, after the delivery ended: nothing reopened, nothing sent.
    await publish(ingest_settings.amqp_url, commands, resend)
    await handled(dispatch, ingest_settings.amqp_namespace, 3)
    again = await stored(dispatch, did)
    assert again is not None
    assert (again.status, again.attempt_count) == (DeliveryStatus.SUCCEEDED, 2)
    assert len(hook.requests) == 2

    # A resend of a pending delivery, and of an unknown one: counted, logged, nothing done.
    deliveries = dispatch.app[MONGO_DB][records.WEBHOOK_DELIVERIES]
    await deliveries.update_one({"_id": did}, {"$set": {"status": DeliveryStatus.PENDING}})
    await publish(
        ingest_settings.amqp_url,
        commands,
        Envelope.new(records.WEBHOOK_RESEND, {"delivery_id": did, "endpoint_id": endpoint["id"]}),
        Envelope.new(
            records.WEBHOOK_RESEND, {"delivery_id": "msg_nope", "endpoint_id": endpoint["id"]}
        ),
    )
    await handled(dispatch, ingest_settings.amqp_namespace, 5)
    pending = await stored(dispatch, did)
    assert pending is not None
    assert pending.last_resend_id == resend.id  # not reopened by the second one
    ignored = "webhook_commands_ignored_total"
    assert await metric(dispatch, ignored, command="resend", status="pending") == 1
    assert await metric(dispatch, ignored, command="resend", status="unknown") == 1
    assert len(hook.requests) == 2


async def test_send_test_makes_one_delivery_and_sends_it_once(
    api: Client,
    start_dispatch: StartDispatch,
    serve: Serve,
    make_token: TokenMaker,
    ingest_settings: IngestSettings,
) -> None:
    dispatch = await start_dispatch()
    token = await make_token()
    hook, url = await serve([(500, {}, b"broken")])
    endpoint = await register_limited(api, token, url, f"ev_test{now_ms()}")
    did = new_id("msg")
    command = WebhookSendTest(delivery_id=did, endpoint_id=endpoint["id"]).model_dump()
    first = Envelope.new(records.WEBHOOK_SEND_TEST, command)
    # The same command twice, and another one for the same delivery id.
    await publish(
        ingest_settings.amqp_url,
        Topology(ingest_settings.amqp_namespace).commands,
        first,
        first,
        Envelope.new(records.WEBHOOK_SEND_TEST, command),
    )
    await handled(dispatch, ingest_settings.amqp_namespace, 3)
    sent = await final(dispatch, did)
    await asyncio.sleep(0.5)  # a second send would arrive now
    assert len(hook.requests) == 1
    # Tried once although it failed (a test is never retried), as a webhook.test message.
    assert (sent.status, sent.event_type, sent.single_attempt) == (
        DeliveryStatus.FAILED,
        records.WEBHOOK_TEST,
        True,
    )
    assert [a.status_code for a in sent.attempt_log()] == [500]
    _, headers, body = hook.requests[0]
    assert headers["webhook-id"] == did
    message = Webhook(endpoint["secret"]).verify(body, headers)
    assert message["type"] == records.WEBHOOK_TEST
    assert message["data"] == {"endpoint": {"id": endpoint["id"], "url": url}}
    assert json.loads(sent.payload or "") == message
    count = await dispatch.app[MONGO_DB][records.WEBHOOK_DELIVERIES].count_documents(
        {"endpoint_id": endpoint["id"]}
    )
    assert count == 1
    # A failed test says nothing about the endpoint's health.
    got = await dispatch.app[MONGO_DB][records.WEBHOOK_ENDPOINTS].find_one({"_id": endpoint["id"]})
    assert got is not None
    assert got["failing_since_ms"] is None
