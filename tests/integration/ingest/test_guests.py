"""Guest upload links: a token that can only add photos to one event, with its limits, expiry and
hidden arrivals; made through the API and the CLI. (The page itself, in a real browser:
tests/e2e/test_guest_page.py.)"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from darkroom_ingest.settings import IngestSettings
from darkroom_kit import records
from darkroom_kit.messaging import QueueSpec
from darkroom_kit.mongo import MONGO_DB

from tests.factories.api import (
    Client,
    TokenMaker,
    assert_problem,
    auth,
    make_event,
    post_jpegs,
)
from tests.factories.media import jpeg_bytes
from tests.factories.messaging import drain
from tests.factories.servers import run_cli
from tests.factories.tus import create


async def tus_upload(
    api: Client, token: str, event_id: str, data: bytes, name: str, filetype: str = "image/jpeg"
) -> Any:
    """A whole file in the creation request (creation-with-upload)."""
    return await create(api, token, event_id, len(data), data, name, filetype)


async def test_a_guest_link_only_adds_photos_within_its_limits(
    capi: Client, make_token: TokenMaker, chunk_settings: IngestSettings, watch_events: QueueSpec
) -> None:
    owner = await make_token()
    event = await make_event(capi, owner)
    other = await make_event(capi, owner)
    hide = await capi.patch(
        f"/v1/events/{event['id']}", json={"guest_uploads_hidden": True}, headers=auth(owner)
    )
    assert (await hide.json())["guest_uploads_hidden"] is True
    photo = jpeg_bytes(64, 48)
    made = await capi.post(
        f"/v1/events/{event['id']}/guest-links",
        json={"label": "party", "max_files": 2, "max_bytes": 3 * len(photo)},
        headers=auth(owner),
    )
    assert made.status == 201
    link = await made.json()
    guest = link["token"]
    assert link["url"] == f"{chunk_settings.public_base_url}/guest#{guest}"
    me = await (await capi.get("/v1/me", headers=auth(guest))).json()
    assert (me["scopes"], me["event_id"]) == (["photos.upload"], event["id"])

    first = await tus_upload(capi, guest, event["id"], photo, "one.jpg")
    assert first.status == 201, await first.text()
    photo_id = first.headers["X-Darkroom-Photo-Id"]
    # Announced like any photo, hidden as it is.
    announced = await drain(chunk_settings.amqp_url, watch_events.name, 1)
    uploaded = [m for m in announced if m["type"] == records.PHOTO_UPLOADED]
    assert [(m["data"]["photo"]["id"], m["data"]["photo"]["is_hidden"]) for m in uploaded] == [
        (photo_id, True)
    ]
    # It arrives hidden (the event says so); the owner sees it and shows it.
    seen = await (await capi.get(f"/v1/photos/{photo_id}", headers=auth(owner))).json()
    assert seen["is_hidden"] is True
    shown = await capi.patch(
        f"/v1/photos/{photo_id}", json={"is_hidden": False}, headers=auth(owner)
    )
    assert (await shown.json())["is_hidden"] is False

    # Adding is all it may do: no listing, reading, deleting, batch, other events.
    for method, path in [
        ("GET", f"/v1/events/{event['id']}/photos"),
        ("GET", f"/v1/photos/{photo_id}"),
        ("DELETE", f"/v1/photos/{photo_id}"),
        ("GET", f"/v1/events/{event['id']}/guest-links"),
    ]:
        answer = await capi.request(method, path, headers=auth(guest))
        await assert_problem(answer, 403, "insufficient_scope")
    await assert_problem(
        await post_jpegs(capi, guest, event["id"], "b.jpg"), 403, "insufficient_scope"
    )
    await assert_problem(
        await tus_upload(capi, guest, other["id"], photo, "x.jpg"), 404, "event_not_found"
    )
    # A file the upload refuses does not count against the link's limits ...
    await assert_problem(
        await tus_upload(capi, guest, event["id"], b"notes", "notes.txt", "text/plain"),
        422,
        "unsupported_type",
    )
    # ... so a second file fits, and a third does not; nothing of the refused one is kept.
    second = jpeg_bytes(64, 48)  # another photo of the same size
    assert len(second) == len(photo)
    assert (await tus_upload(capi, guest, event["id"], second, "two.jpg")).status == 201
    refused = await assert_problem(
        await tus_upload(capi, guest, event["id"], photo, "three.jpg"), 403, "guest_limit_reached"
    )
    assert refused["max_files"] == 2
    stored = await capi.app[MONGO_DB][records.PHOTOS].count_documents({"event_id": event["id"]})
    assert stored == 2
    listed = await (
        await capi.get(f"/v1/events/{event['id']}/guest-links", headers=auth(owner))
    ).json()
    assert [(x["files_used"], x["bytes_used"]) for x in listed["items"]] == [(2, 2 * len(photo))]
    # Revoked: it stops at once.
    revoke = await capi.delete(
        f"/v1/events/{event['id']}/guest-links/{link['id']}", headers=auth(owner)
    )
    assert revoke.status == 204
    await assert_problem(await capi.get("/v1/me", headers=auth(guest)), 401, "invalid_token")


async def test_an_expired_link_and_a_bytes_limit(
    capi: Client, make_token: TokenMaker, chunk_settings: IngestSettings
) -> None:
    owner = await make_token()
    event = await make_event(capi, owner)
    photo = jpeg_bytes(64, 48)
    short = await (
        await capi.post(
            f"/v1/events/{event['id']}/guest-links",
            json={"expires_in_hours": 0.0002},  # 0.72 s
            headers=auth(owner),
        )
    ).json()
    assert (await capi.get("/v1/me", headers=auth(short["token"]))).status == 200
    await asyncio.sleep(1.0)
    await assert_problem(
        await tus_upload(capi, short["token"], event["id"], photo, "late.jpg"), 401, "token_expired"
    )
    small = await (
        await capi.post(
            f"/v1/events/{event['id']}/guest-links",
            json={"max_bytes": len(photo) - 1},
            headers=auth(owner),
        )
    ).json()
    await assert_problem(
        await tus_upload(capi, small["token"], event["id"], photo, "big.jpg"),
        403,
        "guest_limit_reached",
    )
    # A visible arrival where the event does not hide guests' photos.
    free = await (
        await capi.post(f"/v1/events/{event['id']}/guest-links", json={}, headers=auth(owner))
    ).json()
    landed = await tus_upload(capi, free["token"], event["id"], photo, "ok.jpg")
    seen = await capi.get(
        f"/v1/photos/{landed.headers['X-Darkroom-Photo-Id']}", headers=auth(owner)
    )
    assert (await seen.json())["is_hidden"] is False


async def test_the_cli_makes_a_guest_link(
    capi: Client, make_token: TokenMaker, chunk_settings: IngestSettings
) -> None:
    owner = await make_token()
    event = await make_event(capi, owner)
    made = await asyncio.to_thread(
        run_cli,
        chunk_settings,
        "guest-link",
        "create",
        "--event",
        event["id"],
        "--max-files",
        "5",
        "--expires-in-hours",
        "48",
    )
    assert made.returncode == 0, made.stderr
    link = json.loads(made.stdout)
    assert link["url"].endswith("/guest#" + link["token"])
    assert link["max_files"] == 5
    me = await (await capi.get("/v1/me", headers=auth(link["token"]))).json()
    assert (me["scopes"], me["event_id"]) == (["photos.upload"], event["id"])
    missing = await asyncio.to_thread(
        run_cli, chunk_settings, "guest-link", "create", "--event", "ev_nope"
    )
    assert missing.returncode == 1
    assert "no event ev_nope" in missing.stderr
    # A link that would be expired already (or never, by mistake) is refused before anything.
    for hours in ("0", "-1"):
        bad = await asyncio.to_thread(
            run_cli,
            chunk_settings,
            "guest-link",
            "create",
            "--event",
            event["id"],
            "--expires-in-hours",
            hours,
        )
        assert bad.returncode == 2, hours
        assert "is not a number > 0" in bad.stderr
