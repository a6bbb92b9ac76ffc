"""``uploads_total{service,protocol,outcome,code}``: each file that arrives counted once, accepted
or refused with its problem code, whichever way it came (batch, chunked, tus, direct). Imports
are counted in test_imports.py; the process's own metrics are checked here on upload-ingest."""

from __future__ import annotations

import secrets
from typing import Any

import pytest
from darkroom_ingest.settings import IngestSettings

from tests.factories.api import (
    Client,
    TokenMaker,
    assert_problem,
    auth,
    form,
    make_event,
    post_photos,
    put_chunk,
    start_upload,
)
from tests.factories.direct import complete, put_whole, ticket
from tests.factories.media import jpeg_bytes
from tests.factories.metrics import labels, moved, scrape
from tests.factories.tus import create, patch

SERVICE = "upload-ingest"


@pytest.fixture
def ingest_settings(settings_kwargs: dict[str, Any]) -> IngestSettings:
    """A database of this test's own: on the shared one, this app's sweeps would also end (and
    count) uploads other tests left open."""
    return IngestSettings(
        **{**settings_kwargs, "mongo_db": f"{settings_kwargs['mongo_db']}_{secrets.token_hex(3)}"},
        outbox_grace_ms=1000,
        outbox_relay_interval_seconds=0.2,
    )


NOT_AN_IMAGE = b"call the bride's mother at 5pm\n" * 100


def accepted(protocol: str) -> frozenset[tuple[str, str]]:
    return labels(service=SERVICE, protocol=protocol, outcome="accepted", code="")


def refused(protocol: str, code: str) -> frozenset[tuple[str, str]]:
    return labels(service=SERVICE, protocol=protocol, outcome="refused", code=code)


async def test_a_batch_counts_each_file_accepted_or_refused_once(
    api: Client, make_token: TokenMaker
) -> None:
    token = await make_token()
    event = await make_event(api, token)
    photo = jpeg_bytes(64, 48)
    before = await scrape(api)

    resp = await post_photos(api, token, event["id"], ("a.jpg", photo), ("notes.jpg", NOT_AN_IMAGE))
    body = await resp.json()
    assert resp.status == 201, body
    assert [s["code"] for s in body["skipped"]] == ["unsupported_type"]
    # The same bytes again: a duplicate, answered with the photo there, is accepted.
    again = await post_photos(api, token, event["id"], ("a-again.jpg", photo))
    assert again.status == 200, await again.text()
    assert (await again.json())["uploaded"][0]["duplicate_of"]
    # A batch refused as a whole refuses each of its files, with the batch's code.
    unknown = await api.post(
        f"/v1/events/{event['id']}/photos",
        data=form(("b.jpg", jpeg_bytes(32, 32)), category_id="cat_nope"),
        headers=auth(token),
    )
    await assert_problem(unknown, 422, "unknown_category")

    assert moved(before, await scrape(api), "uploads_total") == {
        accepted("batch"): 2,
        refused("batch", "unsupported_type"): 1,
        refused("batch", "unknown_category"): 1,
    }


async def test_a_chunked_upload_counts_once_when_its_completion_ends(
    capi: Client, make_token: TokenMaker
) -> None:
    token = await make_token()
    event = await make_event(capi, token)
    data = jpeg_bytes(64, 48)
    before = await scrape(capi)

    good = await start_upload(capi, token, event["id"], data)
    assert (await put_chunk(capi, token, good, data, 0)).status == 200
    url = f"/v1/uploads/{good['upload_id']}/complete"
    done = await capi.post(url, headers=auth(token))
    assert done.status == 200, await done.text()
    # Asked again: the same photo, not another file.
    assert (await capi.post(url, headers=auth(token))).status == 200

    bad = await start_upload(capi, token, event["id"], data, sha256="0" * 64)
    assert (await put_chunk(capi, token, bad, data, 0)).status == 200
    bad_url = f"/v1/uploads/{bad['upload_id']}/complete"
    await assert_problem(await capi.post(bad_url, headers=auth(token)), 422, "checksum_mismatch")
    # Its failure answered again is the same refusal.
    assert (await capi.post(bad_url, headers=auth(token))).status >= 400

    assert moved(before, await scrape(capi), "uploads_total") == {
        accepted("chunked"): 1,
        refused("chunked", "checksum_mismatch"): 1,
    }


async def test_a_tus_upload_counts_once_when_its_last_byte_makes_the_photo(
    capi: Client, make_token: TokenMaker
) -> None:
    token = await make_token()
    event = await make_event(capi, token)
    data = jpeg_bytes(64, 48)
    before = await scrape(capi)

    created = await create(capi, token, event["id"], len(data))
    assert created.status == 201, await created.text()
    last = await patch(capi, token, created.headers["Location"], 0, data)
    assert last.status == 204, await last.text()
    assert last.headers["X-Darkroom-Photo-Id"]

    refused_one = await create(capi, token, event["id"], len(NOT_AN_IMAGE))
    await assert_problem(
        await patch(capi, token, refused_one.headers["Location"], 0, NOT_AN_IMAGE),
        422,
        "unsupported_type",
    )

    assert moved(before, await scrape(capi), "uploads_total") == {
        accepted("tus"): 1,
        refused("tus", "unsupported_type"): 1,
    }


async def test_a_direct_upload_counts_once_when_completed(
    capi: Client, make_token: TokenMaker
) -> None:
    token = await make_token()
    event = await make_event(capi, token)
    data = jpeg_bytes(64, 48)
    before = await scrape(capi)

    upload = await ticket(capi, token, event["id"], data)
    await put_whole(upload, data)
    done = await complete(capi, token, upload["upload_id"])
    assert done.status == 200, await done.text()
    assert (await complete(capi, token, upload["upload_id"])).status == 200  # no second file

    assert moved(before, await scrape(capi), "uploads_total") == {accepted("direct"): 1}


async def test_upload_ingest_serves_its_process_metrics(api: Client) -> None:
    samples = {name for name, _ in await scrape(api)}
    assert "process_resident_memory_bytes" in samples
    assert "python_gc_objects_collected_total" in samples
    assert "python_info" in samples
