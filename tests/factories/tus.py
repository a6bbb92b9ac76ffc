"""Raw tus requests, for the tests that check what the endpoint answers (real clients, tuspy
and tus-js-client, have tests of their own); tuspy's uploader as those tests make it, and what
a finished upload says when asked again."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from darkroom_ingest.tus import protocol
from darkroom_kit.storage import MIB
from tusclient import client as tus_client
from tusclient.uploader.uploader import Uploader

from tests.factories.api import Client, auth, photo_count, photos_of, the_only_photo
from tests.factories.messaging import uploaded_ids

TUS = {"Tus-Resumable": protocol.VERSION}


def meta(**pairs: str) -> str:
    """``Upload-Metadata`` of ``pairs``."""
    return protocol.format_metadata(pairs)


def url_of(api: Client, path: str = "/v1/tus/") -> str:
    return str(api.make_url(path))


async def create(
    api: Client,
    token: str,
    event_id: str | None,
    length: int | None,
    body: bytes | None = None,
    filename: str = "a.jpg",
    filetype: str = "image/jpeg",
    **headers: str,
) -> Any:
    """``POST /v1/tus/``; with ``body``, its bytes too (creation-with-upload)."""
    pairs = {"filename": filename, "filetype": filetype}
    if event_id is not None:
        pairs["event"] = event_id
    h = {**TUS, **auth(token), "Upload-Metadata": meta(**pairs), **headers}
    if length is not None:
        h["Upload-Length"] = str(length)
    if body is not None:
        h["Content-Type"] = protocol.OFFSET_OCTET_STREAM
    return await api.post("/v1/tus/", data=body, headers=h)


async def patch(api: Client, token: str, location: str, offset: int, body: bytes, **h: str) -> Any:
    headers = {
        **TUS,
        **auth(token),
        "Upload-Offset": str(offset),
        "Content-Type": protocol.OFFSET_OCTET_STREAM,
        **h,
    }
    return await api.patch(location, data=body, headers=headers)


async def head(api: Client, token: str, location: str) -> Any:
    return await api.head(location, headers={**TUS, **auth(token)})


def tus_path(url: str) -> str:
    """The path of an upload's URL as a client knows it (absolute, on the test server)."""
    return "/v1/tus/" + url.rsplit("/v1/tus/", 1)[1]


async def upload_status(api: Client, token: str, url: str) -> dict[str, Any]:
    """``GET /v1/uploads/{id}`` of the tus upload at ``url``."""
    upload_id = url.rstrip("/").rsplit("/", 1)[1]
    resp = await api.get(f"/v1/uploads/{upload_id}", headers=auth(token))
    assert resp.status == 200, await resp.text()
    body: dict[str, Any] = await resp.json()
    return body


async def assert_finished_as(
    api: Client, token: str, url: str, photo_id: str, *, copy: bool
) -> None:
    """The tus upload at ``url``, asked again (a HEAD, as a client whose last answer was lost
    asks, and ``GET /v1/uploads/{id}``), is whole and completed and names ``photo_id``: as the
    photo it made, or (``copy``) as the photo already in the event that its bytes equal."""
    probe = await head(api, token, tus_path(url))
    said = (probe.status, dict(probe.headers))
    assert probe.status == 200, said
    assert probe.headers["Upload-Offset"] == probe.headers["Upload-Length"], said
    assert probe.headers.get("X-Darkroom-Photo-Id") == photo_id, (photo_id, said)
    copy_of = photo_id if copy else None
    assert probe.headers.get("X-Darkroom-Duplicate-Of") == copy_of, (copy_of, said)
    status = await upload_status(api, token, url)
    assert (status["protocol"], status["state"], status["received_bytes"]) == (
        "tus",
        "completed",
        status["size"],
    ), status
    assert (status["photo_id"], status["duplicate_of"]) == (photo_id, copy_of), (copy_of, status)


def tuspy(api: Client, token: str, event_id: str, path: Path, chunk_size: int = MIB) -> Uploader:
    """tuspy's uploader of the file at ``path`` into the event, in PATCHes of ``chunk_size``
    (1 MiB: several make a part, the rest waits in the tail). No URL storage: every uploader
    creates an upload of its own."""
    tus = tus_client.TusClient(url_of(api), headers=auth(token))
    return tus.uploader(
        str(path),
        chunk_size=chunk_size,
        metadata={"event": event_id, "filename": path.name, "filetype": "image/jpeg"},
    )


def tuspy_answer(uploader: Uploader) -> tuple[str | None, str | None]:
    """What the last PATCH of ``uploader`` was answered: the photo (``X-Darkroom-Photo-Id``) and
    the photo already there that the file is a copy of (``X-Darkroom-Duplicate-Of``)."""
    request: Any = uploader.request
    assert request is not None, "the uploader sent no PATCH"
    headers: dict[str, str] = request.response_headers  # names lower-cased by tuspy
    return headers.get("x-darkroom-photo-id"), headers.get("x-darkroom-duplicate-of")


async def assert_one_photo(
    capi: Client,
    token: str,
    event_id: str,
    data: bytes,
    photo_id: str,
    announced: tuple[str, str],
    filename: str | None = None,
) -> None:
    """The event holds ``data`` once, as ``photo_id`` (named ``filename``, when given), counts
    one photo and announced it once on the queue ``announced`` (amqp url, queue name)."""
    assert await the_only_photo(capi, token, event_id, data) == photo_id
    if filename is not None:
        assert [p["filename"] for p in await photos_of(capi, token, event_id)] == [filename]
    assert await photo_count(capi, token, event_id) == 1
    assert await uploaded_ids(*announced, 1) == [photo_id]
