"""webhook-dispatch against receivers that misbehave: Retry-After, hangs, huge bodies; endpoint
health notices; the delivery log's filters, resend and test sends; the SSRF guard on names."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiohttp import web
from darkroom_kit import records
from darkroom_kit.mongo import MONGO_DB
from standardwebhooks import Webhook, WebhookVerificationError

from tests.factories.api import Client, TokenMaker, auth, make_event
from tests.factories.messaging import eventually
from tests.factories.webhooks import (
    Serve,
    StartDispatch,
    deliveries,
    final_log,
    register,
    schema_part,
    upload_one,
)


async def test_retry_after_hang_huge_body_and_headers(
    api: Client,
    start_dispatch: StartDispatch,
    serve: Serve,
    make_token: TokenMaker,
) -> None:
    await start_dispatch(timeout_seconds=1)

    async def hang(request: web.Request) -> web.Response:
        await asyncio.sleep(5)
        return web.Response(status=200)

    token = await make_token()
    polite, polite_url = await serve(
        [(429, {"Retry-After": "1"}, b"slow down"), (200, {"X-Receiver": "yes"}, b"ok")],
    )
    hanging, hanging_url = await serve([hang, (200, {}, b"")])
    _, huge_url = await serve([(200, {}, b"x" * 1_000_000)])
    ep_polite = await register(api, token, polite_url, ["photo.uploaded"])
    ep_hanging = await register(api, token, hanging_url, ["photo.uploaded"])
    ep_huge = await register(api, token, huge_url, ["photo.uploaded"])
    await upload_one(api, token)

    log = await final_log(api, token, ep_polite["id"])
    assert [a["status_code"] for a in log[0]["attempts"]] == [429, 200]
    # The 429 asked for 1 s: the retry came from the first tier queue at least that long
    # (the next tier, 3 s +-20 %), not from the 300 ms one.
    assert polite.requests[1][0] - polite.requests[0][0] >= 1.0
    assert log[0]["attempts"][0]["response_headers"]["retry-after"] == "1"
    assert log[0]["attempts"][1]["response_headers"]["x-receiver"] == "yes"

    log = await final_log(api, token, ep_hanging["id"])
    first, second = log[0]["attempts"]
    assert (first["status_code"], first["error"]) == (None, "timeout")
    assert 900 <= first["duration_ms"] < 3000  # cut at the 1 s timeout, not after 5 s
    assert second["status_code"] == 200
    assert len(hanging.requests) == 2

    log = await final_log(api, token, ep_huge["id"])
    [attempt] = log[0]["attempts"]
    assert attempt["status_code"] == 200
    assert attempt["response_truncated"] is True
    assert len(attempt["response_body"]) == 64 * 1024  # read up to the cap, stored truncated


async def test_endpoint_notices_failing_recovered_disabled(
    api: Client,
    start_dispatch: StartDispatch,
    serve: Serve,
    make_token: TokenMaker,
) -> None:
    # Auto-disable after 0.2 s of nothing but failures, so the test does not wait 5 days.
    await start_dispatch(
        retry_delays_ms=(400, 400),
        auto_disable_after_hours=0.2 / 3600,
    )
    token = await make_token()
    operator, operator_url = await serve([(204, {}, b"")])
    _, flaky_url = await serve([(500, {}, b""), (200, {}, b"")])
    _, dead_url = await serve([(500, {}, b"")])
    ep_operator = await register(api, token, operator_url, ["endpoint.*"])
    ep_flaky = await register(api, token, flaky_url, ["photo.uploaded"])
    # The dead endpoint also listens to notices: it hears about the flaky one, never itself.
    ep_dead = await register(api, token, dead_url, ["photo.uploaded", "endpoint.*"])
    await upload_one(api, token)

    types = await (await api.get("/v1/webhook-event-types", headers=auth(token))).json()
    documented = {
        t["type"]: set(schema_part(t["schema"], "data", "endpoint")["properties"])
        for t in types["items"]
        if t["type"].startswith("endpoint.")
    }

    def notices() -> list[tuple[str, str]]:
        # Endpoints of earlier tests share the database: only this test's count here.
        verify = Webhook(ep_operator["secret"]).verify
        out = []
        for _, headers, body in operator.requests:
            msg = verify(body, headers)
            assert set(msg["data"]["endpoint"]) == documented[msg["type"]]  # as documented
            about = msg["data"]["endpoint"]["id"]
            assert about != ep_operator["id"]  # never told about itself
            if about in (ep_flaky["id"], ep_dead["id"]):
                out.append((msg["type"], about))
        return out

    async def all_in() -> list[tuple[str, str]] | None:
        got = notices()
        return got if len(got) >= 4 else None

    got = await eventually(all_in, timeout=20)
    assert sorted(got) == sorted(
        [
            ("endpoint.failing", ep_flaky["id"]),
            ("endpoint.recovered", ep_flaky["id"]),
            ("endpoint.failing", ep_dead["id"]),
            ("endpoint.disabled", ep_dead["id"]),
        ]
    )
    dead_now = await (await api.get(f"/v1/webhooks/{ep_dead['id']}", headers=auth(token))).json()
    assert (dead_now["enabled"], dead_now["disabled_reason"]) == (False, "failing")
    flaky_now = await (await api.get(f"/v1/webhooks/{ep_flaky['id']}", headers=auth(token))).json()
    assert (flaky_now["enabled"], flaky_now["failing_since"]) == (True, None)
    # Every notice was fanned out by now (the operator has all four): the dead endpoint got the
    # flaky one's (and those of earlier tests' endpoints, which share the database), never its
    # own, although its failing notice came out while it was still enabled and subscribed.
    stored = api.app[MONGO_DB][records.WEBHOOK_DELIVERIES]
    about = [
        json.loads(d["payload"])["data"]["endpoint"]["id"]
        async for d in stored.find(
            {"endpoint_id": ep_dead["id"], "event_type": {"$in": list(records.ENDPOINT_NOTICES)}}
        )
    ]
    assert ep_flaky["id"] in about
    assert ep_dead["id"] not in about


async def test_delivery_log_filters_resend_and_test_send(
    api: Client,
    start_dispatch: StartDispatch,
    serve: Serve,
    make_token: TokenMaker,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    await start_dispatch(retry_delays_ms=(200,))
    token = await make_token()
    hook, url = await serve([(500, {}, b""), (500, {}, b""), (200, {}, b"ok")])
    other_event = await make_event(api, token)
    endpoint = await register(api, token, url, ["photo.*"])
    filtered = await register(api, token, url.replace("/hook", "/never"), ["photo.*"])
    resp = await api.patch(
        f"/v1/webhooks/{filtered['id']}",
        json={"event_ids": [other_event["id"]]},
        headers=auth(token),
    )
    assert (await resp.json())["event_ids"] == [other_event["id"]]
    before = datetime.now(UTC) - timedelta(seconds=1)
    await upload_one(api, token)
    log = await final_log(api, token, endpoint["id"])
    assert log[0]["status"] == "failed"  # 500 twice: the first try and the one retry
    delivery_id = log[0]["id"]
    base = f"/v1/webhooks/{endpoint['id']}/deliveries"

    async def listed(query: str) -> list[str]:
        resp = await api.get(f"{base}?{query}", headers=auth(token))
        assert resp.status == 200, await resp.text()
        return [d["id"] for d in (await resp.json())["items"]]

    since = before.isoformat().replace("+00:00", "Z")
    assert await listed("status=failed") == [delivery_id]
    assert await listed("status=succeeded") == []
    assert await listed("event_type=photo.uploaded") == [delivery_id]
    assert await listed("event_type=photo.deleted") == []
    assert await listed(f"since={since}") == [delivery_id]
    assert await listed(f"until={since}") == []
    bad = await api.get(f"{base}?since=yesterday", headers=auth(token))
    assert (bad.status, (await bad.json())["errors"][0]["field"]) == (422, "since")
    bad = await api.get(f"{base}?status=lost", headers=auth(token))
    assert (bad.status, (await bad.json())["errors"][0]["field"]) == (422, "status")

    # Resend: same webhook-id, the attempts keep counting in the same log.
    resp = await api.post(f"{base}/{delivery_id}/resend", headers=auth(token))
    assert resp.status == 202
    log = await final_log(api, token, endpoint["id"])
    one = await (await api.get(f"{base}/{delivery_id}", headers=auth(token))).json()
    assert one["status"] == "succeeded"
    assert [a["attempt"] for a in one["attempts"]] == [1, 2, 3]
    assert [a["status_code"] for a in one["attempts"]] == [500, 500, 200]
    assert len({h["webhook-id"] for _, h, _ in hook.requests}) == 1
    again = await api.post(f"{base}/nope/resend", headers=auth(token))
    assert (await again.json())["code"] == "delivery_not_found"

    # A test send: signed like any delivery, answered with its attempt.
    resp = await api.post(f"/v1/webhooks/{endpoint['id']}/test", headers=auth(token))
    assert resp.status == 200
    tested = await resp.json()
    assert (tested["event_type"], tested["status"]) == ("webhook.test", "succeeded")
    _, headers, body = hook.requests[-1]
    verify = Webhook(endpoint["secret"]).verify
    assert verify(body, headers)["type"] == "webhook.test"
    # The same request replayed five minutes later is refused by the reference verifier.
    import standardwebhooks.webhooks as sw

    class Later(datetime):
        @classmethod
        def now(cls, tz: Any = None) -> Any:
            return datetime.now(tz) + timedelta(minutes=5, seconds=1)

    monkeypatch.setattr(sw, "datetime", Later)
    with pytest.raises(WebhookVerificationError):
        verify(body, headers)
    # The endpoint filtered to another event got nothing at all.
    assert await deliveries(api, token, filtered["id"]) == []
