"""Calls to upload-ingest's API as a test makes them: auth headers, events, batch and chunked
uploads, and the problem documents it answers with."""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from aiohttp.test_utils import TestClient
from darkroom_kit import records
from darkroom_kit.mongo import MONGO_DB
from darkroom_kit.storage import OBJECT_STORE

from tests.factories.media import named_jpegs

Client = TestClient[Any, Any]
TokenMaker = Callable[..., Awaitable[str]]

PROBLEM = "application/problem+json"
CHUNK = 5 * 1024 * 1024  # S3's smallest part


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def base_url(api: Client) -> str:
    """Where a process outside the test (a client, a generated one) reaches the API."""
    return str(api.make_url("")).rstrip("/")


async def make_event(api: Client, token: str, **fields: Any) -> dict[str, Any]:
    body = {"name": "Wedding", "slug": f"ev-{secrets.token_hex(5)}"}
    body.update(fields)
    resp = await api.post("/v1/events", json=body, headers=auth(token))
    assert resp.status == 201, await resp.text()
    return dict(await resp.json())


def form(*files: tuple[str, bytes], category_id: str | None = None) -> aiohttp.FormData:
    data = aiohttp.FormData()
    for name, content in files:
        data.add_field("photos", content, filename=name, content_type="application/octet-stream")
    if category_id is not None:
        data.add_field("category_id", category_id)
    return data


def raw_multipart(*files: tuple[str, bytes]) -> tuple[bytes, dict[str, str]]:
    """A batch upload's body built by hand, and its Content-Type and Content-Length: for file
    names a well-behaved client would never send, or a body sent slowly or over a raw socket."""
    boundary = "darkroomtestboundary"
    body = b""
    for name, content in files:
        body += (
            f'--{boundary}\r\nContent-Disposition: form-data; name="photos"; '
            f'filename="{name}"\r\nContent-Type: image/jpeg\r\n\r\n'
        ).encode()
        body += content + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    return body, {
        "Content-Type": f"multipart/form-data; boundary={boundary}",
        "Content-Length": str(len(body)),
    }


async def post_photos(
    api: Client, token: str, event_id: str, *files: tuple[str, bytes]
) -> aiohttp.ClientResponse:
    """A batch upload, answered as it is (a test of a refusal looks at the answer itself)."""
    return await api.post(f"/v1/events/{event_id}/photos", data=form(*files), headers=auth(token))


async def post_jpegs(api: Client, token: str, event_id: str, *names: str) -> aiohttp.ClientResponse:
    """A batch upload of a small JPEG under each name, answered as it is."""
    return await post_photos(api, token, event_id, *named_jpegs(*names))


async def upload_photos(
    api: Client, token: str, event_id: str, *files: tuple[str, bytes]
) -> dict[str, dict[str, Any]]:
    """A batch upload that must succeed; the uploaded photos by file name."""
    resp = await post_photos(api, token, event_id, *files)
    assert resp.status == 201, await resp.text()
    return {p["filename"]: p for p in (await resp.json())["uploaded"]}


async def assert_problem(resp: aiohttp.ClientResponse, status: int, code: str) -> dict[str, Any]:
    assert resp.status == status, await resp.text()
    assert resp.content_type == PROBLEM
    body: dict[str, Any] = await resp.json()
    assert body["code"] == code
    assert body["status"] == status
    assert body["title"]
    return body


async def stored_keys(api: Client, event_id: str) -> list[str]:
    keys: list[str] = await api.app[OBJECT_STORE].list_keys(f"events/{event_id}/")
    return keys


async def photos_of(api: Client, token: str, event_id: str) -> list[dict[str, Any]]:
    """The event's photos as its listing shows them (the first page)."""
    resp = await api.get(f"/v1/events/{event_id}/photos", headers=auth(token))
    items: list[dict[str, Any]] = (await resp.json())["items"]
    return items


async def photo_count(api: Client, token: str, event_id: str) -> int:
    """The event's ``photo_count``, as ``GET /v1/events/{id}`` says it."""
    event = await (await api.get(f"/v1/events/{event_id}", headers=auth(token))).json()
    return int(event["photo_count"])


async def the_only_photo(api: Client, token: str, event_id: str, data: bytes) -> str:
    """The event holds exactly one photo, whose stored original is ``data``, and nothing else
    is left in storage (no tail, no partial, no copy); its id."""
    photos = await api.app[MONGO_DB][records.PHOTOS].find({"event_id": event_id}).to_list(None)
    assert len(photos) == 1, [p["_id"] for p in photos]
    photo_id = str(photos[0]["_id"])
    key = records.original_key(event_id, photo_id)
    assert await api.app[OBJECT_STORE].get_bytes(key) == data
    assert [p["id"] for p in await photos_of(api, token, event_id)] == [photo_id]
    assert await stored_keys(api, event_id) == [key]
    return photo_id


# ---- chunked uploads --------------------------------------------------------------------------


async def start_upload(
    api: Client,
    token: str,
    event_id: str,
    data: bytes,
    name: str = "big.jpg",
    mime: str = "image/jpeg",
    **extra: Any,
) -> dict[str, Any]:
    """A chunked upload of ``data`` started; the API's answer (``upload_id``, ``chunk_size``)."""
    resp = await api.post(
        f"/v1/events/{event_id}/uploads",
        headers=auth(token),
        json={"filename": name, "size": len(data), "mime_type": mime, **extra},
    )
    body = await resp.json()
    assert resp.status == 201, body
    return dict(body)


async def put_chunk(
    api: Client, token: str, upload: dict[str, Any], data: bytes, i: int, **headers: str
) -> aiohttp.ClientResponse:
    """Chunk ``i`` of ``data`` sent, answered as it is."""
    size = upload["chunk_size"]
    return await api.put(
        f"/v1/uploads/{upload['upload_id']}/chunks/{i}",
        data=data[i * size : (i + 1) * size],
        headers={**auth(token), **headers},
    )


async def upload_small_video(api: Client, token: str, event_id: str, data: bytes, name: str) -> str:
    """A video of one chunk through the whole chunked flow; its photo id."""
    upload = await start_upload(api, token, event_id, data, name=name, mime="video/mp4")
    assert (await put_chunk(api, token, upload, data, 0)).status == 200
    done = await api.post(f"/v1/uploads/{upload['upload_id']}/complete", headers=auth(token))
    assert done.status == 200, await done.text()
    return str((await done.json())["id"])


async def upload_with_lost_dimensions(
    api: Client, token: str, event_id: str, *files: tuple[str, bytes]
) -> dict[str, str]:
    """Upload, then make it look as if thumbnailing had run and the dimensions were lost; the
    original of ``gone.jpg`` (if sent) is deleted from storage. The photo ids by file name."""
    resp = await post_photos(api, token, event_id, *files)
    uploaded = {p["filename"]: p["id"] for p in (await resp.json())["uploaded"]}
    photos = api.app[MONGO_DB][records.PHOTOS]
    await photos.update_many(
        {"event_id": event_id}, {"$set": {"status": "processed", "width": None, "height": None}}
    )
    if "gone.jpg" in uploaded:
        gone = await photos.find_one({"_id": uploaded["gone.jpg"]})
        assert gone is not None
        await api.app[OBJECT_STORE].delete_many([gone["original_key"]])
    return uploaded
