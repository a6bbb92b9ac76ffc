"""webhook-dispatch in-process with upload-ingest, delivering to real receivers on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest
from darkroom_ingest.settings import IngestSettings
from darkroom_kit.messaging import Envelope, Message, Topology
from darkroom_kit.payloads import PhotoUploaded
from darkroom_webhooks.app import DISPATCHER
from standardwebhooks import Webhook

from tests.factories.api import Client, TokenMaker, auth, form, make_event
from tests.factories.media import jpeg_bytes
from tests.factories.messaging import eventually, publish
from tests.factories.webhooks import (
    Scripted,
    Serve,
    StartDispatch,
    deliveries,
    final_log,
    register,
    schema_part,
)

MakeReceiver = Callable[[list[int]], Awaitable[tuple[Scripted, str]]]


@pytest.fixture
def receiver(serve: Serve) -> MakeReceiver:
    """A receiver answering the statuses given (the last repeats), each body naming its status."""

    async def make(statuses: list[int]) -> tuple[Scripted, str]:
        return await serve([(status, {}, f"answer {status}".encode()) for status in statuses])

    return make


@pytest.fixture
async def dispatch(start_dispatch: StartDispatch) -> Client:
    return await start_dispatch(retry_delays_ms=(300, 600))


async def test_signed_delivery_retry_and_delete(
    api: Client, dispatch: Client, receiver: MakeReceiver, make_token: TokenMaker
) -> None:
    token = await make_token()
    flaky, flaky_url = await receiver([500, 200])
    steady, steady_url = await receiver([200])
    ep_flaky = await register(api, token, flaky_url, ["photo.uploaded"])
    ep_steady = await register(api, token, steady_url, ["photo.*"])
    event = await make_event(api, token)
    resp = await api.post(
        f"/v1/events/{event['id']}/photos", data=form(("w.jpg", jpeg_bytes())), headers=auth(token)
    )
    photo = (await resp.json())["uploaded"][0]
    await eventually(lambda: _succeeded(api, token, ep_flaky["id"]))
    await eventually(lambda: _succeeded(api, token, ep_steady["id"]))
    # 500 then 200: two attempts with the same webhook-id, each signed for its own timestamp.
    assert len(flaky.requests) == 2
    ids = {h["webhook-id"] for _, h, _ in flaky.requests}
    assert len(ids) == 1
    for _, headers, body in flaky.requests:
        payload = Webhook(ep_flaky["secret"]).verify(body, headers)
        assert payload["type"] == "photo.uploaded"
        assert payload["data"]["photo"]["id"] == photo["id"]
    log = await deliveries(api, token, ep_flaky["id"])
    assert [a["status_code"] for a in log[0]["attempts"]] == [500, 200]
    assert log[0]["attempts"][0]["response_body"] == "answer 500"
    # The steady endpoint gets photo.uploaded; deleting sends photo.deleted to photo.* only.
    assert (await api.delete(f"/v1/photos/{photo['id']}", headers=auth(token))).status == 204

    def types(r: Scripted) -> list[str]:
        return [Webhook(ep_steady["secret"]).verify(b, h)["type"] for _, h, b in r.requests]

    async def got_deleted() -> bool:
        return "photo.deleted" in types(steady)

    await eventually(got_deleted)
    await asyncio.sleep(1)  # anything extra would arrive now
    assert types(steady) == ["photo.uploaded", "photo.deleted"]
    assert len(flaky.requests) == 2


async def _succeeded(api: Client, token: str, endpoint_id: str) -> bool:
    log = await deliveries(api, token, endpoint_id)
    return bool(log) and all(d["status"] == "succeeded" for d in log)


async def test_same_message_twice_is_delivered_once(
    api: Client,
    dispatch: Client,
    receiver: MakeReceiver,
    make_token: TokenMaker,
    ingest_settings: IngestSettings,
) -> None:
    token = await make_token()
    hook, url = await receiver([200])
    endpoint = await register(api, token, url, ["photo.uploaded"])
    message = Envelope.new("photo.uploaded", {"photo": {"id": "ph_dup"}})
    events = Topology(ingest_settings.amqp_namespace).events
    await publish(ingest_settings.amqp_url, events, message, message)
    await eventually(lambda: _succeeded(api, token, endpoint["id"]))
    await asyncio.sleep(1.5)
    assert len(hook.requests) == 1
    assert len(await deliveries(api, token, endpoint["id"])) == 1


async def test_two_copies_in_one_write_are_attempted_once(
    api: Client, dispatch: Client, receiver: MakeReceiver, make_token: TokenMaker
) -> None:
    """Two copies consumed at the same moment share one bulk insert of their deliveries; only
    the copy whose document went in may attempt it (the race the test above meets by chance)."""
    token = await make_token()
    hook, url = await receiver([200])
    endpoint = await register(api, token, url, ["photo.uploaded"])
    envelope = Envelope.new("photo.uploaded", {"photo": {"id": "ph_twin"}})
    copy = Message(envelope, PhotoUploaded.model_validate(envelope.data), 1)
    dispatcher = dispatch.app[DISPATCHER]
    await asyncio.gather(dispatcher.fan_out(copy), dispatcher.fan_out(copy))
    await eventually(lambda: _succeeded(api, token, endpoint["id"]))
    await asyncio.sleep(1.5)  # a second attempt, through the command path, would arrive now
    assert len(hook.requests) == 1
    assert len(await deliveries(api, token, endpoint["id"])) == 1


async def test_gone_disables_and_private_targets_are_refused(
    api: Client,
    dispatch: Client,
    receiver: MakeReceiver,
    make_token: TokenMaker,
    ingest_settings: IngestSettings,
) -> None:
    token = await make_token()
    gone, gone_url = await receiver([410])
    moved, moved_url = await receiver([301])
    ep_moved = await register(api, token, moved_url, ["photo.uploaded"])
    ep_gone = await register(api, token, gone_url, ["photo.uploaded"])
    # Not allowlisted: 10.x is private. The attempt never leaves the machine.
    ep_private = await register(api, token, "http://10.1.2.3/hook", ["photo.uploaded"])
    event = await make_event(api, token)
    await api.post(
        f"/v1/events/{event['id']}/photos",
        data=form(("g.jpg", jpeg_bytes(64, 64))),
        headers=auth(token),
    )

    log = await final_log(api, token, ep_gone["id"], timeout=15)
    assert log[0]["status"] == "failed"
    assert len(gone.requests) == 1  # 410 is final: no retries
    got = await (await api.get(f"/v1/webhooks/{ep_gone['id']}", headers=auth(token))).json()
    assert got["enabled"] is False
    # A redirect is not followed: it is a failed attempt, retried, then the delivery fails.
    log = await final_log(api, token, ep_moved["id"])
    assert log[0]["status"] == "failed"
    assert [a["status_code"] for a in log[0]["attempts"]] == [301, 301, 301]
    assert len(moved.requests) == 3
    log = await final_log(api, token, ep_private["id"])
    assert log[0]["status"] == "failed"
    assert len(log[0]["attempts"]) == 3  # first try and both retry tiers
    assert all(a["error"].startswith("blocked_address") for a in log[0]["attempts"])


async def test_rotation_patch_and_event_types(
    api: Client, dispatch: Client, receiver: MakeReceiver, make_token: TokenMaker
) -> None:
    from standardwebhooks import WebhookVerificationError

    token = await make_token()
    hook, url = await receiver([200])
    endpoint = await register(api, token, url, ["photo.uploaded"])
    old = endpoint["secret"]
    assert endpoint["description"] is None  # present, even when empty
    rotated = await (
        await api.post(
            f"/v1/webhooks/{endpoint['id']}/rotate-secret",
            json={"grace_period_hours": 1},
            headers=auth(token),
        )
    ).json()
    new = rotated["secret"]
    assert new != old
    assert rotated["secret_rotation_ends_at"] is not None
    got = await (await api.get(f"/v1/webhooks/{endpoint['id']}", headers=auth(token))).json()
    assert "secret" not in got
    event = await make_event(api, token)
    await api.post(
        f"/v1/events/{event['id']}/photos",
        data=form(("r.jpg", jpeg_bytes(64, 64))),
        headers=auth(token),
    )

    async def delivered(n: int) -> bool:
        return len(hook.requests) >= n

    await eventually(lambda: delivered(1))
    _, headers, body = hook.requests[0]
    assert len(headers["webhook-signature"].split(" ")) == 2  # both, during the grace period
    Webhook(old).verify(body, headers)
    Webhook(new).verify(body, headers)
    # Without a grace period only the newest secret signs.
    newest = (
        await (
            await api.post(
                f"/v1/webhooks/{endpoint['id']}/rotate-secret",
                json={"grace_period_hours": 0},
                headers=auth(token),
            )
        ).json()
    )["secret"]
    await api.post(
        f"/v1/events/{event['id']}/photos",
        data=form(("s.jpg", jpeg_bytes(64, 64))),
        headers=auth(token),
    )
    await eventually(lambda: delivered(2))
    _, headers, body = hook.requests[1]
    Webhook(newest).verify(body, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(new).verify(body, headers)
    # PATCH: a disabled endpoint gets nothing; bad values name their field.
    resp = await api.patch(
        f"/v1/webhooks/{endpoint['id']}", json={"enabled": False}, headers=auth(token)
    )
    assert (await resp.json())["enabled"] is False
    await api.post(
        f"/v1/events/{event['id']}/photos",
        data=form(("t.jpg", jpeg_bytes(64, 64))),
        headers=auth(token),
    )
    await asyncio.sleep(1.5)
    assert len(hook.requests) == 2
    for bad, field in (
        ({"url": None}, "/url"),
        ({"event_types": ["nope"]}, "/event_types"),
        ({"enabled": "maybe"}, "/enabled"),
    ):
        resp = await api.patch(f"/v1/webhooks/{endpoint['id']}", json=bad, headers=auth(token))
        assert resp.status == 422
        assert (await resp.json())["errors"][0]["field"] == field
    resp = await api.patch(
        f"/v1/webhooks/{endpoint['id']}",
        json={"enabled": True, "description": "crm"},
        headers=auth(token),
    )
    assert (await resp.json())["description"] == "crm"
    types = await (await api.get("/v1/webhook-event-types", headers=auth(token))).json()
    names = [t["type"] for t in types["items"]]
    assert names == [
        "photo.uploaded",
        "photo.processed",
        "photo.deleted",
        "photo.repaired",
        "event.archived",
        "endpoint.failing",
        "endpoint.disabled",
        "endpoint.recovered",
    ]
    uploaded = types["items"][0]["schema"]
    assert "id" in schema_part(uploaded, "data", "photo")["properties"]
    failing = schema_part(types["items"][5]["schema"], "data")["properties"]
    assert list(failing) == ["endpoint"]
